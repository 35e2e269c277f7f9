"""The ipvsadm and ipset parsers read exactly what the tools print (tests/data/ipvs/generate.py
says how each file was made: ipset and iptables output from the real tools, ipvsadm output
printed with ipvsadm 1.31's formats because this kernel has no IPVS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubectl_clusterip.ipvs.ipset import IpSet, looks_like_ipset, parse_ipset
from kubectl_clusterip.ipvs.parse import looks_like_ipvsadm, parse_ipvsadm
from kubectl_clusterip.model import ClusterIPError

DATA = Path(__file__).parent / "data" / "ipvs"


def read(name: str) -> str:
    return (DATA / name).read_text()


def shape(table):
    """What a prediction needs from a table, independent of the output form."""
    return [(vs.protocol, vs.ip, vs.port, vs.scheduler, vs.persistent, vs.sched_flags,
             [(rs.ip, rs.port, rs.forward, rs.weight) for rs in vs.real_servers])
            for vs in table.services]


def test_save_and_list_forms_give_the_same_table():
    saved, listed = parse_ipvsadm(read("ipvsadm-save.txt")), parse_ipvsadm(read("ipvsadm-Ln.txt"))
    assert shape(saved) == shape(listed)
    other_saved = shape(parse_ipvsadm(read("ipvsadm-other-save.txt")))
    other_listed = shape(parse_ipvsadm(read("ipvsadm-other-Ln.txt")))
    # `ipvsadm -S` writes -g for a real server the kernel forwards locally ("Local" in -L)
    assert other_listed[3][6][1] == ("172.18.0.2", 8080, "local", 0)
    assert other_saved[3][6][1] == ("172.18.0.2", 8080, "route", 0)
    assert other_saved[:3] == other_listed[:3]


def test_kube_proxy_table_protocols_families_persistence_weights():
    t = parse_ipvsadm(read("ipvsadm-save.txt"), "ipvsadm-save.txt")
    assert {vs.protocol for vs in t.services} == {"tcp", "udp", "sctp"}
    dns6 = t.lookup("udp", "fd00:10:96::a", 53)
    assert dns6 is not None and dns6.family == 6 and dns6.key == "UDP [fd00:10:96::a]:53"
    assert [rs.endpoint for rs in dns6.real_servers] == ["[fd00:10:244:1::3]:53",
                                                         "[fd00:10:244:2::4]:53"]
    assert t.lookup("udp", "fd00:10:96:0::a", 53) is dns6  # any IPv6 spelling
    cart = t.lookup("tcp", "10.96.33.3", 8080)
    assert cart is not None and cart.persistent == 10800 and cart.line.endswith("-p 10800")
    web = t.lookup("tcp", "10.96.120.7", 80)
    assert [(rs.endpoint, rs.weight) for rs in web.real_servers] == [
        ("10.244.1.5:8080", 1), ("10.244.2.7:8080", 1), ("10.244.3.9:8080", 0)]
    assert [rs.endpoint for rs in web.available] == ["10.244.1.5:8080", "10.244.2.7:8080"]
    assert t.lookup("tcp", "10.96.55.5", 8080).real_servers == ()
    assert t.lookup("sctp", "10.96.44.4", 9999).scheduler == "rr"
    assert t.lookup("tcp", "10.96.44.4", 9999) is None  # the protocol is part of the key
    assert "172.18.0.2" in t.addresses() and "fd00:10:96::a" in t.addresses()
    assert all(rs.active is None for vs in t.services for rs in vs.real_servers)


def test_listing_keeps_connection_counts_and_forwarding_names():
    t = parse_ipvsadm(read("ipvsadm-Ln.txt"))
    web = t.lookup("tcp", "10.96.120.7", 80)
    assert [(rs.active, rs.inactive) for rs in web.real_servers] == [(2, 14), (1, 12), (1, 3)]
    other = parse_ipvsadm(read("ipvsadm-other-Ln.txt"))
    mh = other.lookup("tcp", "10.96.79.9", 80)
    assert mh.scheduler == "mh" and mh.sched_flags == ("mh-port",)
    local = other.lookup("tcp", "10.96.80.10", 80).real_servers[1]
    assert (local.endpoint, local.forward, local.weight) == ("172.18.0.2:8080", "local", 0)
    wrr = other.lookup("tcp", "10.96.77.7", 80)
    assert [rs.weight for rs in wrr.real_servers] == [1, 2, 3]


def test_save_options_beyond_kube_proxy():
    text = ("-A -t 192.0.2.1:80 -s wlc -p -M 255.255.255.0 --pe sip -b sh-fallback,sh-port\n"
            "-a -t 192.0.2.1:80 -r 198.51.100.7 -g -w 5\n"
            "-a -t 192.0.2.1:80 -r 198.51.100.8:8080 -i -w 2\n"
            "-A -u 192.0.2.1:53 -s rr -o\n"
            "-A -f 5 -6 -s rr\n")
    t = parse_ipvsadm(text)
    vs = t.services[0]
    assert (vs.persistent, vs.netmask, vs.persistence_engine, vs.sched_flags) == (
        300, "255.255.255.0", "sip", ("sh-fallback", "sh-port"))
    assert [(rs.endpoint, rs.forward, rs.weight) for rs in vs.real_servers] == [
        ("198.51.100.7:80", "route", 5), ("198.51.100.8:8080", "tunnel", 2)]
    assert t.services[1].one_packet
    fw = t.services[2]
    assert (fw.fwmark, fw.family, fw.key) == (5, 6, "FWM 5 IPv6")


def test_single_service_listing_without_version_line():
    text = ("Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "TCP  10.0.0.1:443 rr persistent 10800\n"
            "  -> 192.168.0.1:6443             Masq    1      1          0         \n")
    assert looks_like_ipvsadm(text)
    vs = parse_ipvsadm(text).services[0]
    assert (vs.key, vs.persistent, vs.real_servers[0].endpoint) == (
        "TCP 10.0.0.1:443", 10800, "192.168.0.1:6443")


@pytest.mark.parametrize("text, message", [
    ("-A -t 10.0.0.1:80 -s rr\nbogus line\n", "dump:2: not ipvsadm-save output"),
    ("-a -t 10.0.0.1:80 -r 10.1.1.1:80 -m -w 1\n", "unknown virtual service"),
    ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.1.1:80 -m -w x\n", "bad weight"),
    ("-A -t 10.0.0.300:80 -s rr\n", "not an IP address: .10.0.0.300:80."),
    ("IPVS connection entries\npro expire state       source\n", "ipvsadm -Lnc"),
    ("IP Virtual Server version 1.2.1 (size=4096)\n"
     "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n",
     "--stats"),
    ("IP Virtual Server version 1.2.1 (size=4096)\nTCP  10.0.0.1:80 rr\n  -> nonsense\n",
     "not ipvsadm -Ln output"),
])
def test_bad_ipvsadm_input_is_one_clear_error(text, message):
    with pytest.raises(ClusterIPError, match=message.replace("(", r"\(")):
        parse_ipvsadm(text)


def test_ipset_save_and_list_give_the_same_sets():
    saved, listed = parse_ipset(read("ipset-save.txt")), parse_ipset(read("ipset-list.txt"))
    assert looks_like_ipset(read("ipset-save.txt")) and looks_like_ipset(read("ipset-list.txt"))
    assert set(saved) == set(listed)
    for name in saved:
        assert (saved[name].type, saved[name].family, set(saved[name].members)) == (
            listed[name].type, listed[name].family, set(listed[name].members)), name
    assert saved["KUBE-CLUSTER-IP"].type == "hash:ip,port" and saved["KUBE-CLUSTER-IP"].family == 4
    assert saved["KUBE-6-CLUSTER-IP"].family == 6
    assert saved["KUBE-NODE-PORT-TCP"].family is None
    assert saved["KUBE-NODE-PORT-TCP"].members == ("30080",)
    assert "10.244.1.5,tcp:8080,10.244.1.5" in saved["KUBE-LOOP-BACK"].members


def test_match_set_semantics():
    sets = parse_ipset(read("ipset-save.txt"))
    cluster, loop = sets["KUBE-CLUSTER-IP"], sets["KUBE-LOOP-BACK"]
    assert cluster.test(["dst", "dst"], "10.244.1.20", "10.96.0.10", 40000, 53, "udp") is True
    assert cluster.test(["dst", "dst"], "10.244.1.20", "10.96.0.10", 40000, 54, "udp") is False
    assert cluster.test(["dst", "dst"], "10.244.1.20", "10.96.44.4", 40000, 9999, "sctp") is True
    assert cluster.test(["src", "dst"], "10.96.0.1", "10.96.9.9", 40000, 443, "tcp") is True
    assert cluster.test(["dst"], "10.244.1.20", "10.96.0.10", 40000, 53, "udp") is False
    assert cluster.test(["dst", "dst"], "fd00::1", "fd00::2", 1, 53, "udp") is False  # family
    assert loop.test(["dst", "dst", "src"], "10.244.1.5", "10.244.1.5", 1, 8080, "tcp") is True
    assert loop.test(["dst", "dst", "src"], "10.244.1.6", "10.244.1.5", 1, 8080, "tcp") is False
    nodeport = sets["KUBE-NODE-PORT-TCP"]
    assert nodeport.test(["dst"], "1.2.3.4", "172.18.0.2", 1, 30080, "tcp") is True
    assert nodeport.test(["dst"], "1.2.3.4", "172.18.0.2", 1, 30081, "tcp") is False
    assert sets["KUBE-6-CLUSTER-IP"].test(["dst", "dst"], "fd00:10:244:1::20",
                                          "fd00:10:96:0:0::a", 1, 53, "tcp") is True


def test_net_sets_nomatch_comments_and_unmodelled_types():
    text = ('create SRC hash:ip,port,net family inet hashsize 1024 maxelem 65536\n'
            'add SRC 203.0.113.10,tcp:443,10.0.0.0/8\n'
            'add SRC 203.0.113.10,tcp:443,10.9.0.0/16 nomatch\n'
            'create CIP hash:ip,port family inet hashsize 1024 maxelem 65536 comment\n'
            'add CIP 10.96.0.1,tcp:443 comment "default/kubernetes:https"\n'
            'create MACS hash:mac hashsize 1024 maxelem 65536\n')
    sets = parse_ipset(text)
    src = sets["SRC"]
    assert src.test(["dst", "dst", "src"], "10.1.2.3", "203.0.113.10", 1, 443, "tcp") is True
    assert src.test(["dst", "dst", "src"], "10.9.2.3", "203.0.113.10", 1, 443, "tcp") is False
    assert dict(sets["CIP"].comments) == {"10.96.0.1,tcp:443": "default/kubernetes:https"}
    assert isinstance(sets["MACS"].test(["src"], "10.0.0.1", "10.0.0.2", 1, 1, "tcp"), str)


@pytest.mark.parametrize("text, message", [
    ("create A hash:ip,port family inet\nadd A 10.0.0.1\n", "does not fit type"),
    ("create A hash:ip family inet\nadd A not-an-ip\n", "unreadable member"),
    ("add A 10.0.0.1\n", "member of unknown set"),
    ("create A hash:ip\nsomething else\n", "not ipset save output"),
])
def test_bad_ipset_input_is_one_clear_error(text, message):
    with pytest.raises(ClusterIPError, match=message):
        parse_ipset(text, "ipset.txt")


def test_ipset_is_frozen_and_comparable():
    a = IpSet("A", "hash:ip", 4, ("10.0.0.1",))
    assert a == IpSet("A", "hash:ip", 4, ("10.0.0.1",))
    assert a.test(["dst"], "1.1.1.1", "10.0.0.1", 1, 1, "icmp") is True


def _names(text: str) -> str:
    """As `ipvsadm -L` (no -n) prints ports: getservbyport's names where it has one."""
    import re

    names = {"443": "https", "53": "domain", "80": "http", "8080": "http-alt"}
    return re.sub(r":(\d+)(?=\s)", lambda m: ":" + names.get(m.group(1), m.group(1)), text)


def test_listing_with_service_names_reads_like_the_numeric_one():
    numeric = read("ipvsadm-Ln.txt")
    named = _names(numeric)
    assert ":https " in named and ":domain " in named and ":http-alt " in named
    assert shape(parse_ipvsadm(named)) == shape(parse_ipvsadm(numeric))


def test_udp_names_resolve_for_udp():
    text = ("IP Virtual Server version 1.2.1 (size=4096)\n"
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "UDP  10.96.0.10:domain rr\n"
            "  -> 10.244.1.3:domain             Masq    1      0          0\n")
    vs = parse_ipvsadm(text).services[0]
    assert (vs.protocol, vs.port, vs.real_servers[0].port) == ("udp", 53, 53)


@pytest.mark.parametrize("line, message", [
    ("TCP  kubernetes.default.svc.cluster.local:https rr",
     "a host name, not an address .* run `ipvsadm -Ln`"),
    ("TCP  10.96.0.1:notaservice rr", "unknown tcp service name: '10.96.0.1:notaservice'"),
    ("TCP  10.96.0.1:70000 rr", "port out of range"),
    ("TCP  10.96.0.1:\u0664\u0664\u0663 rr", "unknown tcp service name"),
    ("TCP  10.96.0.1:443 bogus", "unknown IPVS scheduler 'bogus'"),
    ("TCP  10.96.0.1:443 rr\n  -> 10.244.1.3:443  Masq 70000 0 0", "bad weight .0-65535.: "
     "'70000'"),
    ("TCP  10.96.0.1:443 rr\n  -> 10.244.1.3:443  Masq -1 0 0", "bad weight"),
    ("FWM  99999999999 rr", "bad firewall mark"),
])
def test_listing_values_are_checked(line: str, message: str):
    text = "IP Virtual Server version 1.2.1 (size=4096)\n" + line + "\n"
    with pytest.raises(ClusterIPError, match=message) as e:
        parse_ipvsadm(text, "ipvs.txt")
    assert str(e.value).startswith(f"ipvs.txt:{1 + len(line.splitlines())}: ")


@pytest.mark.parametrize("text, message", [
    ("-A -t 10.0.0.1:80 -s nosuch\n", "unknown IPVS scheduler"),
    ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.1.1:80 -m -w 65536\n", "bad weight"),
    ("-A -t 10.0.0.1:65536 -s rr\n", "port out of range"),
    ("-A -f 4294967296 -s rr\n", "bad firewall mark"),
])
def test_save_values_are_checked(text: str, message: str):
    with pytest.raises(ClusterIPError, match=message):
        parse_ipvsadm(text)


LISTED_WITH_ELISION = """\
Name: KUBE-CLUSTER-IP
Type: hash:ip,port
Revision: 7
Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5ee0b1d5
Size in memory: 600
References: 3
Number of entries: 4
Members:
10.96.0.1,tcp:443

10.96.0.10,udp:53
"""


def test_ipset_list_with_elided_members_is_incomplete_not_wrong():
    s = parse_ipset(LISTED_WITH_ELISION)["KUBE-CLUSTER-IP"]
    assert s.members == ("10.96.0.1,tcp:443", "10.96.0.10,udp:53") and s.missing == 2
    assert s.test(["dst", "dst"], "10.244.0.5", "10.96.0.10", 1234, 53, "udp") is True
    unknown = s.test(["dst", "dst"], "10.244.0.5", "10.96.0.99", 1234, 80, "tcp")
    assert isinstance(unknown, str) and "lists 2 of its 4 members" in unknown
    full = parse_ipset(read("ipset-list.txt"))["KUBE-CLUSTER-IP"]
    assert full.missing == 0


@pytest.mark.parametrize("member", ["10.96.0.1,tcp:65536", "10.96.0.1,tcp:\u0664\u0664\u0663",
                                    "10.96.0.999,tcp:80"])
def test_ipset_member_values_are_checked(member: str):
    with pytest.raises(ClusterIPError, match="unreadable member"):
        parse_ipset(LISTED_WITH_ELISION.replace("10.96.0.1,tcp:443", member), "sets.txt")


def test_elisions_in_ipset_save_and_ipvsadm_listings_are_named():
    saved = parse_ipset(read("ipset-save.txt").replace(
        "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443", "...", 1))
    s = saved["KUBE-CLUSTER-IP"]
    assert s.cut and "is cut short" in str(
        s.test(["dst", "dst"], "10.244.0.5", "10.96.0.1", 1, 443, "tcp"))
    assert not saved["KUBE-LOOP-BACK"].cut
    lines = read("ipvsadm-Ln.txt").split("\n")
    lines[7] = "  ..."
    listed = "\n".join(lines)
    table = parse_ipvsadm(listed, "ipvs.txt")
    (note,) = table.notes
    assert note.startswith("line 8 elides lines after TCP 10.96.0.10:53")


@pytest.mark.parametrize("text, seen", [
    ("IP Virtual Server version 1.2.1 (size=4096)\nTCP  10.0.0.1:80 rr\nhello there\n"
     "TCP  10.0.0.2:80 rr\n", "dump:3: not ipvsadm -Ln output: 'hello there'; run `ipvsadm -Ln`"),
    ("-A -t 10.0.0.1:80 -s rr\nhello there\n",
     "dump:2: not ipvsadm-save output: 'hello there'; run `ipvsadm-save -n`"),
])
def test_unusable_ipvs_paste_says_what_was_seen_and_what_to_run(text: str, seen: str):
    with pytest.raises(ClusterIPError) as e:
        parse_ipvsadm(text)
    assert seen in str(e.value) and "\n" not in str(e.value)
