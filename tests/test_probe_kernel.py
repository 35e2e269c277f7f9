"""--probe against the real kernel: every probe and watcher command really runs.

One netlab cluster holds a Service per case (healthy, refusing, dropping, cross-node with a
missing route, stale rules, UDP DNS, session affinity). The fake API's kubelet runs the
watcher pod's `conntrack -E` in the node namespace and the probe pod's script in a pod
namespace of its own (its resolv.conf points at a dnsmasq behind the kube-dns Service), so
every observation comes from real connections, real DNAT and real conntrack events.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeapi import Dnsmasq, FakeCluster, endpoint_slice, node, pod, service
from netlab import Lab, kernel_lab

from kubectl_clusterip.cli import main
from kubectl_clusterip.cluster.capture import LiveOptions, capture_snapshot
from kubectl_clusterip.cluster.debugpod import SCRIPT
from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags
from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules
from kubectl_clusterip.model import ClusterIPError

TOOLS = ("iptables-nft-restore", "iptables-nft-save", "iptables-legacy-save", "conntrack",
         "curl", "nc", "dig", "dnsmasq", "getent")
PROBE_IP = "10.244.1.50"
HTTP = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]
NAMES = {"web": "10.96.0.50", "refuse": "10.96.0.51", "drop": "10.96.0.52",
         "far": "10.96.0.53", "stale": "10.96.0.54", "sticky": "10.96.0.55"}


def _svc(name: str, eps: list[tuple[str, str, str]], **spec: object) -> tuple[dict, dict]:
    return (service(name, "default", NAMES[name], HTTP, {name: "y"}, **spec),
            endpoint_slice(name, "default", SLICE_PORTS, eps))


def _pod(name: str, ip: str, where: str, *services: str, **spec: object) -> dict:
    return pod(name, "default", ip, where, {s: "y" for s in services}, **spec)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """The lab, the fake API in front of it, and a kubeconfig; torn down after the module."""
    tmp = tmp_path_factory.mktemp("probe")
    B, C, F, G, H = ("10.244.1.6", "node", "b"), ("10.244.1.7", "node", "c"), \
        ("10.244.1.9", "node", "f"), ("10.244.1.10", "node", "g"), ("10.244.1.12", "node", "h")
    D = ("10.244.2.5", "node2", "d")
    web, refuse, drop, far = _svc("web", [B, C]), _svc("refuse", [B, F]), \
        _svc("drop", [B, G]), _svc("far", [B, D])
    stale_api, stale_rules = _svc("stale", [H]), _svc("stale", [C])
    sticky = _svc("sticky", [B, C], sessionAffinity="ClientIP", sessionAffinityConfig={
        "clientIP": {"timeoutSeconds": 10800}})
    dns_svc = service("kube-dns", "kube-system", "10.96.0.10",
                      [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}],
                      {"k8s-app": "kube-dns"})
    dns_eps = endpoint_slice("kube-dns", "kube-system",
                             [{"name": "dns", "port": 53, "protocol": "UDP"}],
                             [("10.244.1.2", "node", "coredns-1")])
    dns_eps["endpoints"][0]["targetRef"]["namespace"] = "kube-system"
    nodes = [node("node", "172.18.0.2", pod_cidr="10.244.1.0/24"),
             node("node2", "172.18.0.4", pod_cidr="10.244.2.0/24")]
    answers = [f"--address=/{n}.default.svc.cluster.local/{ip}" for n, ip in NAMES.items()]
    answers += ["--address=/kube-dns.kube-system.svc.cluster.local/10.96.0.10",
                "--local=/cluster.local/"]  # NXDOMAIN for the rest, as CoreDNS answers
    declared = [{"name": "app", "image": "app", "ports": [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]
    with Lab(ipv6=False) as lab, FakeCluster() as fc, Dnsmasq(answers) as tool_dns:
        lab.add_node("node2")
        for name, ip in (("a", "10.244.1.5"), ("b", B[0]), ("c", C[0]), ("f", F[0]),
                         ("g", G[0]), ("h", H[0]), ("dns", "10.244.1.2"), ("probe", PROBE_IP)):
            lab.add_pod(name, ip)
        lab.add_pod("d", D[0], node="node2")
        for name in ("b", "c", "d", "g", "h"):
            lab.serve(name, 8080, lifetime=300)
        lab.serve("f", 9090, lifetime=300)  # the app listens elsewhere than the targetPort
        lab.run("g", "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP")
        lab.run("node", "ip", "route", "del", "10.244.2.0/24")  # the CNI lost node2's route
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("dns"), "dnsmasq", "--keep-in-foreground",
             "--no-resolv", "--no-hosts", "--listen-address=10.244.1.2", "--bind-interfaces",
             "--port=53", "--user=root", "--pid-file=", "--conf-file=/dev/null", *answers],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        etcs = [Path("/etc/netns") / lab.ns(p) for p in ("probe", "a")]
        for etc in etcs:  # the kubelet's resolv.conf for the probe pod and the client pod
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(
                "search default.svc.cluster.local svc.cluster.local cluster.local\n"
                "nameserver 10.96.0.10\noptions ndots:5 timeout:1 attempts:1\n")
        try:
            services = [web, refuse, drop, far, stale_rules, sticky]
            lab.load_iptables(expected_rules(
                [s for s, _ in services] + [dns_svc], [e for _, e in services] + [dns_eps],
                nodes[0], ProxyConfig(cluster_cidrs=["10.244.0.0/16"])), backend="nft")
            for s, e in [web, refuse, drop, far, stale_api, sticky]:
                fc.add(s)
                fc.add(e)
            for obj in (dns_svc, dns_eps, *nodes,
                        _pod("a", "10.244.1.5", "node"),
                        _pod("b", B[0], "node", "web", "refuse", "drop", "far", "sticky"),
                        _pod("c", C[0], "node", "web", "sticky"),
                        _pod("f", F[0], "node", "refuse", containers=declared),
                        _pod("g", G[0], "node", "drop"), _pod("h", H[0], "node", "stale"),
                        _pod("d", D[0], "node2", "far"),
                        pod("coredns-1", "kube-system", "10.244.1.2", "node",
                            {"k8s-app": "kube-dns"})):
                fc.add(obj)

            def env(p: dict) -> list[str]:
                return [f"{e['name']}={e['value']}" for e in p["spec"]["containers"][0]["env"]]

            def kubelet(p: dict):
                c = p["spec"]["containers"][0]
                role = p["metadata"]["labels"].get("app.kubernetes.io/component")
                where = {"probe-watch": ("node", "172.18.0.2"), "probe": ("probe", PROBE_IP)}
                if role not in where:
                    return None  # the node dump pod: its log is the script's output below
                ns, ip = where[role]
                return ["ip", "netns", "exec", lab.ns(ns), "env", *env(p), *c["command"]], ip

            fc.kubelet = kubelet
            fc.kubelet_ephemeral = lambda p, c: (
                ["ip", "netns", "exec", lab.ns(p["metadata"]["name"]), "env",
                 *[f"{e['name']}={e['value']}" for e in c["env"]], *c["command"]],
                p["status"]["podIP"])
            fc.log_for = lambda p: lab.run("node", "env", *env(p), "sh", "-c", SCRIPT,
                                           timeout=60)
            fc.port_forward_to = lambda p, port: ("127.0.0.1", tool_dns.port)
            kubeconfig = fc.write_kubeconfig(tmp / "kubeconfig")
            yield lab, fc, kubeconfig
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(5)
            for etc in etcs:
                shutil.rmtree(etc, ignore_errors=True)


def probe(cluster, target: str, n: int, *extra: str) -> tuple[int, dict, str]:
    _lab, fc, kubeconfig = cluster
    r = CliRunner().invoke(main, ["trace", target, "--from", "default/a", "--probe", str(n),
                                  "--probe-timeout", "1", "-o", "json", *extra],
                           env={"KUBECONFIG": str(kubeconfig)})
    assert r.exit_code in (0, 1), r.stdout + r.stderr
    assert fc.pods_left() == [] and fc.processes_left() == []  # both pods gone
    return r.exit_code, json.loads(r.stdout), r.stderr


def codes(doc: dict) -> dict[str, str]:
    return {f["code"]: f["message"] for f in doc["findings"]}


def errors(doc: dict) -> set[str]:
    return {f["code"] for f in doc["findings"] if f["severity"] == "error"}


pytestmark = [pytest.mark.kernel, kernel_lab(*TOOLS)]


def test_healthy_split_fits_the_prediction(cluster) -> None:
    _lab, fc, _ = cluster
    before = len(fc.requests)
    rc, doc, _ = probe(cluster, "web", 100)
    obs = doc["observed"]
    assert rc == 0 and errors(doc) == set(), doc["findings"]
    service_conns = [c for c in obs["connections"] if c["path"] == "service"]
    assert len(service_conns) == 100
    assert all(c["outcome"] == "connected" for c in obs["connections"])
    assert {c["endpoint"] for c in service_conns} == {"10.244.1.6:8080", "10.244.1.7:8080"}
    assert obs["fit"]["verdict"] == "consistent" and obs["fit"]["connections"] == 100
    assert {e["endpoint"]: e["direct"]["outcome"] for e in obs["endpoints"]} == {
        "10.244.1.6:8080": "connected", "10.244.1.7:8080": "connected"}
    assert obs["resolution"]["addresses"] == ["10.96.0.50"]  # the pod's own resolver
    assert obs["probe"]["ip"] == PROBE_IP and obs["probe"]["node"] == "node"
    created = [p for p in fc.created if p["metadata"]["name"].startswith("clusterip-probe-")][-1]
    assert created["metadata"]["namespace"] == "default" and created["spec"].get(
        "hostNetwork") is not True
    assert created["metadata"]["labels"] == {"app.kubernetes.io/name": "kubectl-clusterip",
                                             "app.kubernetes.io/component": "probe"}
    env = {e["name"]: e["value"] for e in created["spec"]["containers"][0]["env"]}
    assert env["PACE"] == "0.05" and env["N"] == "100"
    # only the Service and its endpoints were targeted
    assert {(c["destination"]["ip"], c["destination"]["port"]) for c in obs["connections"]} \
        == {("10.96.0.50", 80), ("10.244.1.6", 8080), ("10.244.1.7", 8080)}
    requests = fc.requests[before:]
    print(f"API requests for a probed trace: {len(requests)} "
          f"({len([q for q in requests if q[0] != 'GET' or '/log' in q[1]])} beside polling)")
    assert len(requests) < 80


def test_endpoint_refusing_names_the_declared_ports(cluster, tmp_path: Path) -> None:
    """Through `capture --probe` and an offline replay: the snapshot keeps the observation."""
    _lab, fc, kubeconfig = cluster
    cap = CliRunner().invoke(main, ["capture", "refuse", "--from", "default/a", "--probe",
                                    "20", "--probe-timeout", "1", "-o", str(tmp_path / "s")],
                             env={"KUBECONFIG": str(kubeconfig)})
    assert cap.exit_code == 0, cap.stderr
    assert fc.pods_left() == [] and fc.processes_left() == []
    files = sorted(p.name for p in (tmp_path / "s" / "nodes" / "node").iterdir())
    assert {"probe-log.txt", "conntrack-events.txt"} <= set(files)
    replay = CliRunner().invoke(main, ["trace", "default/refuse", "--snapshot",
                                       str(tmp_path / "s"), "-o", "json"])
    text = CliRunner().invoke(main, ["trace", "default/refuse", "--snapshot",
                                     str(tmp_path / "s"), "--color", "never"])
    rc, doc = replay.exit_code, json.loads(replay.stdout)
    assert "OBSERVED" in text.stdout and "EndpointRefuses" in text.stdout, text.stdout
    assert "10.244.1.9:8080: observed via Service:" in text.stdout
    found = codes(doc)
    assert rc == 1 and "EndpointRefuses" in found, doc["findings"]
    assert "10.244.1.9:8080" in found["EndpointRefuses"]
    assert "http 8080/TCP (app)" in found["EndpointRefuses"]
    assert not {"ServicePathFails", "EndpointTimesOut"} & set(found)


def test_endpoint_dropping_times_out_on_the_same_node(cluster) -> None:
    rc, doc, _ = probe(cluster, "drop", 8)
    found = codes(doc)
    assert rc == 1 and "EndpointTimesOut" in found, doc["findings"]
    assert "10.244.1.10:8080" in found["EndpointTimesOut"]
    assert "same node" in found["EndpointTimesOut"]


def test_missing_cross_node_route(cluster) -> None:
    rc, doc, _ = probe(cluster, "far", 10)
    found = codes(doc)
    code = "EndpointUnreachable" if "EndpointUnreachable" in found else "EndpointTimesOut"
    assert rc == 1 and code in found, doc["findings"]
    assert "another node (node2)" in found[code]
    assert "no route to 10.244.2.5" in found[code] and "node2 (10.244.2.0/24)" in found[code]


def test_stale_rules_confirmed_live(cluster) -> None:
    rc, doc, _ = probe(cluster, "stale", 10)
    found = codes(doc)
    assert rc == 1 and {"StaleEndpointRules", "StaleEndpointLive"} <= set(found)
    assert "10.244.1.7:8080" in found["StaleEndpointLive"]
    obs = doc["observed"]
    assert {c["endpoint"] for c in obs["connections"] if c["path"] == "service"} == {
        "10.244.1.7:8080"}  # the kernel sends to A ...
    assert [e["direct"]["outcome"] for e in obs["endpoints"] if e["direct"]] == ["connected"]


def test_udp_dns_service(cluster) -> None:
    rc, doc, _ = probe(cluster, "kube-system/kube-dns:dns", 20)
    obs = doc["observed"]
    assert errors(doc) == set(), [c for c in obs["connections"] if c["outcome"] != "answered"]
    assert obs["method"] == "dns" and rc == 0
    assert {c["outcome"] for c in obs["connections"]} == {"answered"}
    assert {c["endpoint"] for c in obs["connections"]} == {"10.244.1.2:53"}


def test_session_affinity_pins_every_connection(cluster) -> None:
    rc, doc, _ = probe(cluster, "sticky", 30)
    obs = doc["observed"]
    eps = {c["endpoint"] for c in obs["connections"] if c["path"] == "service"}
    assert len(eps) == 1, obs["endpoints"]
    assert "ImplausibleSplit" not in codes(doc) and rc == 0, doc["findings"]


def test_probe_in_the_client_pod_as_an_ephemeral_container(cluster) -> None:
    _lab, fc, _ = cluster
    rc, doc, err = probe(cluster, "web", 20, "--probe-in-pod")
    obs = doc["observed"]
    assert rc == 0 and errors(doc) == set(), doc["findings"]
    assert obs["probe"]["mode"] == "ephemeral" and obs["probe"]["ip"] == "10.244.1.5"
    assert {c["outcome"] for c in obs["connections"]} == {"connected"}
    assert {c["endpoint"] for c in obs["connections"] if c["path"] == "service"} <= {
        "10.244.1.6:8080", "10.244.1.7:8080"}
    assert "stays in the pod's spec until the pod is deleted" in err
    assert any("stays in the pod's spec" in n for n in obs["notes"])
    client = fc.objects[("pods", "default", "a")]
    assert [c["name"] for c in client["spec"]["ephemeralContainers"]] == [
        obs["probe"]["container"]]


def test_ctrl_c_leaves_nothing(cluster) -> None:
    _lab, fc, kubeconfig = cluster

    def progress(msg: str) -> None:
        if msg.startswith("probe pod clusterip-probe-"):  # the probe runs: the user hits ^C
            raise KeyboardInterrupt

    flags = ConnectionFlags(str(kubeconfig), None, None, None, None, None)
    opts = LiveOptions("web", "default/a", probe=50, probe_timeout=1)
    started = time.monotonic()
    with pytest.raises(ClusterIPError, match="interrupted"):
        capture_snapshot(flags, opts, progress)
    assert fc.pods_left() == [] and fc.processes_left() == []
    assert time.monotonic() - started < 30


def test_ctrl_c_in_ephemeral_mode_says_what_stays(cluster) -> None:
    _lab, fc, kubeconfig = cluster

    def progress(msg: str) -> None:
        if msg.startswith("ephemeral container clusterip-probe-") and msg.endswith("running"):
            raise KeyboardInterrupt

    flags = ConnectionFlags(str(kubeconfig), None, None, None, None, None)
    opts = LiveOptions("web", "default/a", probe=10, probe_timeout=1, probe_in_pod=True)
    with pytest.raises(ClusterIPError, match="stays in pod default/a's spec"):
        capture_snapshot(flags, opts, progress)
    assert fc.pods_left() == []  # the watcher is gone; the container ends by itself
