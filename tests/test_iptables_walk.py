"""The iptables packet walker over kube-proxy-shaped rules: odds, masquerade, verdicts."""

from __future__ import annotations

import pytest
from kube_objects import endpoint_slice, rules_for, service

from kubectl_clusterip.iptables.dataplane import IptablesDataplane
from kubectl_clusterip.model import Address, ClusterIPError, Node, Packet, Route

NODE = Node("node", (Address("172.18.0.2", 16, "eth0"), Address("10.244.1.1", 32, "veth1")),
            (Route("default", "eth0", None, "172.18.0.1"), Route("10.244.1.10", "veth1"),
             Route("10.244.2.0/24", "eth0", None, "172.18.0.4"),
             Route("172.18.0.0/16", "eth0", "172.18.0.2")))
WEB = service("web", "10.96.120.7", [("http", 80, "tcp", 8080)], namespace="shop")


def web(n: int, **kw: object) -> IptablesDataplane:
    eps = [(f"10.244.{1 + i % 2}.{10 + i}", "node" if i % 2 == 0 else "node2") for i in range(n)]
    slices = [endpoint_slice("web", eps, [("http", 8080, "tcp")], namespace="shop")] if n else []
    return IptablesDataplane.from_text(rules_for([WEB], slices, **kw), "test")


def pod(src: str = "10.244.1.99", dst: str = "10.96.120.7", port: int = 80, **kw) -> Packet:
    return Packet(src, dst, port, **kw)


@pytest.mark.parametrize("n", range(1, 13))
def test_each_endpoint_gets_one_nth(n):
    t = web(n).trace(pod(), NODE)
    assert t.verdict == "dnat" and len(t.candidates) == n
    assert sum(c.probability for c in t.candidates) == pytest.approx(1.0, abs=1e-12)
    for c in t.candidates:
        assert c.probability == pytest.approx(1 / n, abs=1e-9)
        assert c.port == 8080


def test_probabilities_as_the_kernel_prints_them():
    """iptables-save prints lround(p * 2^31) / 2^31 with 11 decimals (§1.6)."""
    text = rules_for([WEB], [endpoint_slice("web", [(f"10.244.1.{i}", "node") for i in
                                                    range(2, 5)], [("http", 8080, "tcp")],
                                            namespace="shop")])
    text = text.replace("0.3333333333", "0.33333333349").replace("0.5000000000",
                                                                 "0.50000000000")
    t = IptablesDataplane.from_text(text, "t").trace(pod(), NODE)
    assert [round(c.probability, 9) for c in t.candidates] == [0.333333333] * 3


def test_pod_client_is_not_masqueraded_and_reply_goes_back_to_it():
    t = web(2).trace(pod(), NODE)
    assert not t.masquerade
    assert t.service == "shop/web:http"
    assert t.reverse[0]["conntrack"] == (
        "tcp 6 src=10.244.1.99 dst=10.96.120.7 sport=51234 dport=80 "
        "src=10.244.1.10 dst=10.244.1.99 sport=8080 dport=51234")


def test_off_cluster_client_is_masqueraded_to_the_egress_address():
    t = web(2).trace(pod(src="172.18.0.9"), NODE)
    assert all(c.masquerade for c in t.candidates)
    snat = {c.ip: c.snat_ip for c in t.candidates}
    assert snat == {"10.244.1.10": "10.244.1.1", "10.244.2.11": "172.18.0.2"}
    assert "! -s 10.244.0.0/16" in t.candidates[0].extra["masqueradeRule"]
    assert t.reverse[0]["conntrack"].endswith("dst=10.244.1.1 sport=8080 dport=*")


def test_hairpin_client_is_masqueraded_only_toward_itself():
    t = web(2).trace(pod(src="10.244.1.10"), NODE)
    masq = {c.ip: c.masquerade for c in t.candidates}
    assert masq == {"10.244.1.10": True, "10.244.2.11": False}
    assert any(f.code == "Hairpin" for f in t.findings)


def test_host_network_client_enters_output_and_is_masqueraded():
    t = web(1).trace(pod(src="172.18.0.2", from_host=True), NODE)
    assert t.steps[0].chain == "OUTPUT"
    assert t.candidates[0].masquerade


def test_masquerade_all_and_no_detector():
    t = web(1, masquerade_all=True).trace(pod(), NODE)
    assert t.candidates[0].masquerade
    t = web(1, cluster_cidr="none").trace(pod(src="172.18.0.9"), NODE)
    assert not t.candidates[0].masquerade  # no detector: only hairpin is masqueraded


def test_no_endpoints_is_rejected_with_the_rule_as_evidence():
    t = web(0).trace(pod(), NODE)
    assert t.verdict == "reject" and not t.candidates
    f = next(f for f in t.findings if f.code == "NoEndpointsReject")
    assert '"shop/web:http has no endpoints"' in f.evidence and f.severity == "error"


def test_internal_traffic_policy_local_without_local_endpoint_drops():
    svc = service("web", "10.96.120.7", [("http", 80, "tcp", 8080)], "shop", itp="Local")
    sl = endpoint_slice("web", [("10.244.2.5", "node2")], [("http", 8080, "tcp")], "shop")
    t = IptablesDataplane.from_text(rules_for([svc], [sl]), "t").trace(pod(), NODE)
    assert t.verdict == "drop"
    assert t.findings[0].code == "NoLocalEndpointsDrop"


def test_wrong_port_or_protocol_is_not_captured():
    dp = web(2)
    assert dp.trace(pod(port=81), NODE).verdict == "no-match"
    t = dp.trace(pod(protocol="udp"), NODE)
    assert t.verdict == "no-match" and t.findings[0].code == "NoServiceRule"


def test_session_affinity_first_packet_random_then_sticky():
    svc = service("web", "10.96.120.7", [("http", 80, "tcp", 8080)], "shop", affinity=600)
    sl = endpoint_slice("web", [("10.244.1.10", "node"), ("10.244.1.11", "node")],
                        [("http", 8080, "tcp")], "shop")
    dp = IptablesDataplane.from_text(rules_for([svc], [sl]), "t")
    t = dp.trace(pod(), NODE)
    assert len(t.candidates) == 2 and all(c.sticky for c in t.candidates)
    assert any(f.code == "SessionAffinity" for f in t.findings)
    sep = t.candidates[1].extra["dnatChain"]
    pinned = dp.trace(pod(), NODE, recent={sep: {"10.244.1.99"}})
    assert [(c.ip, c.probability) for c in pinned.candidates] == [("10.244.1.11", 1.0)]
    assert dp.services()[0].affinity_seconds == 600


def test_services_view_reads_endpoints_and_statuses():
    empty = service("empty", "10.96.5.5", [("", 80, "tcp", 80)])
    dp = IptablesDataplane.from_text(rules_for([WEB, empty], [endpoint_slice(
        "web", [("10.244.1.10", "node"), ("10.244.1.11", "node")], [("http", 8080, "tcp")],
        "shop")]), "t")
    view = {sp.name: sp for sp in dp.services()}
    assert view["default/empty"].status == "no-endpoints"
    assert view["shop/web:http"].endpoints == [("10.244.1.10", 8080, 0.5),
                                               ("10.244.1.11", 8080, 0.5)]
    assert view["shop/web:http"].chain.startswith("KUBE-SVC-")


def _dump(nat: str, filt: str = "") -> IptablesDataplane:
    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            + filt + "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n"
            ":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" + nat + "COMMIT\n")
    return IptablesDataplane.from_text(text, "t")


def test_goto_return_and_builtin_policy():
    dp = _dump(":A - [0:0]\n:B - [0:0]\n"
               "-A PREROUTING -g A\n"
               "-A PREROUTING -j DNAT --to-destination 10.0.0.9:1\n"  # skipped: goto returns past
               "-A A -j B\n-A A -j DNAT --to-destination 10.0.0.2:80\n"
               "-A B -j RETURN\n-A B -j DNAT --to-destination 10.0.0.1:80\n",
               ":X - [0:0]\n")
    t = dp.trace(Packet("10.1.0.1", "10.96.0.1", 80), NODE)
    assert [c.endpoint for c in t.candidates] == ["10.0.0.2:80"]
    dp = _dump("", "").ruleset
    dp.table("filter").policies["FORWARD"] = "DROP"
    assert IptablesDataplane(dp).trace(Packet("10.1.0.1", "10.0.0.5", 80), NODE).verdict == "drop"


def test_statistic_without_final_catch_all_is_a_partial_dispatch():
    dp = _dump(":S - [0:0]\n-A PREROUTING -d 10.96.0.1/32 -j S\n"
               "-A S -m statistic --mode random --probability 0.25 -j DNAT --to-destination "
               "10.0.0.1:80\n")
    t = dp.trace(Packet("10.1.0.1", "10.96.0.1", 80), NODE)
    assert t.candidates[0].probability == 0.25
    assert any(f.code == "PartialDispatch" and "75.0%" in f.message for f in t.findings)


def test_undecidable_match_is_reported_not_assumed_silently():
    dp = _dump("-A PREROUTING -i cni0 -j DNAT --to-destination 10.0.0.1:80\n")
    t = dp.trace(Packet("10.1.0.1", "10.96.0.1", 80), NODE)
    assert t.verdict == "no-match"
    assert any(f.code == "UndecidedMatch" and "-i cni0" in f.message for f in t.findings)


@pytest.mark.parametrize("rules, shown", [
    (":L - [0:0]\n-A PREROUTING -j L\n-A L -j L\n", "PREROUTING -> L -> L"),
    (":L - [0:0]\n-A PREROUTING -j L\n-A L -g L\n", "PREROUTING -> L -> L"),  # -g self-loop
    (":A - [0:0]\n:B - [0:0]\n-A PREROUTING -g A\n-A A -g B\n-A B -g A\n",
     "PREROUTING -> A -> B -> A"),
    (":A - [0:0]\n:B - [0:0]\n-A PREROUTING -j A\n-A A -g B\n-A B -j A\n",
     "PREROUTING -> A -> B -> A"),
])
def test_rule_loops_are_a_hand_edited_dump(rules, shown):
    """The kernel refuses loops (jump or goto), so a dump with one was edited: say where."""
    dp = _dump(rules)
    with pytest.raises(ClusterIPError, match=r"t:\d+: nat chain \S+ (jumps|goes) back into "
                       rf"\S+ \({shown}\): the kernel refuses rule loops"):
        dp.trace(Packet("10.1.0.1", "10.96.0.1", 80), NODE)


def test_a_chain_met_twice_without_a_loop_is_walked_twice():
    dp = _dump(":M - [0:0]\n:A - [0:0]\n-A PREROUTING -j M\n-A PREROUTING -g A\n"
               "-A A -j M\n-A M -j MARK --set-xmark 0x1/0x0\n")
    t = dp.trace(Packet("10.1.0.1", "10.96.0.1", 80), NODE)
    assert [s.effect for s in t.steps] == ["jump M", "mark 0x1", "goto A", "jump M", "mark 0x0"]


def test_statistic_fan_out_is_bounded(monkeypatch):
    from kubectl_clusterip.iptables import walk

    monkeypatch.setattr(walk, "MAX_BRANCHES", 50)
    chains = "".join(f":S{i} - [0:0]\n" for i in range(3))
    rules = "-A PREROUTING -j S0\n" + "".join(
        f"-A S{i} -m statistic --mode random --probability 0.5 -j S{i + 1}\n" * 8
        for i in range(2))
    dp = _dump(chains + rules)
    with pytest.raises(ClusterIPError, match="more than 50 ways through the rules"):
        dp.trace(Packet("10.1.0.1", "10.96.0.1", 80), NODE)


def test_nodeport_needs_the_node_address():
    svc = service("np", "10.96.9.9", [("", 80, "tcp", 8080)])
    svc["spec"]["type"] = "NodePort"
    svc["spec"]["ports"][0]["nodePort"] = 30080
    sl = endpoint_slice("np", [("10.244.1.10", "node")], [("", 8080, "tcp")])
    dp = IptablesDataplane.from_text(rules_for([svc], [sl]), "t")
    t = dp.trace(Packet("172.18.0.9", "172.18.0.2", 30080), NODE)
    assert t.verdict == "dnat" and t.candidates[0].masquerade  # ETP Cluster masquerades
    unknown = dp.trace(Packet("172.18.0.9", "172.18.0.2", 30080), Node())
    assert unknown.verdict == "no-match"
    assert any(f.code == "UndecidedMatch" for f in unknown.findings)


OLD_KUBE_PROXY = """# Generated by iptables-save v1.6.1 on Mon Mar  2 10:00:00 2020
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m statistic --mode random --probability 0.33332999982 -j KUBE-SEP-AAAAAAAAAAAAAAAA
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SVC-TCOU7JCQXEZGVUNU -j KUBE-SEP-CCCCCCCCCCCCCCCC
-A KUBE-SEP-AAAAAAAAAAAAAAAA -s 10.244.0.2/32 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-AAAAAAAAAAAAAAAA -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 10.244.0.2:53
-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 10.244.0.3/32 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 10.244.0.3:53
-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.244.1.4/32 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-CCCCCCCCCCCCCCCC -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 10.244.1.4:53
-A KUBE-SERVICES -d 10.96.33.1/32 -p tcp -m comment --comment "default/nginx: cluster IP" -m tcp --dport 80 -j KUBE-SVC-OLDNGINXAAAAAAAA
COMMIT
"""


def test_old_kube_proxy_shapes():
    """≈v1.17: masquerade rule in KUBE-SERVICES, 5-decimal odds, `ns/name:` for unnamed ports."""
    dp = IptablesDataplane.from_text(OLD_KUBE_PROXY, "old")
    t = dp.trace(Packet("172.18.0.9", "10.96.0.10", 53, "udp"), NODE)
    odds = [c.probability for c in t.candidates]
    assert odds == pytest.approx([0.33332999982, 0.33333500009, 0.33333500009], abs=1e-9)
    assert sum(odds) == pytest.approx(1.0)
    assert all(c.masquerade for c in t.candidates)  # off-cluster source, marked in KUBE-SERVICES
    assert not dp.trace(Packet("10.244.1.9", "10.96.0.10", 53, "udp"), NODE).masquerade
    assert dp.cluster_cidrs() == ["10.244.0.0/16"]
    assert [sp.name for sp in dp.services()] == ["default/nginx", "kube-system/kube-dns:dns"]


def test_walk_budget_is_bounded(monkeypatch):
    from kubectl_clusterip.iptables import walk

    monkeypatch.setattr(walk, "MAX_RULES_PER_WALK", 5)
    dp = _dump("-A PREROUTING -p udp -j ACCEPT\n" * 10)
    t = dp.trace(Packet("10.1.0.1", "10.96.0.1", 80), NODE)
    assert any("stopped after 5 rules" in n for n in t.notes)
