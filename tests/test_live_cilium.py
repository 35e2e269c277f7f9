"""Live mode on a Cilium node (kube-proxy replaced): the capture execs into the node's
cilium agent over the same websocket exec path `--via kube-proxy` uses (tests/fakews.py),
runs the real AGENT_SCRIPT with `sh` against a stub `cilium-dbg`, and the trace follows
Cilium. Without `pods/exec` the trace says so in one line and stops at KubeProxyReplaced."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from fakeapi import FakeCluster, pod, section_log
from test_live_trace import node_log, populate, run

from kubectl_clusterip.cluster import debugpod

SERVICES_JSON = json.dumps([{
    "spec": {"frontend-address": {"ip": "10.96.0.50", "port": 80, "protocol": "TCP",
                                  "scope": "external"},
             "backend-addresses": [
                 {"ip": "10.244.1.5", "port": 8080, "nodeName": "n1", "state": "active"},
                 {"ip": "10.244.1.6", "port": 8080, "nodeName": "n1", "state": "active"}],
             "flags": {"type": "ClusterIP", "namespace": "default", "name": "web",
                       "intTrafficPolicy": "Cluster"}, "id": 12},
    "status": {"realized": {
        "frontend-address": {"ip": "10.96.0.50", "port": 80, "protocol": "TCP",
                             "scope": "external"},
        "backend-addresses": [
            {"ip": "10.244.1.5", "port": 8080, "nodeName": "n1", "state": "active"},
            {"ip": "10.244.1.6", "port": 8080, "nodeName": "n1", "state": "active"}],
        "flags": {"type": "ClusterIP", "namespace": "default", "name": "web"}, "id": 12}}}])
SERVICES_TEXT = """\
ID   Frontend          Service Type   Backend
12   10.96.0.50:80     ClusterIP      1 => 10.244.1.5:8080 (active)
                                      2 => 10.244.1.6:8080 (active)
"""
LB_LIST = """\
SERVICE ADDRESS     BACKEND ADDRESS (REVNAT_ID) (SLOT)
10.96.0.50:80       0.0.0.0:0 (12) (0) [ClusterIP, non-routable]
                    10.244.1.5:8080 (12) (1)
                    10.244.1.6:8080 (12) (2)
"""
STATUS = """\
KVStore:                 Ok   Disabled
KubeProxyReplacement:    True   [eth0   172.18.0.3 (Direct Routing)]
KubeProxyReplacement Details:
  Status:                 True
  Socket LB:              Enabled
  Socket LB Coverage:     Full
  Backend Selection:      Random
"""
CILIUM_IPTABLES = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CILIUM_PRE_nat - [0:0]
-A PREROUTING -m comment --comment "cilium-feeder: CILIUM_PRE_nat" -j CILIUM_PRE_nat
COMMIT
"""


def make_cilium(fc: FakeCluster) -> None:
    """The live tests' cluster with Cilium instead of kube-proxy and kindnet."""
    populate(fc)
    for n in ("n1", "n2"):
        del fc.objects[("pods", "kube-system", f"kube-proxy-{n}")]
        fc.add(pod(f"cilium-{n}x", "kube-system", f"172.18.0.{2 if n == 'n1' else 3}", n,
                   {"k8s-app": "cilium"},
                   containers=[{"name": "cilium-agent", "image": "quay.io/cilium/cilium"}]))
    del fc.objects[("configmaps", "kube-system", "kube-proxy")]
    del fc.objects[("daemonsets", "kube-system", "kindnet")]
    fc.add({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "cilium", "namespace": "kube-system"}, "spec": {}})
    fc.add({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cilium-config", "namespace": "kube-system"},
            "data": {"kube-proxy-replacement": "true"}})

    def log_for(created: dict) -> str:
        out = debugpod.parse_log(node_log(fc, created)).output
        return section_log({"iptables-legacy-save": "", "iptables-nft-save": CILIUM_IPTABLES,
                            "ip-addr.json": out["ip-addr.json"],
                            "ip-route.json": out["ip-route.json"]},
                           {"proxy-mode": "curl: (7) Failed to connect to 127.0.0.1"})
    fc.log_for = log_for


def stub_agent(bin_dir: Path, binary: str, json_ok: bool = True) -> None:
    """The agent container: `sh`, `cat`, `head`, `grep` real; the Cilium CLI a stub."""
    bin_dir.mkdir()
    for name, text in (("svc.json", SERVICES_JSON), ("svc.txt", SERVICES_TEXT),
                       ("lb.txt", LB_LIST), ("status.txt", STATUS)):
        (bin_dir / name).write_text(text)
    json_case = (f"  'service list -o json') cat '{bin_dir}/svc.json' ;;\n" if json_ok else
                 "  'service list -o json') echo 'Error: unknown shorthand flag' >&2; exit 1 ;;\n")
    (bin_dir / binary).write_text(
        "#!/bin/sh\ncase \"$*\" in\n" + json_case +
        f"  'service list') cat '{bin_dir}/svc.txt' ;;\n"
        f"  'bpf lb list') cat '{bin_dir}/lb.txt' ;;\n"
        "  'bpf lb list --backends') echo 'ID   BACKEND ADDRESS (REVNAT_ID) (SLOT)' ;;\n"
        f"  'status --verbose') cat '{bin_dir}/status.txt' ;;\n"
        "  *) echo \"unknown command $*\" >&2; exit 1 ;;\nesac\n")
    (bin_dir / binary).chmod(0o755)
    for tool in ("sh", "cat", "head", "grep"):
        (bin_dir / tool).symlink_to(subprocess.run(["sh", "-c", f"command -v {tool}"],
                                                   capture_output=True, text=True,
                                                   check=True).stdout.strip())


def in_agent(tmp_path: Path, binary: str = "cilium-dbg", json_ok: bool = True):
    def run_command(pod_obj: dict, command: list[str]) -> tuple[int, str, str]:
        bin_dir = tmp_path / f"agent-{pod_obj['spec']['nodeName']}"
        if not bin_dir.exists():
            stub_agent(bin_dir, binary, json_ok)
        p = subprocess.run(command, capture_output=True, text=True, timeout=10,
                           env={"PATH": str(bin_dir), "TMPDIR": str(tmp_path)})
        return p.returncode, p.stdout, p.stderr
    return run_command


@pytest.fixture
def cluster(tmp_path):
    with FakeCluster() as fc:
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        make_cilium(fc)
        yield fc
        assert fc.streams_closed(), "a websocket was left open"


def test_trace_execs_into_the_agent_and_follows_cilium(cluster, tmp_path):
    cluster.exec_for = in_agent(tmp_path)
    r = run(cluster, tmp_path, "trace", "web", "-o", "json", "--pod-timeout", "10")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["proxyMode"] == "cilium" and doc["verdict"] == "dnat"
    assert [(c["ip"], c["probability"]) for c in doc["dnat"]] == [
        ("10.244.1.5", 0.5), ("10.244.1.6", 0.5)]
    assert doc["cilium"]["translation"] == "socket-LB connect()"
    assert not [f for f in doc["findings"] if f["severity"] != "info"], doc["findings"]
    (ex,) = cluster.execs  # one exec, into the agent of the traced node, its agent container
    assert ex["pod"] == "kube-system/cilium-n2x" and ex["container"] == "cilium-agent"
    assert ex["command"][:2] == ["sh", "-c"] and "cilium-dbg" in ex["command"][2]
    assert cluster.pods_left() == []


def test_capture_keeps_the_agent_outputs_in_the_snapshot(cluster, tmp_path):
    cluster.exec_for = in_agent(tmp_path)
    snap = tmp_path / "snap"
    r = run(cluster, tmp_path, "capture", "web", "-o", str(snap), "--pod-timeout", "10")
    assert r.exit_code == 0, r.stderr
    names = sorted(p.name for p in (snap / "nodes" / "n2").iterdir())
    assert {"cilium-service-list.json", "cilium-bpf-lb-list.txt", "cilium-status.txt",
            "iptables-save.txt"} <= set(names) and "cilium-service-list.txt" not in names
    meta = yaml.safe_load((snap / "snapshot.yaml").read_text())
    assert meta["ciliumAgent"] == {"pod": "kube-system/cilium-n2x", "binary": "cilium-dbg"}
    objects = yaml.safe_load((snap / "objects.yaml").read_text())["items"]
    assert any(o["metadata"]["name"] == "cilium-config" for o in objects)
    # Replayed offline, the snapshot gives the same trace.
    r = run(cluster, tmp_path, "trace", "web", "--snapshot", str(snap), "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["proxyMode"] == "cilium"


def test_agent_of_1_14_and_older_is_cilium_with_text_output(cluster, tmp_path):
    cluster.exec_for = in_agent(tmp_path, binary="cilium", json_ok=False)
    snap = tmp_path / "snap"
    r = run(cluster, tmp_path, "capture", "web", "-o", str(snap), "--pod-timeout", "10")
    assert r.exit_code == 0, r.stderr
    assert (snap / "nodes" / "n2" / "cilium-service-list.txt").read_text() == SERVICES_TEXT
    meta = yaml.safe_load((snap / "snapshot.yaml").read_text())
    assert meta["ciliumAgent"]["binary"] == "cilium" and "errors" not in meta["ciliumAgent"]
    r = run(cluster, tmp_path, "trace", "web", "--snapshot", str(snap), "-o", "json")
    assert [c["ip"] for c in json.loads(r.stdout)["dnat"]] == ["10.244.1.5", "10.244.1.6"]


def test_no_pods_exec_permission_is_one_line_and_the_trace_says_not_traced(cluster, tmp_path):
    cluster.exec_for = in_agent(tmp_path)
    cluster.forbid("create", "pods/exec", "kube-system")
    r = run(cluster, tmp_path, "trace", "web", "-o", "json", "--pod-timeout", "10")
    assert r.exit_code == 0, r.stderr  # a warning, not an error: the API view still helps
    lines = [ln for ln in r.stderr.splitlines() if "Cilium's agent" in ln]
    assert len(lines) == 1 and "pods/exec" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and cluster.execs == []
    doc = json.loads(r.stdout)
    f = next(f for f in doc["findings"] if f["code"] == "KubeProxyReplaced")
    assert "pods/exec" in f["evidence"] and doc["summary"].startswith("NOT TRACED")
    assert cluster.pods_left() == []


def test_kube_proxy_running_means_no_exec(tmp_path):
    """With kube-proxy on the node and kube-proxy-replacement false, kube-proxy is traced."""
    with FakeCluster() as fc:
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        populate(fc)
        fc.add(pod("cilium-n2x", "kube-system", "172.18.0.3", "n2", {"k8s-app": "cilium"}))
        fc.add({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cilium-config", "namespace": "kube-system"},
                "data": {"kube-proxy-replacement": "false"}})
        fc.exec_for = in_agent(tmp_path)
        r = run(fc, tmp_path, "trace", "web", "-o", "json", "--pod-timeout", "10")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["proxyMode"] == "iptables" and fc.execs == []


def test_all_nodes_read_each_nodes_agent(cluster, tmp_path):
    cluster.exec_for = in_agent(tmp_path)
    r = run(cluster, tmp_path, "trace", "web", "--all-nodes", "-o", "json", "--pod-timeout",
            "10")
    assert r.exit_code == 0, r.stderr
    rows = {i["node"]: i for i in json.loads(r.stdout)["items"]}
    assert sorted(rows) == ["n1", "n2"] and all(v["verdict"] == "ok" for v in rows.values()), rows
    assert {(r["proxyMode"], r["endpoints"]["programmed"], r["endpoints"]["expected"])
            for r in rows.values()} == {("cilium", 2, 2)}
    assert sorted(ex["pod"] for ex in cluster.execs) == ["kube-system/cilium-n1x",
                                                         "kube-system/cilium-n2x"]
    assert cluster.pods_left() == []
