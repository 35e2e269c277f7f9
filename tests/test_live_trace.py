"""Live mode end to end over a real socket: kubeconfig → HTTP → debug pod → engine → report.

The fake API server (tests/fakeapi.py) plays the cluster; the debug pod's log is the dump
script's section format holding the iptables rules kube-proxy would write for the fake
cluster's objects (iptables/expected.py), so the live trace runs the real engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fakeapi import (
    DNSMASQ,
    Dnsmasq,
    FakeCluster,
    endpoint_slice,
    node,
    pod,
    section_log,
    service,
)

from kubectl_clusterip.cli import main
from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules

ROOT = Path(__file__).resolve().parent.parent
PORTS = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]
ADDR = {"n1": "172.18.0.2", "n2": "172.18.0.3"}


def node_log(fc: FakeCluster, created: dict) -> str:
    """What the dump script prints on the node the pod was pinned to."""
    name = created["spec"]["nodeName"]
    svcs = [o for (p, _, _), o in fc.objects.items() if p == "services"]
    slices = [o for (p, _, _), o in fc.objects.items() if p == "endpointslices"]
    rules = expected_rules(svcs, slices, fc.objects[("nodes", "", name)],
                           ProxyConfig(cluster_cidrs=["10.244.0.0/16"]), 4)
    addr = [{"ifname": "eth0", "addr_info": [{"family": "inet", "local": ADDR[name],
                                              "prefixlen": 16, "scope": "global"}]}]
    routes = [{"dst": "default", "gateway": "172.18.0.1", "dev": "eth0"},
              {"dst": "10.244.1.0/24", "gateway": ADDR["n1"], "dev": "eth0"}]
    if name == "n1":
        routes[1] = {"dst": "10.244.1.5", "dev": "veth1", "scope": "host"}
    return section_log({"proxy-mode": "iptables", "iptables-legacy-save": "",
                        "iptables-nft-save": rules, "ip-addr.json": json.dumps(addr),
                        "ip-route.json": json.dumps(routes)},
                       {"ipvsadm.txt": "ipvsadm-save: not found"})


def populate(fc: FakeCluster, endpoints: bool = True, selector: bool = True) -> None:
    fc.add(service("web", "default", "10.96.0.50", PORTS, {"app": "web"} if selector else None))
    if endpoints:
        fc.add(endpoint_slice("web", "default", SLICE_PORTS,
                              [("10.244.1.5", "n1", "web-1"), ("10.244.1.6", "n1", "web-2")]))
        fc.add(pod("web-1", "default", "10.244.1.5", "n1", {"app": "web"}))
        fc.add(pod("web-2", "default", "10.244.1.6", "n1", {"app": "web"}))
    fc.add(pod("client", "default", "10.244.2.7", "n2", {"app": "client"}))
    fc.add(node("n1", ADDR["n1"], control_plane=True, pod_cidr="10.244.1.0/24"))
    fc.add(node("n2", ADDR["n2"], pod_cidr="10.244.2.0/24"))
    for n in ("n1", "n2"):
        fc.add(pod(f"kube-proxy-{n}", "kube-system", ADDR[n], n, {"k8s-app": "kube-proxy"}))
    fc.add(pod("coredns-abc", "kube-system", "10.244.1.2", "n1", {"k8s-app": "kube-dns"}))
    fc.add(pod("etcd-n1", "kube-system", ADDR["n1"], "n1", {"component": "etcd"}))
    fc.add({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "data": {"config.conf": "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
                                    "kind: KubeProxyConfiguration\nmode: iptables\n"
                                    "clusterCIDR: 10.244.0.0/16\n"}})
    fc.add({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kindnet", "namespace": "kube-system"}, "spec": {}})
    fc.log_for = lambda created: node_log(fc, created)


@pytest.fixture
def cluster(tmp_path):
    with FakeCluster() as fc:
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        yield fc


def run(fc: FakeCluster, tmp_path: Path, *args: str):
    env = {"KUBECONFIG": str(tmp_path / "kubeconfig")}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def assert_clean_error(result, fc: FakeCluster, text: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert fc.pods_left() == []


def test_happy_path_traces_cross_node_and_cleans_up(cluster, tmp_path):
    populate(cluster)
    r = run(cluster, tmp_path, "trace", "web", "--pod-timeout", "10")
    assert r.exit_code == 0, r.output + r.stderr
    assert "from a pod on n2" in r.stdout  # a node without endpoints: the cross-node path
    assert r.stderr.startswith("warning:")  # no progress when stderr is not a terminal
    assert "10.244.1.5:8080" in r.stdout and "10.244.1.6:8080" in r.stdout
    assert "50.0%" in r.stdout and "via 172.18.0.2" in r.stdout
    # the debug pod: least privilege, pinned, tolerating, self-ending, recognisable
    (created,) = cluster.created
    spec, c = created["spec"], created["spec"]["containers"][0]
    assert created["metadata"]["name"].startswith("clusterip-debug-n2-")
    assert created["metadata"]["labels"]["app.kubernetes.io/name"] == "kubectl-clusterip"
    assert spec["nodeName"] == "n2" and spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] > 0
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert c["securityContext"]["privileged"] is False
    assert {"name": "MODE", "value": "iptables"} in c["env"]
    assert cluster.pods_left() == [] and len(cluster.deleted) == 1


def test_one_trace_needs_at_most_ten_requests_beside_polling(cluster, tmp_path):
    populate(cluster)
    r = run(cluster, tmp_path, "trace", "default/web", "--from", "client", "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["request"]["source"]["ip"] == "10.244.2.7"  # the --from pod's address
    reqs = cluster.api_requests()
    methods = [m for m, _ in reqs]
    assert methods.count("POST") == 1 and methods.count("DELETE") == 1
    # service, slices, pods by selector, client pod, nodes, kube-system pods, configmap,
    # daemonsets, networkpolicies (default, kube-system), create, log, delete, and the
    # coredns ConfigMap (the cluster domain); the DNS port-forward (refused here) is one more
    assert len(reqs) <= 15, reqs
    without_dns = [x for x in reqs if not x[1].endswith("/portforward")]
    assert len(without_dns) == 14, without_dns


def test_capture_then_replay_gives_the_same_trace(cluster, tmp_path):
    populate(cluster)
    snap = tmp_path / "snap"
    r = run(cluster, tmp_path, "capture", "web", "-o", str(snap), "--node", "n1")
    assert r.exit_code == 0, r.stderr
    meta = yaml.safe_load((snap / "snapshot.yaml").read_text())
    assert meta["clientNode"] == "n1"
    assert meta["client"] == {"pod": None, "ip": None, "node": "n1"}
    assert meta["nodeDump"]["iptablesBackend"] == "nft"
    assert sorted(p.name for p in (snap / "nodes" / "n1").iterdir()) == [
        "ip-addr.json", "ip-route.json", "iptables-save.txt", "proxy-mode"]
    objects = yaml.safe_load((snap / "objects.yaml").read_text())["items"]
    kinds = sorted({(o["apiVersion"], o["kind"]) for o in objects})
    assert kinds == [("apps/v1", "DaemonSet"), ("discovery.k8s.io/v1", "EndpointSlice"),
                     ("v1", "ConfigMap"), ("v1", "Node"), ("v1", "Pod"), ("v1", "Service")]
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "Pod"}
    assert names == {"web-1", "web-2", "kube-proxy-n1", "kube-proxy-n2", "coredns-abc"}
    live = run(cluster, tmp_path, "trace", "web", "--node", "n1", "-o", "json")
    replay = run(cluster, tmp_path, "trace", "web", "--snapshot", str(snap), "-o", "json")
    assert replay.exit_code == live.exit_code == 0
    assert json.loads(replay.stdout) == json.loads(live.stdout)


def test_rules_live(cluster, tmp_path):
    populate(cluster)
    r = run(cluster, tmp_path, "rules", "--node", "n2")
    assert r.exit_code == 0, r.stderr
    assert "web" in r.stdout and "10.96.0.50:80/TCP" in r.stdout


@pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq is not installed")
def test_dns_server_answer_lands_in_snapshot_meta(cluster, tmp_path):
    populate(cluster)
    with Dnsmasq(["--address=/cluster.local/",
                  "--host-record=web.default.svc.cluster.local,10.96.0.50",
                  "--srv-host=_http._tcp.web.default.svc.cluster.local,"
                  "web.default.svc.cluster.local,80,0,100"]) as d:
        r = run(cluster, tmp_path, "capture", "web", "-o", str(tmp_path / "s"),
                "--from", "client", "--dns-server", f"127.0.0.1:{d.port}")
    assert r.exit_code == 0, r.stderr
    got = yaml.safe_load((tmp_path / "s" / "snapshot.yaml").read_text())["dns"]
    assert got["query"] == "web" and got["fqdn"] == "web.default.svc.cluster.local."
    assert got["ndots"] == 5 and got["error"] is None
    assert got["searchPath"][0] == "default.svc.cluster.local"
    assert got["server"] == f"127.0.0.1:{d.port} (--dns-server, UDP)"
    assert {"name": "web.default.svc.cluster.local.", "type": "A", "rcode": "NOERROR",
            "records": ["10.96.0.50"]} in got["answers"]
    assert {"name": "_http._tcp.web.default.svc.cluster.local.", "type": "SRV",
            "rcode": "NOERROR", "records": ["0 100 80 web.default.svc.cluster.local."]
            } in got["answers"]


# -- errors: one line, exit 2, no traceback, nothing left behind ---------------------------
def test_rbac_forbids_debug_pod(cluster, tmp_path):
    populate(cluster)
    cluster.forbid("create", "pods", "kube-system")
    r = run(cluster, tmp_path, "trace", "web")
    assert_clean_error(r, cluster, "forbidden: you may not create pods in namespace kube-system")
    assert not cluster.created


def test_pod_stuck_pending_times_out_and_is_deleted(cluster, tmp_path):
    populate(cluster)
    cluster.debug_pod = "pending"
    t0 = time.monotonic()
    r = run(cluster, tmp_path, "trace", "web", "--pod-timeout", "1")
    assert time.monotonic() - t0 < 10
    assert_clean_error(r, cluster, "still Pending after 1s (ContainerCreating")
    assert r.stderr.count("\n") == 1 and len(cluster.deleted) == 1  # the error alone


def test_image_pull_failure(cluster, tmp_path):
    populate(cluster)
    cluster.debug_pod = "imagepull"
    r = run(cluster, tmp_path, "trace", "web", "--image", "example.invalid/nope:1")
    assert_clean_error(r, cluster, "ErrImagePull: cannot pull example.invalid/nope:1")
    assert len(cluster.deleted) == 1


def test_service_not_found(cluster, tmp_path):
    populate(cluster)
    r = run(cluster, tmp_path, "trace", "default/nope")
    assert_clean_error(r, cluster, "service default/nope not found")
    assert not cluster.created


def test_service_without_selector_or_slices(cluster, tmp_path):
    populate(cluster, endpoints=False, selector=False)
    r = run(cluster, tmp_path, "trace", "web")
    assert_clean_error(r, cluster, "has no selector and no EndpointSlices")
    assert not cluster.created


def test_service_without_selector_with_manual_slices_is_traced(cluster, tmp_path):
    populate(cluster, selector=False)
    r = run(cluster, tmp_path, "trace", "web")
    assert r.exit_code == 0, r.stderr
    assert "10.244.1.5:8080" in r.stdout


def test_no_endpoints_is_traced_to_the_reject(cluster, tmp_path):
    """No endpoints is a finding, not a failure: the node's REJECT rule is the evidence."""
    populate(cluster, endpoints=False)
    r = run(cluster, tmp_path, "trace", "web")
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "warning: service default/web has no endpoints" in r.stderr
    assert "REJECTED" in r.stdout and "NoEndpointsReject" in r.stdout
    assert cluster.pods_left() == []


def test_forbidden_list_nodes_names_the_permission(cluster, tmp_path):
    populate(cluster)
    cluster.forbid("list", "nodes")
    r = run(cluster, tmp_path, "trace", "web")
    assert_clean_error(r, cluster, "you may not list nodes")


def test_unreachable_api_server(tmp_path):
    with FakeCluster() as fc:
        fc.write_kubeconfig(tmp_path / "kubeconfig")
    r = run(fc, tmp_path, "trace", "web", "--request-timeout", "2s")
    assert_clean_error(r, fc, "cannot reach the API server at http://127.0.0.1:")


def test_sigint_mid_run_deletes_the_pod(cluster, tmp_path):
    """A real process, a real signal: the CLI waits on a Pending pod and gets Ctrl-C."""
    populate(cluster)
    cluster.debug_pod = "pending"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kubectl_clusterip", "trace", "web",
                             "--pod-timeout", "60"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not cluster.created and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert cluster.created, "the CLI never created the debug pod"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert [m for m, p, _ in cluster.requests if m == "DELETE"], "no DELETE reached the server"
    assert cluster.pods_left() == []
    assert "error: interrupted; nothing was left in the cluster" in err
    assert "Traceback" not in err


def test_sigterm_mid_run_deletes_the_pod(cluster, tmp_path):
    populate(cluster)
    cluster.debug_pod = "pending"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kubectl_clusterip", "trace", "web"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while not cluster.created and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2 and cluster.pods_left() == [], err


# -- the debug pod against an API server that refuses what a real one refuses --------------
LONG_NODE = "ip-10-120-33-4.eu-central-1.compute.internal.nodepool-gen-pur1.k8s-prod"


def test_a_node_name_longer_than_63_characters_is_traced(cluster, tmp_path):
    """The pod's node label and name stay valid (the server answers 422 otherwise)."""
    assert len(LONG_NODE) > 63
    populate(cluster)
    cluster.add(node(LONG_NODE, "172.18.0.9", pod_cidr="10.244.9.0/24"))
    ADDR[LONG_NODE] = "172.18.0.9"
    try:
        r = run(cluster, tmp_path, "trace", "web", "--node", LONG_NODE)
    finally:
        del ADDR[LONG_NODE]
    assert r.exit_code == 0, r.stderr
    (created,) = cluster.created
    label = created["metadata"]["labels"]["clusterip.kubectl.dev/node"]
    assert len(label) <= 63 and label[-1].isalnum() and label.startswith("ip-10-120-33-4")
    assert created["spec"]["nodeName"] == LONG_NODE and cluster.pods_left() == []


def test_the_fake_refuses_an_invalid_label_as_a_real_server_does(cluster, tmp_path):
    from kubectl_clusterip.cluster import debugpod
    from kubectl_clusterip.cluster.api import Api, ApiError
    from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags, load
    api = Api(load(ConnectionFlags(str(tmp_path / "kubeconfig"))))
    bad = debugpod.pod_spec("n1", "img")
    bad["metadata"]["labels"]["clusterip.kubectl.dev/node"] = LONG_NODE[:63]  # ends in "."
    with pytest.raises(ApiError, match=r"422 Invalid: Pod .* is invalid: metadata.labels: "
                       "Invalid value") as e:
        api.create_pod(bad)
    assert e.value.status == 422 and not cluster.created


def test_pod_security_refusal_names_the_level_and_what_works(cluster, tmp_path):
    from fakeapi import namespace
    populate(cluster)
    cluster.add(namespace("kube-system", enforce="baseline"))
    r = run(cluster, tmp_path, "trace", "web")
    assert_clean_error(r, cluster, "namespace kube-system enforces the Pod Security level "
                       "'baseline'")
    assert "(RBAC)" not in r.stderr and "--debug-namespace NS" in r.stderr
    assert "--via kube-proxy" in r.stderr and "hostNetwork=true" in r.stderr
    assert not [m for m, _, _ in cluster.requests if m == "DELETE"]  # nothing was made
    assert "delet" not in r.stderr
    # what it says works: a namespace that allows the pod
    cluster.add(namespace("node-debug", enforce="privileged"))
    r = run(cluster, tmp_path, "trace", "web", "--debug-namespace", "node-debug")
    assert r.exit_code == 0, r.stderr
    assert cluster.created[-1]["metadata"]["namespace"] == "node-debug"
    assert cluster.pods_left() == []


@pytest.mark.parametrize("kubelet, why", [
    ("rejected", "did not run: OutOfmemory: Pod was rejected: Node didn't have enough "
                 "resource: memory"),
    ("deadline", "did not run: DeadlineExceeded: Pod was active on the node longer than the "
                 "specified deadline"),
])
def test_a_pod_that_never_started_reports_the_kubelets_reason(cluster, tmp_path, kubelet, why):
    populate(cluster)
    cluster.debug_pod = kubelet
    r = run(cluster, tmp_path, "trace", "web", "--node", "n2")
    assert_clean_error(r, cluster, f"debug pod on n2 {why}")
    assert "400" not in r.stderr and "waiting to start" not in r.stderr
    assert not [p for m, p, _ in cluster.requests if p.endswith("/log")]
    assert r.stderr.count("\n") == 1  # the error stands alone


def test_assumed_client_lies_in_the_nodes_pod_cidr(cluster, tmp_path):
    populate(cluster)
    r = run(cluster, tmp_path, "trace", "web", "--node", "n2", "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["request"]["source"]["ip"].startswith("10.244.2."), doc["request"]
    r = run(cluster, tmp_path, "trace", "web", "--node", "n2")
    assert "in node n2's podCIDR 10.244.2.0/24" in r.stdout
