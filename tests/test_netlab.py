"""Tests of the network-namespace lab (tests/netlab.py) on the real kernel.

They need root, iproute2, iptables (nft + legacy), nft and conntrack; elsewhere they skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netlab import (
    Lab,
    LabError,
    find_conntrack,
    kernel_lab,
    parse_conntrack,
    require_root_tools,
    sweep_stale_namespaces,
    tally,
)

TOOLS = ("iptables-nft-restore", "ip6tables-nft-restore", "iptables-legacy-restore", "nft",
         "conntrack")

CIP = "10.96.0.10"
CIP6 = "fd00:10:96::10"


def nat(*rules: str, chains: tuple[str, ...] = ()) -> str:
    """An iptables-restore *nat table with the built-in chains, extra chains and rules."""
    head = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]", *[f":{c} - [0:0]" for c in chains]]
    return "\n".join(["*nat", *head, *rules, "COMMIT", ""])


def dnat_rules(cip: str, port: int, target: str, proto: str = "tcp") -> tuple[str, ...]:
    """Hand-written ClusterIP DNAT in PREROUTING (pods, off-cluster) and OUTPUT (host net)."""
    match = f"-d {cip} -p {proto} -m {proto} --dport {port}"
    return (f"-A PREROUTING {match} -j DNAT --to-destination {target}",
            f"-A OUTPUT {match} -j DNAT --to-destination {target}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """One node, two dual-stack pods a (10.244.1.5) and b (10.244.1.6), servers on b."""
    with Lab() as lab_:
        lab_.add_pod("a", "10.244.1.5", ipv6=True)
        lab_.add_pod("b", "10.244.1.6", ipv6=True)
        lab_.serve("b", 8080, "tcp")
        lab_.serve("b", 8080, "udp")
        yield lab_


def peers(replies: list) -> set[str | None]:
    return {r.peer_ip for r in replies}


# --------------------------------------------------------------------------- basic plumbing

@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_pod_to_pod_both_ways_through_node(lab: Lab, proto: str) -> None:
    lab.serve("a", 8080, proto)
    for fam in (4, 6):
        ab = lab.request("a", lab.ip_of("b", fam), 8080, proto, count=3)
        ba = lab.request("b", lab.ip_of("a", fam), 8080, proto, count=3)
        assert tally(ab) == {"b": 3} and tally(ba) == {"a": 3}
        assert peers(ab) == {lab.ip_of("a", fam)} and peers(ba) == {lab.ip_of("b", fam)}
        # each request is a new flow with its own ephemeral port
        assert len({r.local_port for r in ab}) == 3
        assert [r.peer_port for r in ab] == [r.local_port for r in ab]
    # nothing listening: RST (TCP) / ICMP port unreachable (UDP) from the pod
    assert tally(lab.request("a", lab.ip_of("b"), 9999, proto, count=3)) == {"error:refused": 3}
    # pod -> pod really crosses the node: its conntrack sees the flow once a rule needs
    # conntrack in that namespace (an empty nat table is not enough)
    lab.load_iptables("*filter\n-A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n")
    lab.request("a", lab.ip_of("b"), 8080, proto)
    entries = find_conntrack(parse_conntrack(lab.conntrack(4, proto)),
                             src="10.244.1.5", dst="10.244.1.6", dport=8080)
    assert len(entries) == 1 and not entries[0]["dnat"] and not entries[0]["snat"]


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_dnat_keeps_client_ip_and_conntrack_shows_it(lab: Lab) -> None:
    lab.load_iptables(nat(*dnat_rules(CIP, 80, "10.244.1.6:8080"),
                          *dnat_rules(CIP, 53, "10.244.1.6:8080", "udp")))
    replies = lab.request("a", CIP, 80, count=5)
    assert tally(replies) == {"b": 5}
    assert peers(replies) == {"10.244.1.5"}
    assert [r.peer_port for r in replies] == [r.local_port for r in replies]
    udp = lab.request("a", CIP, 53, "udp", count=3)
    assert tally(udp) == {"b": 3} and peers(udp) == {"10.244.1.5"}

    entries = parse_conntrack(lab.conntrack(4, "tcp"))
    for r in replies:
        (e,) = find_conntrack(entries, src="10.244.1.5", dst=CIP, sport=r.local_port, dport=80)
        assert e["reply"] == {"src": "10.244.1.6", "dst": "10.244.1.5", "sport": 8080,
                              "dport": r.local_port}
        assert e["dnat"] and not e["snat"] and e["state"] == "TIME_WAIT"
    entries = parse_conntrack(lab.conntrack(4, "udp"))
    assert len(find_conntrack(entries, proto="udp", dst=CIP, dport=53,
                              reply_src="10.244.1.6", reply_sport=8080)) == 3
    lab.conntrack_flush()
    assert parse_conntrack(lab.conntrack()) == []


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_masquerade_source_is_egress_interface_address() -> None:
    with Lab(nodes=2) as lab:
        lab.add_pod("a", "10.244.1.5")
        lab.add_pod("b", "10.244.1.6")
        lab.add_pod("c", "10.244.2.7", node="node2")
        for p in ("b", "c"):
            lab.serve(p, 8080)
        lab.load_iptables(nat(*dnat_rules(CIP, 80, "10.244.1.6:8080"),
                              *dnat_rules(CIP, 81, "10.244.2.7:8080"),
                              "-A POSTROUTING -d 10.244.0.0/16 -j MASQUERADE"))
        # local endpoint: out the pod's veth, whose address is the node's pod gateway
        assert peers(lab.request("a", CIP, 80, count=2)) == {"10.244.1.1"}
        # endpoint on node2: out eth0, the node's uplink address
        remote = lab.request("a", CIP, 81, count=2)
        assert tally(remote) == {"c": 2} and peers(remote) == {"172.18.0.2"}
        (e, _) = find_conntrack(parse_conntrack(lab.conntrack()), dport=81)
        assert e["snat"] and e["reply"]["dst"] == "172.18.0.2"


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_hairpin_needs_masquerade(lab: Lab) -> None:
    lab.serve("a", 8080)
    lab.load_iptables(nat(*dnat_rules(CIP, 80, "10.244.1.5:8080")))
    # without SNAT the pod receives a packet from its own address and drops it (martian)
    assert tally(lab.request("a", CIP, 80, count=2, timeout=0.3)) == {"error:timeout": 2}
    lab.conntrack_flush()
    lab.load_iptables(nat(*dnat_rules(CIP, 80, "10.244.1.5:8080"),
                          "-A POSTROUTING -s 10.244.1.5 -d 10.244.1.5 -j MASQUERADE"))
    replies = lab.request("a", CIP, 80, count=3)
    assert tally(replies) == {"a": 3} and peers(replies) == {"10.244.1.1"}
    for e in find_conntrack(parse_conntrack(lab.conntrack()), dst=CIP, dport=80):
        assert e["reply"]["src"] == "10.244.1.5" and e["reply"]["dst"] == "10.244.1.1"


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_host_network_client_uses_nat_output(lab: Lab) -> None:
    # only PREROUTING: a host-network client is not translated
    lab.load_iptables(nat(dnat_rules(CIP, 80, "10.244.1.6:8080")[0]))
    assert lab.request("node", CIP, 80, timeout=0.3)[0].error in ("timeout", "unreachable")
    lab.load_iptables(nat(*dnat_rules(CIP, 80, "10.244.1.6:8080")))
    replies = lab.request("node", CIP, 80, count=2)
    # source chosen by the route to the service CIDR (eth0) before OUTPUT DNAT
    assert tally(replies) == {"b": 2} and peers(replies) == {"172.18.0.2"}
    assert {r.local_ip for r in replies} == {"172.18.0.2"}


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_reject_is_refused_and_unreachable() -> None:
    with Lab() as lab:
        lab.add_pod("a", "10.244.1.5", ipv6=True)
        rules = []
        for proto in ("tcp", "udp"):
            for chain in ("FORWARD", "OUTPUT"):
                rules.append(f"-A {chain} -d {CIP} -p {proto} -m {proto} --dport 80 -j REJECT")
                rules.append(f"-A {chain} -d {CIP} -p {proto} -m {proto} --dport 81 -j REJECT "
                             "--reject-with icmp-host-unreachable")
        lab.load_iptables("\n".join(["*filter", *rules, "COMMIT", ""]))
        lab.load_iptables("\n".join(["*filter", f"-A FORWARD -d {CIP6} -j REJECT",
                                     "COMMIT", ""]), family=6)
        for client in ("a", "node"):
            for proto in ("tcp", "udp"):
                assert tally(lab.request(client, CIP, 80, proto)) == {"error:refused": 1}
            assert tally(lab.request(client, CIP, 81)) == {"error:unreachable": 1}
        # UDP sockets ignore ICMP host-unreachable (non-fatal, no IP_RECVERR): a pod client
        # just times out; on the node the REJECT in OUTPUT makes send() fail with EPERM
        assert lab.request("a", CIP, 81, "udp", timeout=0.3)[0].error == "timeout"
        assert lab.request("node", CIP, 81, "udp", timeout=0.3)[0].error == "denied"
        for proto in ("tcp", "udp"):
            assert tally(lab.request("a", CIP6, 80, proto)) == {"error:refused": 1}
        # a TCP reset is "refused" too; a plain DROP times out
        lab.load_iptables("\n".join([
            "*filter", f"-A FORWARD -d {CIP} -p tcp --dport 80 -j REJECT --reject-with tcp-reset",
            f"-A FORWARD -d {CIP} -p tcp --dport 82 -j DROP", "COMMIT", ""]))
        assert lab.request("a", CIP, 80)[0].error == "refused"
        assert lab.request("a", CIP, 82, timeout=0.3)[0].error == "timeout"


# --------------------------------------------------------------------------- kube-proxy shapes

SVC = "KUBE-SVC-67NZLRHBNDSAWJRO"
SEP_A = "KUBE-SEP-34ZZ2QFGO32YYXXO"
SEP_C = "KUBE-SEP-DYSIX5QMVXZZP7LU"


def kube_proxy_nat(cip: str, a: str, c: str, cluster_cidr: str, family: int = 4) -> str:
    """A kube-proxy iptables-mode ruleset (reference §1.2/§1.3) for one ClusterIP, 2 endpoints."""
    def ep(ip: str) -> str:
        return f"[{ip}]:8080" if family == 6 else f"{ip}:8080"
    comment = '-m comment --comment "shop/web:http cluster IP"'
    return nat(
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        f"-A KUBE-SERVICES {comment} -m tcp -p tcp -d {cip} --dport 80 -j {SVC}",
        f"-A {SVC} {comment} -m tcp -p tcp -d {cip} --dport 80 ! -s {cluster_cidr} "
        "-j KUBE-MARK-MASQ",
        f'-A {SVC} -m comment --comment "shop/web:http -> {ep(a)}" -m statistic --mode random '
        f"--probability 0.5000000000 -j {SEP_A}",
        f'-A {SVC} -m comment --comment "shop/web:http -> {ep(c)}" -j {SEP_C}',
        f"-A {SEP_A} -m comment --comment shop/web:http -s {a} -j KUBE-MARK-MASQ",
        f"-A {SEP_A} -m comment --comment shop/web:http -m tcp -p tcp -j DNAT "
        f"--to-destination {ep(a)}",
        f"-A {SEP_C} -m comment --comment shop/web:http -s {c} -j KUBE-MARK-MASQ",
        f"-A {SEP_C} -m comment --comment shop/web:http -m tcp -p tcp -j DNAT "
        f"--to-destination {ep(c)}",
        chains=("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", SVC, SEP_A, SEP_C))


@pytest.fixture
def cluster() -> Iterator[Lab]:
    """Two nodes; endpoints a (node, 10.244.1.5) and c (node2, 10.244.2.7); client pod b."""
    with Lab(nodes=2) as lab_:
        lab_.add_pod("a", "10.244.1.5", ipv6=True)
        lab_.add_pod("b", "10.244.1.6", ipv6=True)
        lab_.add_pod("c", "10.244.2.7", ipv6=True, node="node2")
        lab_.add_external("ext", "172.18.0.3", ipv6=True)
        lab_.serve("a", 8080)
        lab_.serve("c", 8080)
        yield lab_


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_kube_proxy_iptables_ruleset(cluster: Lab, backend: str) -> None:
    lab = cluster
    lab.load_iptables(kube_proxy_nat(CIP, "10.244.1.5", "10.244.2.7", "10.244.0.0/16"),
                      backend=backend)
    saved = lab.iptables_save(backend=backend, table="nat")
    assert f"-A KUBE-SERVICES -d {CIP}/32 -p tcp" in saved and SEP_C in saved
    # pod client: not masqueraded, both endpoints reached
    pod = lab.request("b", CIP, 80, count=24)
    assert set(tally(pod)) == {"a", "c"} and peers(pod) == {"10.244.1.6"}
    # host-network and off-cluster clients: source not in the cluster CIDR -> masquerade,
    # to the egress interface's address (pod gateway for a, uplink address for c)
    expect = {"a": "10.244.1.1", "c": "172.18.0.2"}
    for client in ("node", "ext"):
        replies = lab.request(client, CIP, 80, count=24)
        assert set(tally(replies)) == {"a", "c"}
        assert all(r.peer_ip == expect[r.server] for r in replies)
    # hairpin: a reaching itself is masqueraded (SEP rule), a reaching c is not
    hair = lab.request("a", CIP, 80, count=24)
    assert set(tally(hair)) == {"a", "c"}
    assert all(r.peer_ip == {"a": "10.244.1.1", "c": "10.244.1.5"}[r.server] for r in hair)
    entries = find_conntrack(parse_conntrack(lab.conntrack(4, "tcp")), dst=CIP, dport=80)
    assert len(entries) == 4 * 24
    assert {e["reply"]["src"] for e in entries} == {"10.244.1.5", "10.244.2.7"}


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_kube_proxy_nftables_ruleset(cluster: Lab) -> None:
    lab = cluster
    svc = "service-KHN6ECMT-shop/web/tcp/http"
    ep_a = "endpoint-FDH7QP7U-shop/web/tcp/http__10.244.1.5/8080"
    ep_c = "endpoint-W7KABZCH-shop/web/tcp/http__10.244.2.7/8080"
    lab.load_nft(f"""
table ip kube-proxy {{
    comment "rules for kube-proxy"
    chain mark-for-masquerade {{
        meta mark set meta mark | 0x4000
    }}
    chain masquerading {{
        meta mark & 0x4000 == 0 return
        meta mark set meta mark ^ 0x4000
        masquerade fully-random
    }}
    chain {ep_a} {{
        ip saddr 10.244.1.5 jump mark-for-masquerade
        meta l4proto tcp dnat to 10.244.1.5:8080
    }}
    chain {ep_c} {{
        ip saddr 10.244.2.7 jump mark-for-masquerade
        meta l4proto tcp dnat to 10.244.2.7:8080
    }}
    chain {svc} {{
        ip daddr {CIP} ip saddr != 10.244.0.0/16 jump mark-for-masquerade
        numgen random mod 2 vmap {{ 0 : goto {ep_a}, 1 : goto {ep_c} }}
    }}
    map service-ips {{
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = {{ {CIP} . tcp . 80 : goto {svc} }}
    }}
    chain services {{
        ip daddr . meta l4proto . th dport vmap @service-ips
    }}
    chain nat-prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump services
    }}
    chain nat-output {{
        type nat hook output priority -100; policy accept;
        jump services
    }}
    chain nat-postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump masquerading
    }}
}}
""")
    assert ep_c in lab.nft_text() and '"nftables"' in lab.nft_json()
    pod = lab.request("b", CIP, 80, count=24)
    assert set(tally(pod)) == {"a", "c"} and peers(pod) == {"10.244.1.6"}
    ext = lab.request("ext", CIP, 80, count=24)
    assert all(r.peer_ip == {"a": "10.244.1.1", "c": "172.18.0.2"}[r.server] for r in ext)


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_ipv6_clusterip_masquerade_and_hairpin(cluster: Lab) -> None:
    lab = cluster
    lab.load_iptables(kube_proxy_nat(CIP6, "fd00:10:244:1::5", "fd00:10:244:2::7",
                                     "fd00:10:244::/56", family=6), family=6)
    pod = lab.request("b", CIP6, 80, count=24)
    assert set(tally(pod)) == {"a", "c"} and peers(pod) == {"fd00:10:244:1::6"}
    ext = lab.request("ext", CIP6, 80, count=24)
    want = {"a": "fd00:10:244:1::1", "c": "fd00:172:18::2"}
    assert set(tally(ext)) == {"a", "c"}
    assert all(r.peer_ip == want[r.server] for r in ext)
    hair = [r for r in lab.request("a", CIP6, 80, count=12) if r.server == "a"]
    assert hair and peers(hair) == {"fd00:10:244:1::1"}
    entries = parse_conntrack(lab.conntrack(6, "tcp"))
    assert len(find_conntrack(entries, family="ipv6", dst=CIP6, dport=80)) == 60
    assert not find_conntrack(parse_conntrack(lab.conntrack(4)), dst=CIP6)


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_fixed_source_port_udp_reuses_entry_tcp_does_not(cluster: Lab) -> None:
    lab = cluster
    lab.serve("a", 5353, "udp")
    lab.serve("c", 5353, "udp")
    lab.load_iptables(nat(
        f"-A PREROUTING -d {CIP} -p udp --dport 53 -m statistic --mode random --probability 0.5 "
        "-j DNAT --to-destination 10.244.1.5:5353",
        f"-A PREROUTING -d {CIP} -p udp --dport 53 -j DNAT --to-destination 10.244.2.7:5353",
        f"-A PREROUTING -d {CIP} -p tcp --dport 80 -m statistic --mode random --probability 0.5 "
        "-j DNAT --to-destination 10.244.1.5:8080",
        f"-A PREROUTING -d {CIP} -p tcp --dport 80 -j DNAT --to-destination 10.244.2.7:8080"))
    # (TCP from a fixed port is left out: whether a SYN that meets a TIME_WAIT entry is
    # NATed afresh depends on timing, so it made this test flaky on a loaded machine.)
    sticky = lab.request("b", CIP, 53, "udp", count=8, source_port=40053)
    assert len(tally(sticky)) == 1 and {r.local_port for r in sticky} == {40053}
    assert len(find_conntrack(parse_conntrack(lab.conntrack(4, "udp")), sport=40053)) == 1
    fresh = lab.request("b", CIP, 53, "udp", count=24)
    assert set(tally(fresh)) == {"a", "c"}


# --------------------------------------------------------------------------- lifecycle

@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_cleanup_on_exception_leaves_nothing() -> None:
    prefix = ""
    server_pid = 0
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(nodes=2) as lab:
            prefix = lab.prefix
            lab.add_pod("a", "10.244.1.5")
            lab.add_external("ext")
            server_pid = lab.serve("a", 8080).proc.pid
            assert len([n for n in _netns() if n.startswith(prefix)]) == 5
            raise RuntimeError("boom")
    assert prefix and not [n for n in _netns() if n.startswith(prefix)]
    assert not os.path.exists(f"/proc/{server_pid}")
    with pytest.raises(LabError):
        lab.run("node", "true")


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_stale_namespaces_are_swept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"kc-{dead.pid}-node"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Lab() as lab:
            assert stale not in _netns()
            assert lab.ns("node") == f"kc-{os.getpid()}-node"
            with pytest.raises(LabError, match="one Lab"):
                Lab().start()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
    assert sweep_stale_namespaces() == []


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------- no kernel needed

def test_parse_conntrack_formats() -> None:
    text = """\
tcp      6 86397 ESTABLISHED src=10.244.1.6 dst=10.96.0.10 sport=41234 dport=80 \
src=10.244.1.5 dst=10.244.1.1 sport=8080 dport=27013 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.6 dst=10.96.0.10 sport=40053 dport=53 [UNREPLIED] \
src=10.244.2.7 dst=10.244.1.6 sport=5353 dport=40053 mark=0 zone=3 use=1
ipv6     10 tcp      6 118 TIME_WAIT src=fd00:10:244:1::6 dst=fd00:10:96::10 sport=1 dport=80 \
src=fd00:10:244:1::5 dst=fd00:10:244:1::6 sport=8080 dport=1 [ASSURED] mark=16384 use=1
icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 \
code=0 id=7 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.
"""
    tcp, udp, tcp6, icmp = parse_conntrack(text)
    assert tcp["proto"] == "tcp" and tcp["state"] == "ESTABLISHED" and tcp["timeout"] == 86397
    assert tcp["original"] == {"src": "10.244.1.6", "dst": "10.96.0.10", "sport": 41234,
                               "dport": 80}
    assert tcp["reply"]["dport"] == 27013 and tcp["dnat"] and tcp["snat"]
    assert tcp["flags"] == ["ASSURED"] and tcp["family"] == "ipv4" and tcp["mark"] == 0
    assert udp["state"] is None and udp["flags"] == ["UNREPLIED"] and udp["zone"] == 3
    assert udp["reply"]["src"] == "10.244.2.7" and udp["dnat"] and not udp["snat"]
    assert tcp6["family"] == "ipv6" and tcp6["state"] == "TIME_WAIT" and tcp6["mark"] == 16384
    assert icmp["original"] == {"src": "10.0.0.1", "dst": "10.0.0.2", "type": 8, "code": 0,
                                "id": 7}
    assert icmp["reply"]["type"] == 0 and not icmp["dnat"]
    assert find_conntrack([tcp, udp, tcp6], proto="udp", reply_sport=5353) == [udp]


def test_require_root_tools_reports_missing_tool() -> None:
    reason = require_root_tools("no-such-tool-kc")
    assert reason is not None
    if os.geteuid() == 0:
        assert "no-such-tool-kc" in reason
