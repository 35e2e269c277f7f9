"""The probe's pure core: parsing what the probe and conntrack printed, the G-test, the
findings that compare observation with prediction, and the probe's plan and pod."""

from __future__ import annotations

import math

import pytest
from fakeapi import endpoint_slice, pod, service
from hypothesis import given, settings
from hypothesis import strategies as st

from kubectl_clusterip.model import Candidate, ClusterIPError, Packet, Trace
from kubectl_clusterip.probe import script
from kubectl_clusterip.probe.fit import chi2_sf, fit
from kubectl_clusterip.probe.judge import judge
from kubectl_clusterip.probe.observed import Observed, join, parse_probe_log
from kubectl_clusterip.probe.run import plan
from kubectl_clusterip.snapshot import NodeDumps, Snapshot

M = "==== kubectl-clusterip"
PROBE_CODES = {"ClientDnsDiffers", "ProbeNotNated", "UnpredictedEndpoint", "StaleEndpointLive",
               "ImplausibleSplit", "SplitUntested", "ProbeDnatUnseen", "EndpointRefuses",
               "EndpointTimesOut", "EndpointUnreachable", "EndpointResets", "DirectPathFails",
               "ServicePathFails"}
PRODUCED: set[str] = set()


def conn(path: str, i: int, ip: str, port: int, sport: int, outcome: str, secs: float = 0.002,
         why: str = "") -> str:
    return f"CONN {path} {i} {ip} {port} {sport} {outcome} 100.000000 {100 + secs:.6f} {why}"


def event(sport: int, ep: str, src: str = "10.244.1.50", cip: str = "10.96.0.50") -> str:
    ip, port = ep.rsplit(":", 1)
    return (f"    [NEW] tcp      6 120 SYN_SENT src={src} dst={cip} sport={sport} dport=80 "
            f"[UNREPLIED] src={ip} dst={src} sport={port} dport={sport}")


# -- the G-test ----------------------------------------------------------------------------
@pytest.mark.parametrize("x, df, p", [(3.841, 1, 0.05), (5.991, 2, 0.05), (10.828, 1, 0.001),
                                      (1.0, 3, 0.8013), (30.0, 10, 0.000857), (0.0, 2, 1.0)])
def test_chi_square_tail_matches_tables(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, rel=2e-3, abs=1e-6)


def test_fit_verdicts() -> None:
    assert fit([52, 48], [0.5, 0.5]).verdict == "consistent"
    assert fit([90, 10], [0.5, 0.5]).verdict == "implausible"
    too_few = fit([3, 1], [0.5, 0.5])
    assert too_few.verdict == "too-few" and too_few.needed == 10
    assert fit([20, 0, 0, 0], [0.25] * 4).verdict == "implausible"
    assert "too few" in fit([2, 1, 1], [0.2, 0.4, 0.4]).describe()


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), min_size=2, max_size=6))
def test_p_value_is_a_probability(counts: list[int]) -> None:
    k = len(counts)
    result = fit(counts, [1 / k] * k)
    if result.p_value is not None:
        assert 0.0 <= result.p_value <= 1.0 and not math.isnan(result.p_value)


# -- parsing and joining ---------------------------------------------------------------
def test_probe_log_and_events_join_by_source_port() -> None:
    log = "\n".join([
        f"{M} PROBE-BEGIN ====", "PROBE connect 10.244.1.50",
        "RESOLV-BEGIN web", "search default.svc.cluster.local svc.cluster.local",
        "nameserver 10.96.0.10", "options ndots:5", "RESOLV-END",
        "GETENT web rc=0", "10.96.0.50      web.default.svc.cluster.local", "GETENT-END",
        conn("service", 1, "10.96.0.50", 80, 30001, "connected"),
        conn("service", 2, "10.96.0.50", 80, 30002, "refused", why="Connection refused"),
        conn("service", 3, "10.96.0.50", 80, 30003, "connected"),
        "CONN service garbage", conn("direct", 1, "10.244.1.6", 8080, 30501, "connected"),
        f"{M} PROBE-DONE ===="])
    parsed = parse_probe_log(log)
    assert parsed.complete and parsed.skipped == 1 and parsed.method == "connect"
    assert parsed.resolution.addresses == ["10.96.0.50"] and parsed.resolution.ndots == 5
    assert parsed.resolution.search == ["default.svc.cluster.local", "svc.cluster.local"]
    events = "\n".join([event(30001, "10.244.1.6:8080"), event(30002, "10.244.1.7:8080"),
                        event(30003, "10.244.1.6:8080", src="10.244.1.99")])  # another client
    joined = join(parsed, events, "10.244.1.50")
    assert [c.endpoint for c in joined] == ["10.244.1.6:8080", "10.244.1.7:8080", None,
                                            "10.244.1.6:8080"]
    assert joined[0].latency_ms == pytest.approx(2.0)


# -- judging -----------------------------------------------------------------------------
def _trace(*eps: tuple[str, float, dict], sticky: bool = False) -> Trace:
    cands = [Candidate(ip, 8080, p, False, sticky=sticky, extra=dict(extra))
             for ip, p, extra in eps]
    return Trace(Packet("10.244.1.50", "10.96.0.50", 80), "iptables", "dnat", cands,
                 service="default/web:http")


B = ("10.244.1.6", 0.5, {"pod": "b", "podNamespace": "default", "node": "node", "inAPI": True})
C = ("10.244.2.7", 0.5, {"pod": "c", "podNamespace": "default", "node": "node2", "inAPI": True})


def _snap() -> Snapshot:
    declared = [{"name": "app", "image": "app", "ports": [{"name": "http",
                                                          "containerPort": 9090}]}]
    objs = [pod("b", "default", "10.244.1.6", "node"),
            pod("c", "default", "10.244.2.7", "node2", containers=declared),
            {"kind": "Node", "metadata": {"name": "node2"},
             "spec": {"podCIDR": "10.244.2.0/24"}}]
    return Snapshot({}, objs, {"node": NodeDumps("node", {})})


def _observed(lines: list[str], events: list[str]) -> Observed:
    parsed = parse_probe_log("\n".join(["PROBE connect 10.244.1.50", *lines]))
    return Observed({"node": "node", "ip": "10.244.1.50", "pod": "default/p"}, "tcp",
                    "connect", join(parsed, "\n".join(events), "10.244.1.50"),
                    parsed.resolution)


def _codes(found) -> dict[str, str]:
    PRODUCED.update(f.code for f in found)
    return {f.code: f.message for f in found}


def test_refusing_endpoint_names_the_ports_the_pod_declares() -> None:
    lines, events = [], []
    for i in range(1, 21):
        ep = "10.244.1.6:8080" if i % 2 else "10.244.2.7:8080"
        lines.append(conn("service", i, "10.96.0.50", 80, 30000 + i,
                          "connected" if i % 2 else "refused"))
        events.append(event(30000 + i, ep))
    lines += [conn("direct", 1, "10.244.1.6", 8080, 30501, "connected"),
              conn("direct", 2, "10.244.2.7", 8080, 30502, "refused")]
    found, doc = judge(_trace(B, C), _observed(lines, events), _snap(), "node")
    codes = _codes(found)
    assert set(codes) == {"EndpointRefuses"}
    assert "pod default/c" in codes["EndpointRefuses"]
    assert "http 9090/TCP (app)" in codes["EndpointRefuses"]
    assert doc["fit"]["verdict"] == "consistent"
    row = {r["endpoint"]: r for r in doc["endpoints"]}["10.244.2.7:8080"]
    assert row["outcomes"] == {"refused": 10} and row["direct"]["outcome"] == "refused"


def test_service_path_failing_while_direct_works_blames_the_nat() -> None:
    lines = [conn("service", i, "10.96.0.50", 80, 30000 + i, "timeout") for i in range(1, 11)]
    events = [event(30000 + i, "10.244.1.6:8080") for i in range(1, 11)]
    lines.append(conn("direct", 1, "10.244.1.6", 8080, 30501, "connected"))
    found, _ = judge(_trace(B, C), _observed(lines, events), _snap(), "node")
    codes = _codes(found)
    assert "ServicePathFails" in codes and "ImplausibleSplit" in codes
    assert "EndpointTimesOut" not in codes


def test_cross_node_timeout_names_the_route_and_the_node() -> None:
    lines = [conn("service", i, "10.96.0.50", 80, 30000 + i, "timeout") for i in range(1, 6)]
    events = [event(30000 + i, "10.244.2.7:8080") for i in range(1, 6)]
    lines.append(conn("direct", 1, "10.244.2.7", 8080, 30501, "timeout"))
    snap = _snap()
    snap.nodes["node"].files["ip-route.json"] = '[{"dst": "10.96.0.0/12", "dev": "eth0"}]'
    found, _ = judge(_trace(B, C), _observed(lines, events), snap, "node")
    msg = _codes(found)["EndpointTimesOut"]
    assert "another node (node2)" in msg and "no route to 10.244.2.7" in msg
    assert "node2 (10.244.2.0/24)" in msg
    assert _codes(found)["SplitUntested"].startswith("5 connection(s) are too few")


def test_unpredicted_and_stale_endpoints() -> None:
    stale = ("10.244.1.9", 1.0, {"inAPI": False, "dnatChain": "KUBE-SEP-X"})
    lines = [conn("service", i, "10.96.0.50", 80, 30000 + i, "connected") for i in (1, 2)]
    events = [event(30001, "10.244.1.9:8080"), event(30002, "10.244.1.77:8080")]
    found, doc = judge(_trace(stale), _observed(lines, events), _snap(), "node")
    codes = _codes(found)
    assert "10.244.1.77:8080" in codes["UnpredictedEndpoint"]
    assert "10.244.1.9:8080" in codes["StaleEndpointLive"]
    assert {r["endpoint"]: r["predicted"] for r in doc["endpoints"]} == {
        "10.244.1.9:8080": 1.0, "10.244.1.77:8080": None}


def test_affinity_spread_over_two_endpoints_is_implausible() -> None:
    lines = [conn("service", i, "10.96.0.50", 80, 30000 + i, "connected") for i in (1, 2, 3)]
    events = [event(30001, "10.244.1.6:8080"), event(30002, "10.244.1.7:8080"),
              event(30003, "10.244.1.6:8080")]
    found, doc = judge(_trace(B, C, sticky=True), _observed(lines, events), _snap(), "node")
    assert "session affinity" in _codes(found)["ImplausibleSplit"] and doc["fit"] is None


def test_direct_failing_while_the_service_works() -> None:
    lines = [conn("service", 1, "10.96.0.50", 80, 30001, "connected"),
             conn("direct", 1, "10.244.1.6", 8080, 30501, "timeout")]
    found, _ = judge(_trace(B), _observed(lines, [event(30001, "10.244.1.6:8080")]),
                     _snap(), "node")
    assert set(_codes(found)) == {"DirectPathFails"}


def test_client_dns_differs() -> None:
    obs = _observed(["RESOLV-BEGIN web", "search other.svc.cluster.local", "RESOLV-END",
                     "GETENT web rc=2", "GETENT-END"], [])
    found, doc = judge(_trace(B), obs, _snap(), "node")
    assert "does not resolve inside the probe pod" in _codes(found)["ClientDnsDiffers"]
    assert doc["resolution"]["searchPath"] == ["other.svc.cluster.local"]


def test_not_nated_unseen_unreachable_and_resets() -> None:
    lines = [conn("service", 1, "10.96.0.50", 80, 30001, "unreachable"),
             conn("service", 2, "10.96.0.50", 80, 30002, "reset"),
             conn("service", 3, "10.96.0.50", 80, 30003, "timeout"),
             conn("direct", 1, "10.244.2.7", 8080, 30501, "unreachable"),
             conn("direct", 2, "10.244.1.6", 8080, 30502, "reset")]
    events = [event(30001, "10.244.2.7:8080"), event(30002, "10.244.1.6:8080"),
              event(30009, "10.96.0.50:80")]
    found, doc = judge(_trace(B, C), _observed(lines, events), _snap(), "node")
    codes = _codes(found)
    assert "are unreachable" in codes["EndpointUnreachable"]
    assert "resets" in codes["EndpointResets"]
    assert "1 of 3" in codes["ProbeDnatUnseen"] and doc["unattributed"] == 1
    lines = [conn("service", 1, "10.96.0.50", 80, 30001, "timeout")]
    found, _ = judge(_trace(B, C), _observed(lines, [event(30001, "10.96.0.50:80")]),
                     _snap(), "node")
    assert "not DNAT'd at all" in _codes(found)["ProbeNotNated"]


# -- the plan and the pod ------------------------------------------------------------------
SVC = service("web", "default", "10.96.0.50",
              [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
               {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}],
              {"app": "web"})
SLICE = endpoint_slice("web", "default", [{"name": "http", "port": 8080, "protocol": "TCP"},
                                          {"name": "dns", "port": 5353, "protocol": "UDP"}],
                       [("10.244.1.6", "node", "b"), ("10.244.1.7", "node", "c")])


def test_plan_targets_only_the_service_and_its_endpoints() -> None:
    p = plan(SVC, [SLICE], None, "client-ns", "node", 20, 2, "img")
    assert (p.cluster_ip, p.port, p.method) == ("10.96.0.50", 80, "connect")
    assert p.endpoints == ("10.244.1.6:8080", "10.244.1.7:8080")
    assert p.name == "web.default" and p.fqdn == "web.default.svc.cluster.local."
    udp = plan(SVC, [SLICE], "dns", "default", "node", 5, 2, "img")
    assert (udp.method, udp.endpoints[0], udp.name) == ("dns", "10.244.1.6:5353", "web")
    for n in (0, 501):
        with pytest.raises(ClusterIPError, match="1 to 500"):
            plan(SVC, [SLICE], None, "default", "node", n, 2, "img")
    assert script.method("udp", "metrics", 9000) == "datagram"


def test_probe_pod_is_an_ordinary_restricted_pod_of_its_own() -> None:
    p = plan(SVC, [SLICE], None, "client-ns", "node-1", 20, 2, "img")
    spec = script.probe_pod("client-ns", "node-1", "img", p.env(30000), 120)
    assert spec["metadata"]["namespace"] == "client-ns"
    assert spec["metadata"]["labels"] == script.LABELS
    assert spec["spec"]["nodeName"] == "node-1" and "hostNetwork" not in spec["spec"]
    c = spec["spec"]["containers"][0]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}}
    assert spec["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["N"] == "20" and env["PACE"] == "0.05" and env["TARGET"] == "10.96.0.50"
    assert "-le 500" in script.PROBE_SCRIPT  # the script's own bound, whatever N says


# -- the cluster domain, from CoreDNS's Corefile -------------------------------------------
KUBEADM_COREFILE = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""


def test_corefile_domain() -> None:
    from kubectl_clusterip.cluster.dns import cluster_domain, corefile_domain
    assert corefile_domain(KUBEADM_COREFILE) == "cluster.local"
    assert corefile_domain("  kubernetes in-addr.arpa Corp.Example. {\n") == "corp.example"
    assert corefile_domain("# kubernetes commented.out\nforward . 8.8.8.8\n") is None
    assert cluster_domain(None)[1].startswith("assumed")


def test_live_dns_step_uses_the_corefile_domain(tmp_path) -> None:
    import json

    from click.testing import CliRunner
    from fakeapi import Dnsmasq, FakeCluster
    from test_live_trace import node_log, populate

    from kubectl_clusterip.cli import main
    with FakeCluster() as fc, Dnsmasq(["--address=/corp.example/",
                                       "--host-record=web.default.svc.corp.example,10.96.0.50"
                                       ]) as dm:
        populate(fc)
        fc.add({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": KUBEADM_COREFILE.replace("cluster.local", "corp.example")}})
        fc.log_for = lambda created: node_log(fc, created)
        kc = fc.write_kubeconfig(tmp_path / "kubeconfig")
        r = CliRunner().invoke(main, ["trace", "web", "--from", "client", "--dns-server",
                                      f"127.0.0.1:{dm.port}", "-o", "json"],
                               env={"KUBECONFIG": str(kc)})
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, r.stderr
    assert doc["dns"]["fqdn"] == "web.default.svc.corp.example."
    assert doc["clusterDomain"] == {"domain": "corp.example", "source": "the kubernetes "
                                    "plugin's zone in ConfigMap kube-system/coredns"}


def test_probe_needs_a_live_cluster_and_a_service() -> None:
    from click.testing import CliRunner

    from kubectl_clusterip.cli import main
    for args in (["default/my-service", "--snapshot", "examples/kind-my-service"],
                 ["--to", "10.96.0.1:443", "--rules-file", "examples/kind-my-service/nodes/"
                  "kind-worker/iptables-save.txt"]):
        r = CliRunner().invoke(main, ["trace", *args, "--probe", "5"])
        assert r.exit_code == 2 and "--probe needs a live cluster" in r.stderr, r.stderr
    r = CliRunner().invoke(main, ["trace", "web", "--all-nodes", "--probe"])
    assert r.exit_code == 2 and "drop --probe" in r.stderr, r.stderr
    r = CliRunner().invoke(main, ["trace", "web", "--probe", "501"])
    assert r.exit_code == 2 and "501" in r.stderr
    r = CliRunner().invoke(main, ["trace", "web", "--probe", "--probe-in-pod"])
    assert r.exit_code == 2 and "--probe-in-pod needs --probe and --from POD" in r.stderr


def test_every_probe_code_is_produced() -> None:
    """Runs last in this file: each of the probe's codes came out of a test above."""
    from kubectl_clusterip.findings import CODES
    assert PROBE_CODES <= set(CODES)
    assert PRODUCED == PROBE_CODES
