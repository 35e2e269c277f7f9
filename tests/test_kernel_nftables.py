"""nftables mode against the real kernel: the walker's prediction vs what netfilter did.

Each scenario loads kube-proxy's nftables transaction (kubectl_clusterip.nftables.expected)
into the lab's node namespace with `nft -f`, feeds the walker the kernel's own
`nft -j list ruleset` (never the file we loaded), sends real requests, and checks:
the endpoints that answered are exactly the predicted candidates, the source address each
endpoint saw is the client (not masqueraded) or the predicted SNAT address, and
`conntrack -L` in the node holds the predicted reply tuple (ephemeral ports aside).

Needs root, iproute2, nft and conntrack; skipped elsewhere with the reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netlab import Lab, kernel_lab, parse_conntrack

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.model import Node, Packet, Trace
from kubectl_clusterip.nftables.dataplane import NftablesDataplane
from kubectl_clusterip.nftables.expected import expected_ruleset
from kubectl_clusterip.snapshot import node_from_ip_json

pytestmark = [pytest.mark.kernel, kernel_lab("nft", "conntrack")]

CIP, CIP6 = "10.96.0.10", "fd00:10:96::10"
CONFIG = ProxyConfig(mode="nftables", cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"])
NODE_OBJ = {"metadata": {"name": "node", "labels": {}},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                     {"type": "InternalIP", "address": "fd00:172:18::2"}]}}
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
HTTPS = {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}
DNS = {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}
SLICE_PORTS = {"http": 8080, "https": 8443, "dns": 5353}


def service(ports: list[dict], cip: str = CIP, name: str = "web", **spec) -> dict:
    return {"metadata": {"namespace": "shop", "name": name},
            "spec": {"clusterIP": cip, "clusterIPs": [cip], "ports": ports, **spec}}


def endpoint_slice(ips: list[str], ports: list[dict], name: str = "web",
                   family: int = 4) -> dict:
    return {"metadata": {"namespace": "shop", "name": f"{name}-v{family}",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": f"IPv{family}",
            "endpoints": [{"addresses": [ip]} for ip in ips],
            "ports": [{"name": p["name"], "port": SLICE_PORTS[p["name"]],
                       "protocol": p["protocol"]} for p in ports]}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Node "node" (rules) with pods a (client), b, c; pod d on node2; client ext outside."""
    with Lab(nodes=2) as lab:
        lab.add_pod("a", "10.244.1.10", ipv6=True)
        lab.add_pod("b", "10.244.1.11", ipv6=True)
        lab.add_pod("c", "10.244.1.12", ipv6=True)
        lab.add_pod("d", "10.244.2.13", ipv6=True, node="node2")
        lab.add_external("ext", "172.18.0.3")
        for pod in ("b", "c", "d"):
            lab.serve(pod, 8080, "tcp", lifetime=300)
            lab.serve(pod, 5353, "udp", lifetime=300)
        for pod in ("b", "c"):
            lab.serve(pod, 8443, "tcp", lifetime=300)
        yield lab


def load(lab: Lab, services: list[dict], slices: list[dict], family: int = 4,
         layout: str = "new") -> ShapeChecked:
    """Program the node, then read back what the kernel holds, as kube-proxy would find it."""
    lab.load_nft(expected_ruleset(services, slices, NODE_OBJ, CONFIG, family, layout,
                                  service_cidrs=["10.96.0.0/12", "fd00:10:96::/112"]))
    lab.conntrack_flush()
    return kernel_dataplane(lab, family)


def kernel_dataplane(lab: Lab, family: int) -> ShapeChecked:
    """The kernel's `nft -j` dataplane, whose every trace is also made from the text shapes
    people paste of the same kernel state (issue 10: tabs or spaces, one table, handles)."""
    (dp,) = [d for d in NftablesDataplane.from_text(lab.nft_json(), "kernel")
             if d.family == family]
    plain = lab.run("node", "nft", "list", "ruleset")
    table = "ip" if family == 4 else "ip6"
    shapes = {
        "nft list ruleset": plain,
        "re-indented with 4 spaces": plain.replace("\t", "    "),
        "re-indented with 2 spaces": plain.replace("\t", "  "),
        f"nft list table {table} kube-proxy": lab.run("node", "nft", "list", "table", table,
                                                      "kube-proxy"),
        "nft -a list ruleset": lab.run("node", "nft", "-a", "list", "ruleset"),
    }
    assert "\t" in plain and "# handle " in shapes["nft -a list ruleset"]
    return ShapeChecked(dp, {name: next(d for d in NftablesDataplane.from_text(text, name)
                                        if d.family == family)
                             for name, text in shapes.items()})


class ShapeChecked:
    """A dataplane whose `trace` asserts every other shape gives the same answer."""

    def __init__(self, dp: NftablesDataplane, shapes: dict[str, NftablesDataplane]) -> None:
        self.dp, self.shapes = dp, shapes

    def trace(self, packet: Packet, node: Node | None = None, affinity=None) -> Trace:
        want = self.dp.trace(packet, node, affinity)
        for name, other in self.shapes.items():
            assert _answer(other.trace(packet, node, affinity)) == _answer(want), name
        return want

    def __getattr__(self, name: str):
        return getattr(self.dp, name)


def _answer(trace: Trace) -> tuple:
    """What a paste's shape must not change: verdict, endpoints with odds, masquerade."""
    return (trace.verdict, trace.service, trace.masquerade,
            tuple((c.ip, c.port, round(c.probability, 12), c.masquerade, c.snat_ip, c.sticky)
                  for c in trace.candidates))


def node_context(lab: Lab) -> Node:
    routes = lab.ip_route_json(4) + lab.ip_route_json(6)
    return node_from_ip_json("node", lab.ip_addr_json(), routes)


def ip(lab: Lab, name: str, family: int = 4) -> str:
    return lab.ip_of(name, family)


def server_ips(lab: Lab, trace: Trace) -> dict[str, str]:
    """Predicted candidates as lab server names (pod name by IP)."""
    by_ip = {p.ip: n for n, p in lab.pods.items()} | {p.ipv6: n for n, p in lab.pods.items()}
    return {by_ip[c.ip]: c.ip for c in trace.candidates}


def check_answers(lab: Lab, trace: Trace, replies: list, client_ip: str) -> None:
    """Who answered == the candidates; each saw the client or the predicted SNAT source."""
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    expected = server_ips(lab, trace)
    assert {r.server for r in replies} == set(expected), (trace.candidates, replies[:3])
    by_name = {name: next(c for c in trace.candidates if c.ip == addr)
               for name, addr in expected.items()}
    for r in replies:
        c = by_name[r.server]
        want = (c.snat_ip if c.masquerade else client_ip)
        assert want is not None, f"no SNAT address predicted for {c.endpoint}"
        assert r.peer_ip == want, (r, c)


def check_conntrack(lab: Lab, trace: Trace, family: int = 4) -> None:
    """Every conntrack entry for the request matches a predicted `reverse` line."""
    p = trace.packet
    entries = [e for e in parse_conntrack(lab.conntrack(family, p.protocol))
               if e["original"].get("dst") == p.dst_ip
               and e["original"].get("dport") == p.dst_port
               and e["original"].get("src") == p.src_ip]
    assert entries, f"no conntrack entry for {p.src_ip} -> {p.dst_ip}:{p.dst_port}"
    predicted = []
    for rev in trace.reverse:
        f = dict(kv.split("=", 1) for kv in rev["conntrack"].split()[2:6])
        g = dict(kv.split("=", 1) for kv in rev["conntrack"].split()[6:10])
        predicted.append((f["src"], f["dst"], f["dport"], g["src"], g["dst"], g["sport"]))
    for e in entries:
        o, r = e["original"], e["reply"]
        got = (o["src"], o["dst"], str(o["dport"]), r["src"], r["dst"], str(r["sport"]))
        assert got in predicted, (got, predicted)


def test_several_endpoints(lab: Lab):
    ports = [HTTP]
    dp = load(lab, [service(ports)], [endpoint_slice(
        [ip(lab, "b"), ip(lab, "c"), ip(lab, "d")], ports)])
    trace = dp.trace(Packet(ip(lab, "a"), CIP, 80), node_context(lab))
    assert trace.verdict == "dnat" and not trace.masquerade
    assert [c.probability for c in trace.candidates] == pytest.approx([1 / 3] * 3)
    replies = lab.request("a", CIP, 80, count=60)
    check_answers(lab, trace, replies, ip(lab, "a"))
    check_conntrack(lab, trace)


def test_json_and_text_listings_agree_with_each_other(lab: Lab):
    """The kernel's JSON renders to the kernel's own text, rule by rule, and both predict
    the same thing."""
    ports = [HTTP]
    load(lab, [service(ports, sessionAffinity="ClientIP")],
         [endpoint_slice([ip(lab, "b"), ip(lab, "c")], ports)], layout="old")
    (dj,) = NftablesDataplane.from_text(lab.nft_json())
    (dt,) = NftablesDataplane.from_text(lab.run("node", "nft", "-a", "list", "ruleset"))
    assert dj.table is not None and dt.table is not None
    for name, ch in dj.table.chains.items():
        assert [(r.handle, r.text) for r in ch.rules] == \
            [(r.handle, r.text) for r in dt.table.chains[name].rules]
    pkt = Packet(ip(lab, "a"), CIP, 80)
    a, b = dj.trace(pkt), dt.trace(pkt)
    assert [(c.ip, c.probability, c.masquerade) for c in a.candidates] == \
        [(c.ip, c.probability, c.masquerade) for c in b.candidates]
    assert [(s.chain, s.rule, s.effect) for s in a.steps] == \
        [(s.chain, s.rule, s.effect) for s in b.steps]


def test_no_endpoints_is_refused(lab: Lab):
    dp = load(lab, [service([HTTP])], [])
    trace = dp.trace(Packet(ip(lab, "a"), CIP, 80), node_context(lab))
    assert trace.verdict == "reject"
    assert trace.findings[0].code == "NoEndpointsReject"
    replies = lab.request("a", CIP, 80, count=3)
    assert [r.error for r in replies] == ["refused"] * 3


def test_undefined_port_refused_and_unallocated_ip_dropped(lab: Lab):
    dp = load(lab, [service([HTTP])], [endpoint_slice([ip(lab, "b")], [HTTP])])
    assert dp.trace(Packet(ip(lab, "a"), CIP, 81)).verdict == "reject"
    assert [r.error for r in lab.request("a", CIP, 81, count=2)] == ["refused"] * 2
    assert dp.trace(Packet(ip(lab, "a"), "10.96.0.99", 80)).verdict == "drop"
    assert [r.error for r in lab.request("a", "10.96.0.99", 80, count=1, timeout=0.5)] == \
        ["timeout"]


def test_hairpin(lab: Lab):
    ports = [HTTP]
    dp = load(lab, [service(ports)], [endpoint_slice([ip(lab, "b"), ip(lab, "c")], ports)])
    trace = dp.trace(Packet(ip(lab, "b"), CIP, 80), node_context(lab))
    masq = {c.ip: (c.masquerade, c.snat_ip) for c in trace.candidates}
    assert masq == {ip(lab, "b"): (True, "10.244.1.1"), ip(lab, "c"): (False, None)}
    replies = lab.request("b", CIP, 80, count=40)
    check_answers(lab, trace, replies, ip(lab, "b"))
    check_conntrack(lab, trace)


def test_off_cluster_client(lab: Lab):
    ports = [HTTP]
    dp = load(lab, [service(ports)], [endpoint_slice([ip(lab, "b"), ip(lab, "d")], ports)])
    trace = dp.trace(Packet(ip(lab, "ext"), CIP, 80), node_context(lab))
    assert all(c.masquerade for c in trace.candidates)
    assert {c.ip: c.snat_ip for c in trace.candidates} == {ip(lab, "b"): "10.244.1.1",
                                                           ip(lab, "d"): "172.18.0.2"}
    replies = lab.request("ext", CIP, 80, count=40)
    check_answers(lab, trace, replies, ip(lab, "ext"))
    check_conntrack(lab, trace)


def test_host_network_client(lab: Lab):
    ports = [HTTP]
    dp = load(lab, [service(ports)], [endpoint_slice([ip(lab, "c"), ip(lab, "d")], ports)])
    node_ip = "172.18.0.2"  # the source the node's route toward the service CIDR picks
    trace = dp.trace(Packet(node_ip, CIP, 80, from_host=True), node_context(lab))
    assert trace.verdict == "dnat" and trace.masquerade
    assert "nat-output" in [s.chain for s in trace.steps]
    replies = lab.request("node", CIP, 80, count=40)
    assert {r.local_ip for r in replies} == {node_ip}
    check_answers(lab, trace, replies, node_ip)
    check_conntrack(lab, trace)


def test_udp(lab: Lab):
    ports = [DNS]
    dp = load(lab, [service(ports)], [endpoint_slice([ip(lab, "b"), ip(lab, "c")], ports)])
    trace = dp.trace(Packet(ip(lab, "a"), CIP, 53, "udp"), node_context(lab))
    assert {(c.port, c.probability) for c in trace.candidates} == {(5353, 0.5)}
    replies = lab.request("a", CIP, 53, "udp", count=40)
    check_answers(lab, trace, replies, ip(lab, "a"))
    check_conntrack(lab, trace)


def test_two_ports(lab: Lab):
    ports = [HTTP, HTTPS]
    dp = load(lab, [service(ports)], [endpoint_slice([ip(lab, "b"), ip(lab, "c")], ports)])
    for port, target in ((80, 8080), (443, 8443)):
        trace = dp.trace(Packet(ip(lab, "a"), CIP, port), node_context(lab))
        assert {c.port for c in trace.candidates} == {target}
        replies = lab.request("a", CIP, port, count=30)
        check_answers(lab, trace, replies, ip(lab, "a"))
        check_conntrack(lab, trace)


def test_affinity(lab: Lab):
    ports = [HTTP]
    dp = load(lab, [service(ports, sessionAffinity="ClientIP")],
              [endpoint_slice([ip(lab, "b"), ip(lab, "c"), ip(lab, "d")], ports)])
    client = ip(lab, "a")
    first = dp.trace(Packet(client, CIP, 80), node_context(lab))
    assert len(first.candidates) == 3 and all(c.sticky for c in first.candidates)
    (reply,) = lab.request("a", CIP, 80, count=1)
    assert reply.ok
    # The kernel recorded the client in one affinity set; the walker reads it from the dump.
    later = kernel_dataplane(lab, 4).trace(Packet(client, CIP, 80), node_context(lab))
    assert [c.probability for c in later.candidates] == [1.0]
    assert server_ips(lab, later) == {reply.server: later.candidates[0].ip}
    lab.conntrack_flush()
    replies = lab.request("a", CIP, 80, count=20)
    check_answers(lab, later, replies, client)
    check_conntrack(lab, later)


def test_ipv6(lab: Lab):
    ports = [HTTP]
    dp = load(lab, [service(ports, cip=CIP6)],
              [endpoint_slice([ip(lab, "b", 6), ip(lab, "d", 6)], ports, family=6)], family=6)
    client = ip(lab, "a", 6)
    trace = dp.trace(Packet(client, CIP6, 80), node_context(lab))
    assert trace.verdict == "dnat" and [c.probability for c in trace.candidates] == [0.5, 0.5]
    replies = lab.request("a", CIP6, 80, count=40)
    check_answers(lab, trace, replies, client)
    check_conntrack(lab, trace, family=6)
