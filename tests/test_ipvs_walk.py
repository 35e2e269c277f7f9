"""IPVS mode end to end on dumps: iptables (real iptables-save output of kube-proxy's IPVS
rules), the ipsets (real `ipset save`/`ipset list`) and the IPVS table (ipvsadm 1.31 format;
this kernel has no IPVS, so the kernel's scheduling is not observed, only predicted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubectl_clusterip.cli import main
from kubectl_clusterip.dumps import build_dataplanes
from kubectl_clusterip.ipvs.dataplane import IpvsDataplane, build
from kubectl_clusterip.ipvs.walk import shares
from kubectl_clusterip.model import Packet

DATA = Path(__file__).parent / "data" / "ipvs"
POD = "10.244.1.20"  # a pod on this node (pod CIDR 10.244.1.0/24)
KUBE_SERVICES_MASQ = ("-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes "
                      "service cluster ip + port for masquerade purpose\" -m set --match-set "
                      "KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ")


def dump(name: str) -> list[tuple[str, str]]:
    return [(name, (DATA / name).read_text())]


def node(ipvs: str = "ipvsadm-save.txt", ipset: str | None = "ipset-save.txt",
         iptables: tuple[str, ...] = ("iptables-save.txt", "ip6tables-save.txt")
         ) -> dict[int, IpvsDataplane]:
    dps = build(dump(ipvs), [d for n in iptables for d in dump(n)],
                dump(ipset) if ipset else [])
    return {dp.family: dp for dp in dps}


@pytest.fixture(scope="module")
def v4() -> IpvsDataplane:
    return node()[4]


@pytest.fixture(scope="module")
def other() -> IpvsDataplane:
    return node("ipvsadm-other-save.txt")[4]


def cands(trace) -> list[tuple[str, float, bool]]:
    return [(c.endpoint, round(c.probability, 9), c.masquerade) for c in trace.candidates]


def codes(trace) -> list[str]:
    return [f.code for f in trace.findings]


def test_rr_gives_equal_shares_and_a_reply_path(v4):
    t = v4.trace(Packet(POD, "10.96.0.10", 53, "udp"))
    assert t.proxy_mode == "ipvs" and t.verdict == "dnat"
    assert cands(t) == [("10.244.1.3:53", 0.5, False), ("10.244.2.4:53", 0.5, False)]
    assert sum(c.probability for c in t.candidates) == pytest.approx(1.0)
    assert t.capture[-1].table == "ipvs" and t.capture[-1].rule == "-A -u 10.96.0.10:53 -s rr"
    ipvs_steps = [st for st in t.candidates[0].steps if st.table == "ipvs"]
    assert ipvs_steps[-1].rule == "-a -u 10.96.0.10:53 -r 10.244.1.3:53 -m -w 1"
    assert t.candidates[0].steps[-1].chain == "KUBE-POSTROUTING"  # then nat POSTROUTING
    assert t.candidates[0].extra["dnatChain"] == "UDP 10.96.0.10:53"
    assert t.reverse[0]["conntrack"] == ("udp 17 src=10.244.1.20 dst=10.96.0.10 sport=51234 "
                                         "dport=53 src=10.244.1.3 dst=10.244.1.20 sport=53 "
                                         "dport=51234")
    assert codes(t) == []  # every --match-set decided by the ipsets, nothing assumed
    assert t.extra["ipvs"]["sharesExact"] is True


def test_wrr_shares_follow_the_weights(other):
    t = other.trace(Packet(POD, "10.96.77.7", 80))
    assert cands(t) == [("10.244.1.31:80", pytest.approx(1 / 6), False),
                        ("10.244.2.32:80", pytest.approx(2 / 6), False),
                        ("10.244.3.33:80", pytest.approx(3 / 6), False)]
    assert sum(c.probability for c in t.candidates) == pytest.approx(1.0)
    assert [c.extra["weight"] for c in t.candidates] == [1, 2, 3]


def test_rr_ignores_weight_magnitudes_but_not_zero():
    """ipvsadm(8): rr distributes equally among available servers; weight 0 is quiescent."""
    vs = node("ipvsadm-other-save.txt")[4].table.lookup("tcp", "10.96.77.7", 80)
    from dataclasses import replace
    rr = replace(vs, scheduler="rr")
    assert [round(p, 9) for _, p in shares(rr)[0]] == [round(1 / 3, 9)] * 3


def test_a_draining_weight_zero_server_gets_no_new_connections(v4):
    t = v4.trace(Packet(POD, "10.96.120.7", 80))
    assert cands(t) == [("10.244.1.5:8080", 0.5, False), ("10.244.2.7:8080", 0.5, False)]
    assert "IpvsDrainingRealServer" in codes(t)
    drain = next(f for f in t.findings if f.code == "IpvsDrainingRealServer")
    assert "10.244.3.9:8080" in drain.message and drain.evidence.endswith("-w 0")
    web = next(sp for sp in v4.services() if sp.cluster_ip == "10.96.120.7")
    assert web.endpoints == [("10.244.1.5", 8080, 0.5), ("10.244.2.7", 8080, 0.5),
                             ("10.244.3.9", 8080, 0.0)]


def test_only_draining_servers_left_is_refused(other):
    t = other.trace(Packet(POD, "10.96.80.10", 80))
    assert t.verdict == "reject" and t.candidates == []
    assert codes(t) == ["NoEndpointsReject"]
    assert "weight 0" in t.findings[0].message


def test_persistence_first_connection_scheduled_later_sticky(v4):
    t = v4.trace(Packet(POD, "10.96.33.3", 8080))
    assert cands(t) == [("10.244.2.8:8080", 0.5, False), ("10.244.3.2:8080", 0.5, False)]
    assert all(c.sticky for c in t.candidates)
    aff = next(f for f in t.findings if f.code == "SessionAffinity")
    assert "persistent for 10800s" in aff.message and "scheduled by rr" in aff.message
    assert t.extra["ipvs"]["persistentSeconds"] == 10800
    assert next(sp for sp in v4.services() if sp.port == 8080 and sp.cluster_ip == "10.96.33.3"
                ).affinity_seconds == 10800


def test_no_real_servers_the_kernel_answers_port_unreachable(v4):
    t = v4.trace(Packet(POD, "10.96.55.5", 8080))
    assert t.verdict == "reject" and t.candidates == [] and t.reverse == []
    f = t.findings[0]
    assert (f.code, f.severity, f.step) == ("NoEndpointsReject", "error", "dnat")
    assert "has no real servers" in f.message and "ICMP port unreachable" in f.message
    assert f.evidence == "-A -t 10.96.55.5:8080 -s rr"
    assert next(sp for sp in v4.services() if sp.cluster_ip == "10.96.55.5").status == \
        "no-endpoints"


def test_ipv6_virtual_service_with_the_kube_6_sets():
    v6 = node()[6]
    t = v6.trace(Packet("fd00:10:244:1::20", "fd00:10:96::a", 53, "udp"))
    assert t.packet.family == 6 and t.verdict == "dnat"
    assert cands(t) == [("[fd00:10:244:1::3]:53", 0.5, False), ("[fd00:10:244:2::4]:53", 0.5,
                                                                 False)]
    assert codes(t) == []
    hair = v6.trace(Packet("fd00:10:244:1::3", "fd00:10:96::a", 53, "tcp"))
    assert cands(hair) == [("[fd00:10:244:1::3]:53", 0.5, True),
                           ("[fd00:10:244:2::4]:53", 0.5, False)]


def test_hairpin_is_masqueraded_by_kube_loop_back_for_the_local_endpoint_only(v4):
    t = v4.trace(Packet("10.244.1.5", "10.96.120.7", 80))
    assert cands(t) == [("10.244.1.5:8080", 0.5, True), ("10.244.2.7:8080", 0.5, False)]
    rule = t.candidates[0].extra["masqueradeRule"]
    assert "--match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE" in rule
    assert "Hairpin" in codes(t)
    assert "dst=<node-ip>" in t.reverse[0]["conntrack"]


def test_off_cluster_client_is_masqueraded(v4):
    t = v4.trace(Packet("172.18.0.3", "10.96.120.7", 80))
    assert cands(t) == [("10.244.1.5:8080", 0.5, True), ("10.244.2.7:8080", 0.5, True)]
    assert t.candidates[0].extra["masqueradeRule"] == KUBE_SERVICES_MASQ
    pod = v4.trace(Packet(POD, "10.96.120.7", 80))
    assert not pod.masquerade


def test_host_network_client_goes_through_nat_output_and_is_masqueraded(v4):
    t = v4.trace(Packet("172.18.0.2", "10.96.0.1", 443, from_host=True))
    assert t.capture[0].chain == "OUTPUT"
    assert cands(t) == [("172.18.0.10:6443", 1.0, True)]


def test_clusterip_is_local_so_other_ports_are_rejected_by_kube_ipvs_filter(v4):
    """KUBE-IPVS-FILTER (issue 72236): a VIP's ports that are no service are refused."""
    t = v4.trace(Packet(POD, "10.96.120.7", 81))
    assert t.verdict == "reject"
    assert "KUBE-IPVS-IPS dst -j REJECT" in t.findings[0].evidence


def test_state_dependent_schedulers_say_which_servers_are_possible(other):
    t = other.trace(Packet(POD, "10.96.78.8", 80))
    assert cands(t) == [("10.244.1.41:80", 0.5, False), ("10.244.2.42:80", 0.5, False)]
    f = next(f for f in t.findings if f.code == "IpvsSchedulerState")
    assert "least connections" in f.message and "10.244.1.41:80, 10.244.2.42:80" in f.message
    assert any("depends on live kernel state" in n for n in t.notes)
    assert t.extra["ipvs"]["sharesExact"] is False
    mh = other.trace(Packet(POD, "10.96.79.9", 80))
    assert "Maglev" in next(f for f in mh.findings if f.code == "IpvsSchedulerState").message
    assert mh.extra["ipvs"]["schedulerFlags"] == ["mh-port"]


def test_listing_form_and_ipset_list_give_the_same_answer(v4):
    alt = node("ipvsadm-Ln.txt", "ipset-list.txt")[4]
    for pkt in (Packet("10.244.1.5", "10.96.120.7", 80), Packet("172.18.0.3", "10.96.0.10", 53)):
        assert cands(alt.trace(pkt)) == cands(v4.trace(pkt))


def test_without_ipsets_the_set_matches_stay_undecided():
    bare = node(ipset=None)[4]
    t = bare.trace(Packet("10.244.1.5", "10.96.120.7", 80))
    assert t.verdict == "dnat" and "UndecidedMatch" in codes(t)
    assert any("ipset save" in n for n in t.notes)


def test_ipvs_table_alone_still_predicts_the_endpoints():
    only = node(ipset=None, iptables=())
    assert set(only) == {4, 6}
    t = only[4].trace(Packet(POD, "10.96.0.10", 53, "udp"))
    assert cands(t) == [("10.244.1.3:53", 0.5, False), ("10.244.2.4:53", 0.5, False)]


def test_services_view_names_ports_by_address_and_skips_nodeport_vs(v4):
    names = [(sp.name, sp.protocol) for sp in v4.services()]
    assert ("-/-:10.96.0.10:53", "udp") in names and ("-/-:10.96.44.4:9999", "sctp") in names
    assert not any("172.18.0.2" in n for n, _ in names)  # NodePort VS: not a ClusterIP
    sp = v4.services()[0]
    assert (sp.namespace, sp.service, sp.port_name, sp.chain) == (
        "-", "-", "10.96.0.10:53", "TCP 10.96.0.10:53")


def test_an_ipset_comment_names_the_port():
    sets = (DATA / "ipset-save.txt").read_text().replace(
        "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443",
        'add KUBE-CLUSTER-IP 10.96.0.1,tcp:443 comment "default/kubernetes:https"')
    dp = build(dump("ipvsadm-save.txt"), dump("iptables-save.txt"), [("s", sets)])[0]
    assert "default/kubernetes:https" in [sp.name for sp in dp.services()]
    assert dp.trace(Packet(POD, "10.96.0.1", 443)).service == "default/kubernetes:https"


def test_ipvs_takes_precedence_over_iptables_mode_for_the_same_node():
    dumps = [d for n in ("ipvsadm-save.txt", "iptables-save.txt", "ip6tables-save.txt",
                         "ipset-save.txt") for d in dump(n)]
    dps = build_dataplanes(dumps)
    assert sorted((dp.mode, dp.family) for dp in dps) == [("ipvs", 4), ("ipvs", 6)]


# -- the command line -----------------------------------------------------------------------

@pytest.fixture
def files(tmp_path: Path) -> Path:
    for src, dst in (("ipvsadm-save.txt", "ipvsadm.txt"), ("iptables-save.txt", "iptables.txt"),
                     ("ipset-save.txt", "ipset.txt"), ("ip6tables-save.txt", "ip6tables.txt")):
        shutil.copy(DATA / src, tmp_path / dst)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_cli_trace_dns_over_udp_as_json(files):
    r = run("trace", "--to", "10.96.0.10:53", "--protocol", "udp",
            "--rules-file", str(files / "ipvsadm.txt"), "--rules-file", str(files / "iptables.txt"),
            "--rules-file", str(files / "ipset.txt"), "-o", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["proxyMode"] == "ipvs" and doc["verdict"] == "dnat" and doc["family"] == "IPv4"
    assert [(d["ip"], d["port"], d["probability"], d["masquerade"]) for d in doc["dnat"]] == [
        ("10.244.1.3", 53, 0.5, False), ("10.244.2.4", 53, 0.5, False)]
    assert doc["masquerade"] is False
    assert [x["endpoint"] for x in doc["reverse"]] == ["10.244.1.3:53", "10.244.2.4:53"]
    assert doc["ipvs"]["virtualService"] == "UDP 10.96.0.10:53"
    assert doc["findings"] == []


def test_cli_no_real_servers_exits_1_and_says_why(files):
    r = run("trace", "--to", "10.96.55.5:8080", "--rules-file", str(files / "ipvsadm.txt"),
            "--rules-file", str(files / "iptables.txt"), "--rules-file", str(files / "ipset.txt"))
    assert r.exit_code == 1, r.output
    assert "NoEndpointsReject" in r.stdout and "ICMP port unreachable" in r.stdout


def test_cli_ipv6_virtual_service(files):
    r = run("trace", "--to", "[fd00:10:96::a]:53", "--protocol", "udp", "-o", "json",
            *(a for n in ("ipvsadm", "iptables", "ip6tables", "ipset")
              for a in ("--rules-file", str(files / f"{n}.txt"))))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["family"] == "IPv6" and doc["proxyMode"] == "ipvs"
    assert [d["ip"] for d in doc["dnat"]] == ["fd00:10:244:1::3", "fd00:10:244:2::4"]


def test_cli_rules_lists_the_virtual_services(files):
    r = run("rules", "--rules-file", str(files / "ipvsadm.txt"), "--rules-file",
            str(files / "iptables.txt"), "--rules-file", str(files / "ipset.txt"), "-o", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["proxyMode"] == "ipvs"
    web = next(i for i in doc["items"] if i["clusterIP"] == "10.96.120.7")
    assert [e["probability"] for e in web["endpoints"]] == [0.5, 0.5, 0.0]
