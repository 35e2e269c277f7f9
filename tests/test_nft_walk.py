"""The nftables walker over kube-proxy-shaped rulesets, as both `nft list` text and `nft -j`.

Rulesets come from kubectl_clusterip.nftables.expected (kube-proxy's transaction for API
objects) turned into the listing nft prints; tests/test_kernel_nftables.py checks the same
answers against the kernel's own listings and real traffic.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kubectl_clusterip.cli import main
from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.model import Address, Node, Packet, Route
from kubectl_clusterip.naming import nft_affinity_set
from kubectl_clusterip.nftables.dataplane import NftablesDataplane
from kubectl_clusterip.nftables.expected import expected_ruleset, listing, listing_json

CIP = "10.96.0.10"
NODE_IP = "172.18.0.2"
POD = "10.244.1.100"
CONFIG = ProxyConfig(mode="nftables", cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"])
NODE = {"metadata": {"name": "node", "labels": {}}, "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}
NODE_CTX = Node("node", (Address(NODE_IP, 16, "eth0"), Address("10.244.1.1", 32, "veth1")),
                (Route("10.244.1.0/24", "veth1", "10.244.1.1"),
                 Route("0.0.0.0/0", "eth0", NODE_IP)))


def service(name: str = "web", cip: str = CIP, ports: list | None = None, **spec) -> dict:
    ports = ports or [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    return {"metadata": {"namespace": "shop", "name": name},
            "spec": {"clusterIP": cip, "clusterIPs": [cip], "ports": ports, **spec}}


def eps(ips: list[str], name: str = "web", ports: list | None = None,
        nodes: list[str] | None = None, family: int = 4) -> dict:
    ports = ports or [{"name": "http", "port": 8080, "protocol": "TCP"}]
    return {"metadata": {"namespace": "shop", "name": f"{name}-{family}",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": f"IPv{family}",
            "endpoints": [{"addresses": [ip], **({"nodeName": nodes[i]} if nodes else {})}
                          for i, ip in enumerate(ips)],
            "ports": ports}


def dataplane(services: list[dict], slices: list[dict], fmt: str = "json",
              layout: str = "new", family: int = 4) -> NftablesDataplane:
    tx = expected_ruleset(services, slices, NODE, CONFIG, family, layout,
                          service_cidrs=["10.96.0.0/12", "fd00:10:96::/112"])
    text = listing(tx)
    dump = listing_json(text) if fmt == "json" else text
    (dp,) = [d for d in NftablesDataplane.from_text(dump, f"test.{fmt}") if d.family == family]
    return dp


def answer(trace) -> tuple:
    """What must not depend on the input format: verdict, odds, masquerade, service."""
    return (trace.verdict, trace.service,
            tuple((c.ip, c.port, round(c.probability, 12), c.masquerade, c.sticky)
                  for c in trace.candidates))


@pytest.fixture(params=["json", "text"])
def fmt(request) -> str:
    return request.param


@pytest.fixture(params=["new", "old"])
def layout(request) -> str:
    return request.param


@pytest.mark.parametrize("n", range(1, 11))
def test_each_endpoint_gets_exactly_its_share(n: int, fmt: str):
    ips = [f"10.244.{2 + i % 3}.{10 + i}" for i in range(n)]
    dp = dataplane([service()], [eps(ips)], fmt)
    t = dp.trace(Packet(POD, CIP, 80), NODE_CTX)
    assert t.verdict == "dnat" and t.service == "shop/web:http"
    assert sorted((c.ip, c.port) for c in t.candidates) == sorted((ip, 8080) for ip in ips)
    assert all(c.probability == pytest.approx(1 / n, abs=1e-12) for c in t.candidates)
    assert sum(c.probability for c in t.candidates) == pytest.approx(1.0, abs=1e-12)
    assert not t.masquerade
    assert t.capture and t.capture[-1].chain == "services"
    assert t.capture[-1].effect.startswith("goto service-")
    (sp,) = dp.services()
    assert sp.status == "ok" and len(sp.endpoints) == n
    assert all(p == pytest.approx(1 / n) for _, _, p in sp.endpoints)


def test_layouts_and_formats_agree(layout: str):
    svcs, slices = [service()], [eps(["10.244.1.5", "10.244.2.7", "10.244.3.9"])]
    by_packet: dict = {}
    for fmt in ("json", "text"):
        dp = dataplane(svcs, slices, fmt, layout)
        for pkt in (Packet(POD, CIP, 80), Packet("10.244.1.5", CIP, 80),
                    Packet("172.18.0.3", CIP, 80), Packet(NODE_IP, CIP, 80, from_host=True),
                    Packet(POD, CIP, 81), Packet(POD, "10.96.0.99", 80)):
            by_packet.setdefault(pkt, set()).add(answer(dp.trace(pkt, NODE_CTX)))
    assert all(len(v) == 1 for v in by_packet.values()), by_packet


def test_no_endpoints_rejects(fmt: str, layout: str):
    dp = dataplane([service()], [], fmt, layout)
    t = dp.trace(Packet(POD, CIP, 80), NODE_CTX)
    assert t.verdict == "reject" and not t.candidates
    assert t.service == "shop/web:http"
    assert t.findings[0].code == "NoEndpointsReject"
    assert "no-endpoint-services" in t.findings[0].evidence
    assert [s.chain for s in t.steps][-1] == "reject-chain"
    (sp,) = dp.services()
    assert sp.status == "no-endpoints" and sp.name == "shop/web:http"


def test_itp_local_without_local_endpoints_drops(fmt: str):
    svc = service(internalTrafficPolicy="Local")
    dp = dataplane([svc], [eps(["10.244.2.7"], nodes=["other"])], fmt)
    t = dp.trace(Packet(POD, CIP, 80), NODE_CTX)
    assert t.verdict == "drop"
    assert t.findings[0].code == "NoLocalEndpointsDrop"
    assert dp.services()[0].status == "no-local-endpoints"


def test_itp_local_uses_only_local_endpoints(fmt: str):
    svc = service(internalTrafficPolicy="Local")
    dp = dataplane([svc], [eps(["10.244.1.5", "10.244.2.7"], nodes=["node", "other"])], fmt)
    t = dp.trace(Packet(POD, CIP, 80), NODE_CTX)
    assert [(c.ip, c.probability) for c in t.candidates] == [("10.244.1.5", 1.0)]
    assert t.candidates[0].extra["dnatChain"].startswith("endpoint-")


def test_hairpin_masquerades_only_the_path_back_to_the_client(fmt: str):
    dp = dataplane([service()], [eps(["10.244.1.5", "10.244.1.6"])], fmt)
    t = dp.trace(Packet("10.244.1.5", CIP, 80), NODE_CTX)
    masq = {c.ip: (c.masquerade, c.snat_ip) for c in t.candidates}
    assert masq == {"10.244.1.5": (True, "10.244.1.1"), "10.244.1.6": (False, None)}
    assert any(f.code == "Hairpin" for f in t.findings)
    hair = next(c for c in t.candidates if c.ip == "10.244.1.5")
    assert hair.extra["masqueradeRule"].startswith("ip saddr 10.244.1.5 jump mark-for-masq")
    assert t.reverse[0]["conntrack"].endswith("src=10.244.1.5 dst=10.244.1.1 sport=8080 dport=*")


def test_off_cluster_client_is_masqueraded(fmt: str):
    dp = dataplane([service()], [eps(["10.244.1.5", "10.244.2.7"])], fmt)
    t = dp.trace(Packet("172.18.0.3", CIP, 80), NODE_CTX)
    assert t.verdict == "dnat" and all(c.masquerade and c.random_fully for c in t.candidates)
    assert {c.snat_ip for c in t.candidates} == {"10.244.1.1", NODE_IP}
    assert t.candidates[0].extra["masqueradeRule"].startswith("ip daddr 10.96.0.10 ip saddr !=")


def test_host_network_client_goes_through_output(fmt: str, layout: str):
    dp = dataplane([service()], [eps(["10.244.2.7"])], fmt, layout)
    t = dp.trace(Packet(NODE_IP, CIP, 80, from_host=True), NODE_CTX)
    assert t.verdict == "dnat" and t.candidates[0].masquerade
    chains = [s.chain for s in t.steps]
    assert "nat-output" in chains and "nat-prerouting" not in chains


def test_udp_and_protocol_mismatch(fmt: str):
    ports = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]
    dp = dataplane([service("dns", ports=ports)],
                   [eps(["10.244.2.7"], "dns", [{"name": "dns", "port": 53,
                                                 "protocol": "UDP"}])], fmt)
    t = dp.trace(Packet(POD, CIP, 53, "udp"), NODE_CTX)
    assert t.verdict == "dnat" and [(c.ip, c.port) for c in t.candidates] == [("10.244.2.7", 53)]
    assert "meta l4proto udp dnat to 10.244.2.7:53" in t.candidates[0].steps[-1].rule \
        or any("dnat to 10.244.2.7:53" in s.rule for s in t.candidates[0].steps)
    tcp = dp.trace(Packet(POD, CIP, 53, "tcp"), NODE_CTX)
    assert tcp.verdict == "reject"  # a ClusterIP on a port it does not serve


def test_two_ports(fmt: str):
    ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
             {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}]
    slice_ports = [{"name": "http", "port": 8080, "protocol": "TCP"},
                   {"name": "https", "port": 8443, "protocol": "TCP"}]
    dp = dataplane([service(ports=ports)], [eps(["10.244.2.7"], ports=slice_ports)], fmt)
    assert [(c.port, t.service) for t in (dp.trace(Packet(POD, CIP, p), NODE_CTX)
                                          for p in (80, 443)) for c in t.candidates] == [
        (8080, "shop/web:http"), (8443, "shop/web:https")]
    assert [(sp.name, sp.port) for sp in dp.services()] == [("shop/web:http", 80),
                                                            ("shop/web:https", 443)]


def test_affinity_first_random_then_sticky(fmt: str):
    svc = service(sessionAffinity="ClientIP")
    ips = ["10.244.1.5", "10.244.2.7"]
    dp = dataplane([svc], [eps(ips)], fmt)
    first = dp.trace(Packet(POD, CIP, 80), NODE_CTX)
    assert [c.probability for c in first.candidates] == [0.5, 0.5]
    assert all(c.sticky for c in first.candidates)
    assert any(f.code == "SessionAffinity" for f in first.findings)
    pinned = nft_affinity_set("shop/web:http", "tcp", "10.244.2.7:8080")
    later = dp.trace(Packet(POD, CIP, 80), NODE_CTX, affinity={pinned: {POD}})
    assert [(c.ip, c.probability) for c in later.candidates] == [("10.244.2.7", 1.0)]
    assert dp.services()[0].affinity_seconds == 10800


def test_undefined_port_rejects_and_unallocated_ip_drops(fmt: str, layout: str):
    dp = dataplane([service()], [eps(["10.244.2.7"])], fmt, layout)
    t = dp.trace(Packet(POD, CIP, 81), NODE_CTX)
    assert t.verdict == "reject" and t.steps[-1].chain == "cluster-ips-check"
    assert "Reject traffic to invalid ports of ClusterIPs" in t.steps[-1].rule
    t = dp.trace(Packet(POD, "10.96.0.99", 80), NODE_CTX)
    assert t.verdict == "drop" and "unallocated" in t.steps[-1].rule
    t = dp.trace(Packet(NODE_IP, CIP, 81, from_host=True), NODE_CTX)
    assert t.verdict == "reject"


def test_unrelated_address_is_no_match(fmt: str):
    dp = dataplane([service()], [eps(["10.244.2.7"])], fmt)
    t = dp.trace(Packet(POD, "192.168.7.7", 80), NODE_CTX)
    assert t.verdict == "no-match" and t.findings[0].code == "NoServiceRule"


def test_ipv6(fmt: str):
    svc = service(cip="fd00:10:96::10")
    dp = dataplane([svc], [eps(["fd00:10:244:1::5", "fd00:10:244:2::7"], family=6)], fmt,
                   family=6)
    t = dp.trace(Packet("fd00:10:244:1::64", "fd00:10:96::10", 80))
    assert t.verdict == "dnat" and t.packet.family == 6
    assert [(c.ip, c.probability) for c in t.candidates] == [("fd00:10:244:1::5", 0.5),
                                                             ("fd00:10:244:2::7", 0.5)]
    assert dp.cluster_cidrs() == ["fd00:10:244::/56"]
    assert t.candidates[0].extra["dnatChain"].startswith("endpoint-")
    assert "fd00.10.244.1..5" in t.candidates[0].extra["dnatChain"]


def test_cluster_cidrs_from_the_masquerade_rule(fmt: str):
    dp = dataplane([service()], [eps(["10.244.2.7"])], fmt)
    assert dp.cluster_cidrs() == ["10.244.0.0/16"]


def test_unknown_interfaces_are_undecided_not_assumed():
    text = listing(
        "add table ip kube-proxy\n"
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n"
        'add rule ip kube-proxy nat-prerouting iifname "eth9" drop\n'
        "add rule ip kube-proxy nat-prerouting jump services\n"
        "add chain ip kube-proxy services\n"
        "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : "
        "verdict ; }\n")
    (dp,) = NftablesDataplane.from_text(text)
    t = dp.trace(Packet(POD, CIP, 80))
    assert t.verdict == "no-match"
    (u,) = [f for f in t.findings if f.code == "UndecidedMatch"]
    assert "iifname" in u.message and "assumed no match" in u.message


# kube-proxy ≥1.36: no endpoint chains, DNAT through a numgen map, inline marking and a
# hairpin set read in masquerading (shapes from a real v1.36 node's `nft list table`).
V136 = """\
table ip kube-proxy {
\tset cluster-ips {
\t\ttype ipv4_addr
\t\telements = { 10.100.192.23 }
\t}

\tset hairpin-connections {
\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service
\t\telements = { 10.244.0.8 . 10.244.0.8 . tcp . 9898,
\t\t\t     10.244.0.10 . 10.244.0.10 . tcp . 9898 }
\t}

\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.100.192.23 . tcp . 80 : goto service-YVSKLJHA-lab/backend/tcp/http }
\t}

\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}

\tchain nat-postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump masquerading
\t}

\tchain services {
\t\tip daddr @cluster-ips ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000 \
comment "masquerade clusterIP traffic from outside cluster"
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t}

\tchain masquerading {
\t\tmeta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 masquerade \
fully-random
\t\tct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections \
masquerade fully-random
\t}

\tchain service-YVSKLJHA-lab/backend/tcp/http {
\t\tmeta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.244.0.10 . 9898, \
1 : 10.244.0.8 . 9898 }
\t}
}
"""


def test_v136_shapes():
    for dump in (V136, listing_json(V136)):
        (dp,) = NftablesDataplane.from_text(dump)
        t = dp.trace(Packet("10.244.0.9", "10.100.192.23", 80))
        assert answer(t) == ("dnat", "lab/backend:http", (
            ("10.244.0.10", 9898, 0.5, False, False), ("10.244.0.8", 9898, 0.5, False, False)))
        hair = dp.trace(Packet("10.244.0.8", "10.100.192.23", 80))
        assert {c.ip: c.masquerade for c in hair.candidates} == {"10.244.0.10": False,
                                                                 "10.244.0.8": True}
        off = dp.trace(Packet("172.18.0.3", "10.100.192.23", 80))
        assert all(c.masquerade for c in off.candidates)
        assert off.candidates[0].extra["masqueradeRule"].startswith("ip daddr @cluster-ips")
        assert dp.cluster_cidrs() == ["10.244.0.0/16"]
        (sp,) = dp.services()
        assert sp.endpoints == [("10.244.0.10", 9898, 0.5), ("10.244.0.8", 9898, 0.5)]


def test_cli_end_to_end(tmp_path):
    tx = expected_ruleset([service(), service("api", "10.96.0.11")],
                          [eps(["10.244.1.5", "10.244.2.7"])], NODE, CONFIG)
    text = listing(tx)
    (tmp_path / "ruleset.json").write_text(listing_json(text))
    (tmp_path / "ruleset.txt").write_text(text)
    runner = CliRunner()
    for name in ("ruleset.json", "ruleset.txt"):
        path = str(tmp_path / name)
        r = runner.invoke(main, ["trace", "--to", f"{CIP}:80", "--rules-file", path, "-o",
                                 "json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert doc["proxyMode"] == "nftables" and doc["verdict"] == "dnat"
        assert [d["probability"] for d in doc["dnat"]] == [0.5, 0.5]
        assert doc["service"] == "shop/web:http"
        r = runner.invoke(main, ["trace", "shop/api", "--rules-file", path])
        assert r.exit_code == 1 and "NoEndpointsReject" in r.output, r.output
        r = runner.invoke(main, ["rules", "--rules-file", path])
        assert r.exit_code == 0 and "10.244.1.5:8080 (50.0%)" in r.output, r.output
        assert "no-endpoints" in r.output
