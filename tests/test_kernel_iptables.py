"""The walker's prediction against what the real kernel does with kube-proxy's iptables rules.

A node is built from network namespaces (tests/netlab.py), kube-proxy's rules for a set of
Services are loaded with iptables-restore, and the walker is fed the kernel's own
iptables-save output. Then real requests are sent and we compare: the endpoints that
answered, the source address they saw (masquerade), and the conntrack entry (reply path).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from kube_objects import LAB_POD6, LAB_PODS, lab_objects, node, rules_for
from netlab import Lab, parse_conntrack, require_root_tools, tally

from kubectl_clusterip.conntrack import expected_entry
from kubectl_clusterip.iptables.dataplane import IptablesDataplane, parse_xt_recent
from kubectl_clusterip.model import Packet, Trace
from kubectl_clusterip.snapshot import node_from_ip_json

REASON = require_root_tools("ip", "iptables-restore", "iptables-save", "ip6tables-restore",
                            "conntrack")
pytestmark = [pytest.mark.kernel, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

PODS, POD6 = LAB_PODS, LAB_POD6
WEB = ("shop", "web", "10.96.0.20")




@pytest.fixture(scope="module")
def lab():
    with Lab(nodes=2, ipv6=True) as lab:
        for name, ip in PODS.items():
            lab.add_pod(name, ip, ipv6=POD6.get(name), node="node2" if name == "ep3" else "node")
        lab.add_external("ext", "172.18.0.3")
        svcs, slices, svc6, slices6 = lab_objects()
        me = node("node", "172.18.0.2", ["10.244.1.0/24", "fd00:10:244:1::/64"])
        lab.load_iptables(rules_for(svcs, slices, me), family=4)
        lab.load_iptables(rules_for(svc6, slices6, me, family=6), family=6)
        for ep in ("ep1", "ep2", "ep3"):
            lab.serve(ep, 8080, "tcp")
        for ep in ("ep1", "ep2"):
            lab.serve(ep, 9090, "tcp")
            lab.serve(ep, 5353, "udp")
        lab.serve("client", 8081, "tcp")
        yield lab


@pytest.fixture(scope="module")
def kernel(lab):
    """The walker's inputs exactly as the kernel reports them."""
    v4 = IptablesDataplane.from_text(lab.iptables_save(4), "iptables-save")
    v6 = IptablesDataplane.from_text(lab.iptables_save(6), "ip6tables-save")
    routes = lab.ip_route_json(4) + lab.ip_route_json(6)
    return v4, v6, node_from_ip_json("node", lab.ip_addr_json(), routes)


@pytest.fixture(autouse=True)
def clean_conntrack(lab):
    lab.conntrack_flush()


def pod_of(ip: str) -> str:
    return next(name for table in (PODS, POD6) for name, addr in table.items() if addr == ip)


def check_against_kernel(lab: Lab, t: Trace, client: str, replies: list) -> None:
    """Answers, observed sources and the conntrack entry all as the trace predicted."""
    assert all(r.ok for r in replies), {r.error for r in replies}
    assert set(tally(replies)) == {pod_of(c.ip) for c in t.candidates}
    seen = {c.ip: (c.snat_ip if c.masquerade else t.packet.src_ip) for c in t.candidates}
    for r in replies:
        ep = next(c.ip for c in t.candidates if pod_of(c.ip) == r.server)
        assert r.peer_ip == seen[ep], f"{r.server} saw {r.peer_ip}, predicted {seen[ep]}"
    entries = [e for e in parse_conntrack(lab.conntrack(t.packet.family, t.packet.protocol))
               if e["original"]["dst"] == t.packet.dst_ip]
    assert len(entries) == len(replies)
    by_ip = {c.ip: c for c in t.candidates}
    for e in entries:
        o, r = e["original"], e["reply"]
        actual = (f"{e['proto']} {NUMBERS[e['proto']]} src={o['src']} dst={o['dst']} "
                  f"sport={o['sport']} dport={o['dport']} src={r['src']} dst={r['dst']} "
                  f"sport={r['sport']} dport={r['dport']}")
        # The prediction for this connection's own (ephemeral) source port.
        c = by_ip[r["src"]]
        predicted = expected_entry(replace(t.packet, src_port=o["sport"]), c)
        if c.random_fully:  # MASQUERADE --random-fully picks the reply port at random
            predicted = predicted.replace("dport=*", f"dport={r['dport']}")
        assert actual == predicted


NUMBERS = {"tcp": 6, "udp": 17}


def trace(dp: IptablesDataplane, node, src: str, vip: str, port: int, **kw) -> Trace:
    return dp.trace(Packet(src, vip, port, **kw), node)


def test_three_endpoints_same_and_cross_node(lab, kernel):
    v4, _, node_ctx = kernel
    t = trace(v4, node_ctx, PODS["client"], "10.96.0.20", 80)
    assert t.verdict == "dnat" and not t.masquerade
    assert [round(c.probability, 6) for c in t.candidates] == [0.333333] * 3
    replies = lab.request("client", "10.96.0.20", 80, count=60)
    check_against_kernel(lab, t, "client", replies)
    assert min(tally(replies).values()) >= 5  # uniform, not merely possible


def test_no_endpoints_is_refused_as_predicted(lab, kernel):
    v4, _, node_ctx = kernel
    t = trace(v4, node_ctx, PODS["client"], "10.96.0.21", 80)
    assert t.verdict == "reject" and t.findings[0].code == "NoEndpointsReject"
    replies = lab.request("client", "10.96.0.21", 80, count=3)
    assert [r.error for r in replies] == ["refused"] * 3


def test_hairpin_is_masqueraded_to_the_node_gateway(lab, kernel):
    v4, _, node_ctx = kernel
    t = trace(v4, node_ctx, PODS["client"], "10.96.0.22", 80)
    (c,) = t.candidates
    assert c.ip == PODS["client"] and c.masquerade and c.snat_ip == "10.244.1.1"
    check_against_kernel(lab, t, "client", lab.request("client", "10.96.0.22", 80, count=3))


def test_off_cluster_client_is_masqueraded(lab, kernel):
    v4, _, node_ctx = kernel
    t = trace(v4, node_ctx, "172.18.0.3", "10.96.0.20", 80)
    assert {c.ip: c.snat_ip for c in t.candidates} == {
        PODS["ep1"]: "10.244.1.1", PODS["ep2"]: "10.244.1.1", PODS["ep3"]: "172.18.0.2"}
    check_against_kernel(lab, t, "ext", lab.request("ext", "10.96.0.20", 80, count=45))


def test_host_network_client_takes_the_output_path(lab, kernel):
    v4, _, node_ctx = kernel
    t = trace(v4, node_ctx, "172.18.0.2", "10.96.0.20", 80, from_host=True)
    assert t.steps[0].chain == "OUTPUT" and all(c.masquerade for c in t.candidates)
    check_against_kernel(lab, t, "node", lab.request("node", "10.96.0.20", 80, count=45))


def test_udp_service(lab, kernel):
    v4, _, node_ctx = kernel
    t = trace(v4, node_ctx, PODS["client"], "10.96.0.10", 53, protocol="udp")
    assert t.service == "kube-system/dns:dns" and len(t.candidates) == 2
    check_against_kernel(lab, t, "client",
                         lab.request("client", "10.96.0.10", 53, "udp", count=30))


def test_two_port_service_each_port_to_its_target(lab, kernel):
    v4, _, node_ctx = kernel
    for port, target in ((80, 8080), (9090, 9090)):
        t = trace(v4, node_ctx, PODS["client"], "10.96.0.23", port)
        assert {c.port for c in t.candidates} == {target}
        check_against_kernel(lab, t, "client",
                             lab.request("client", "10.96.0.23", port, count=30))
        lab.conntrack_flush()


def test_session_affinity_sticks_to_the_endpoint_the_kernel_recorded(lab, kernel):
    v4, _, node_ctx = kernel
    first = trace(v4, node_ctx, PODS["client"], "10.96.0.24", 80)
    assert len(first.candidates) == 3 and all(c.sticky for c in first.candidates)
    replies = lab.request("client", "10.96.0.24", 80, count=20)
    assert len(tally(replies)) == 1  # every connection went to the same endpoint
    # The same command the node debug pod runs (snapshot file xt-recent.txt).
    state = lab.run("node", "sh", "-c", "grep -H '' /proc/net/xt_recent/*")
    pinned = v4.trace(Packet(PODS["client"], "10.96.0.24", 80), node_ctx,
                      recent=parse_xt_recent(state))
    assert [pod_of(c.ip) for c in pinned.candidates] == list(tally(replies))
    assert pinned.candidates[0].probability == 1.0
    f = next(f for f in pinned.findings if f.code == "SessionAffinity")
    assert "already holds 10.244.1.5" in f.message and "--rcheck" in f.evidence


def test_ipv6_service(lab, kernel):
    _, v6, node_ctx = kernel
    t = trace(v6, node_ctx, POD6["client"], "fd00:10:96::20", 80)
    assert t.packet.family == 6 and len(t.candidates) == 2 and not t.masquerade
    check_against_kernel(lab, t, "client", lab.request("client", "fd00:10:96::20", 80, count=30))
