"""Every shape of pasted iptables rules traces like the iptables-save of the same rules.

The files in tests/data/iptables-shapes/ are what iptables 1.8.9 (nf_tables) printed for one
set of kube-proxy rules loaded into a network namespace (`iptables-save`, `iptables -S`,
`iptables -t nat -S`, `iptables -L -n …`); tests/test_kernel_pastes.py repeats this against
the live kernel for every kernel scenario.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kubectl_clusterip.cli import main
from kubectl_clusterip.dumps import build_dataplanes, classify
from kubectl_clusterip.iptables.listing import rule_spec
from kubectl_clusterip.iptables.shapes import infer_table, read_rulesets
from kubectl_clusterip.model import ClusterIPError, Packet

DATA = Path(__file__).parent / "data" / "iptables-shapes"
SAVE = (DATA / "iptables-save.txt").read_text()
NAT_S = (DATA / "iptables-t-nat-S.txt").read_text()
FILTER_S = (DATA / "iptables-S.txt").read_text()
NAT_L = (DATA / "iptables-t-nat-L-n-v.txt").read_text()
NAT_LX = (DATA / "iptables-t-nat-L-n-v-x-line-numbers.txt").read_text()
FILTER_L = (DATA / "iptables-L-n-line-numbers.txt").read_text()
WEB, EMPTY, STICKY = "10.96.0.20", "10.96.0.21", "10.96.0.24"
CLIENT, OFF_CLUSTER = "10.244.1.5", "172.18.0.9"


def outcome(dumps: list[tuple[str, str]], ip: str = WEB, src: str = CLIENT,
            port: int = 80) -> tuple:
    """What must not depend on the shape: verdict, endpoints with odds and masquerade."""
    (dp,) = build_dataplanes(dumps)
    t = dp.trace(Packet(src, ip, port))
    return (t.verdict, t.service,
            [(c.ip, c.port, round(c.probability, 9), c.masquerade) for c in t.candidates])


def codes(dumps: list[tuple[str, str]], ip: str = WEB) -> list[str]:
    (dp,) = build_dataplanes(dumps)
    return [f.code for f in dp.trace(Packet(CLIENT, ip, 80)).findings]


SHAPES = {
    "iptables -S, one file per table": [("nat.txt", NAT_S), ("filter.txt", FILTER_S)],
    "iptables -S, both tables in one file": [("s.txt", FILTER_S + NAT_S)],
    "iptables -L -n -v": [("nat.txt", NAT_L), ("filter.txt", FILTER_L)],
    "iptables -L -n -v -x --line-numbers": [("nat.txt", NAT_LX), ("filter.txt", FILTER_L)],
    "iptables -L, both tables in one file": [("l.txt", FILTER_L + "\n" + NAT_L)],
    "iptables-save, tables in two files": [
        ("filter.txt", SAVE[: SAVE.index("# Generated", 10)]),
        ("nat.txt", SAVE[SAVE.index("# Generated", 10):])],
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ip, src", [(WEB, CLIENT), (WEB, OFF_CLUSTER), (EMPTY, CLIENT),
                                     (STICKY, CLIENT), (WEB, "10.244.1.6")])
def test_each_shape_traces_like_iptables_save(shape, ip, src):
    assert outcome(SHAPES[shape], ip, src) == outcome([("save.txt", SAVE)], ip, src)


@pytest.mark.parametrize("listing", [NAT_L, NAT_LX], ids=["-L -n -v", "-L -n -v -x --line-numbers"])
def test_a_listing_becomes_the_very_lines_iptables_save_prints(listing):
    save = read_rulesets([("save", SAVE)])[0].tables["nat"]
    listed = read_rulesets([("l", listing)])[0].tables["nat"]
    assert dict(listed.lines.items()) == save.lines and listed.policies == save.policies


def test_minus_s_becomes_the_very_lines_iptables_save_prints():
    (save,) = read_rulesets([("save", SAVE)])
    (spec,) = read_rulesets([("n", NAT_S), ("f", FILTER_S)])
    for name in ("nat", "filter"):
        assert spec.tables[name].lines == save.tables[name].lines
        assert spec.tables[name].policies == save.tables[name].policies


def test_the_table_comes_from_the_command_when_the_paste_shows_it():
    dumps = [("nat.txt", "$ sudo iptables -t nat -S\n" + NAT_S),
             ("filter.txt", "[root@node ~]# iptables -S\n" + FILTER_S)]
    assert outcome(dumps) == outcome([("save", SAVE)])
    assert "PasteAssumption" not in codes(dumps)  # nothing was inferred


def test_an_inferred_table_is_said():
    (dp,) = build_dataplanes([("nat.txt", NAT_S)])
    found = [f for f in dp.trace(Packet(CLIENT, WEB, 80)).findings if f.code == "PasteAssumption"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert "table nat inferred from the chain policies" in found[0].message


@pytest.mark.parametrize("chain, line, table", [
    ("KUBE-SVC-X", "-A KUBE-SVC-X -j KUBE-SEP-Y", "nat"),
    ("KUBE-SEP-Y", "-A KUBE-SEP-Y -p tcp -m tcp -j DNAT --to-destination 1.2.3.4:80", "nat"),
    ("KUBE-SERVICES", "-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-X", "nat"),
    ("KUBE-SERVICES", "-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -j REJECT", "filter"),
    ("OUTPUT", "-A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES", "filter"),
    ("OUTPUT", '-A OUTPUT -m comment --comment "x" -j KUBE-SERVICES', "nat"),
    ("KUBE-FORWARD", "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP", "filter"),
    ("FORWARD", "-A FORWARD -j KUBE-FIREWALL", "filter"),
    ("KUBE-POSTROUTING", "-A KUBE-POSTROUTING -j MASQUERADE", "nat"),
    ("KUBE-MARK-DROP", "-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000", "nat"),
])
def test_tables_are_inferred_where_kube_proxy_writes_such_rules(chain, line, table):
    assert infer_table(chain, line) == table


# -- fragments --------------------------------------------------------------------------------

GREP_WEB = "\n".join(ln for ln in SAVE.splitlines() if "shop/web" in ln) + "\n"


def test_a_grep_of_one_service_is_traced_with_each_assumption_named():
    dumps = [("grep.txt", "$ iptables-save | grep shop/web\n" + GREP_WEB)]
    assert outcome(dumps) == outcome([("save", SAVE)])
    assert outcome(dumps, src=OFF_CLUSTER) == outcome([("save", SAVE)], src=OFF_CLUSTER)
    (dp,) = build_dataplanes(dumps)
    messages = [f.message for f in dp.trace(Packet(CLIENT, WEB, 80)).findings
                if f.code == "PasteAssumption"]
    assert any("carry no table" in m for m in messages)
    for what in ("nat PREROUTING", "nat OUTPUT", "nat KUBE-MARK-MASQ", "nat KUBE-POSTROUTING",
                 "nat POSTROUTING"):
        assert sum(f"has no {what} rules" in m for m in messages) == 1, what


def test_a_fragment_without_the_chains_it_jumps_to_says_so():
    frag = "\n".join(ln for ln in GREP_WEB.splitlines() if "KUBE-SEP-" not in ln.split()[1])
    (dp,) = build_dataplanes([("frag.txt", frag)])
    t = dp.trace(Packet(CLIENT, WEB, 80))
    assert any("not in the paste (KUBE-SEP-" in f.message for f in t.findings)


def test_a_filter_only_paste_with_reject_rules_is_kube_proxys():
    (dp,) = build_dataplanes([("f.txt", FILTER_S)])
    assert dp.has_kube_proxy()
    assert outcome([("f.txt", FILTER_S)], EMPTY) == ("reject", "shop/empty:http", [])
    t = dp.trace(Packet(CLIENT, WEB, 80))
    (why,) = [f for f in t.findings if f.code == "KubeProxyChainsUnreachable"]
    assert "no nat table" in why.message and "iptables -t nat -S" in why.hint


def test_kube_proxy_chains_that_nothing_jumps_into():
    """A whole dump whose base-chain jumps were flushed: not 'no rule captures the address'."""
    flushed = "\n".join(ln for ln in SAVE.splitlines()
                        if not ln.startswith("-A PREROUTING"))
    (dp,) = build_dataplanes([("flushed.txt", flushed)])
    t = dp.trace(Packet(CLIENT, WEB, 80))
    assert t.verdict == "no-match"
    found = [f.code for f in t.findings]
    assert "KubeProxyChainsUnreachable" in found and "NoServiceRule" not in found
    (why,) = [f for f in t.findings if f.code == "KubeProxyChainsUnreachable"]
    assert "nat PREROUTING has no rule jumping to KUBE-SERVICES" in why.message
    host = dp.trace(Packet("172.18.0.2", WEB, 80, from_host=True))
    assert host.verdict == "dnat"  # OUTPUT still jumps: a host client is served
    unknown = dp.trace(Packet(CLIENT, "10.96.9.9", 80))
    assert "KubeProxyChainsUnreachable" in [f.code for f in unknown.findings]
    whole = build_dataplanes([("save", SAVE)])[0].trace(Packet(CLIENT, "10.96.9.9", 80))
    assert "NoServiceRule" in [f.code for f in whole.findings]


# -- pasted noise -----------------------------------------------------------------------------

NOISY = {
    "markdown fences and prose": ("Here is what I get on the node:\n\n```\n" + SAVE
                                  + "```\n\nAny idea why?\n"),
    "fence with a language and a prompt inside": ("```console\nroot@node-1:~# iptables-save\n"
                                                   + SAVE + "```\n"),
    "CRLF and trailing blanks": SAVE.replace("\n", "  \r\n") + "\r\n\r\n",
    "busybox prompt": "/ # iptables-save\n" + SAVE + "/ # \n",
    "two dumps, one file": SAVE.replace("# Generated", "$ sudo iptables-save\n# Generated", 1),
}


@pytest.mark.parametrize("noise", NOISY)
def test_noise_around_a_dump_changes_nothing(noise):
    assert outcome([("paste.txt", NOISY[noise])]) == outcome([("save", SAVE)])


def test_an_elided_paste_is_traced_and_the_elision_named():
    lines = SAVE.splitlines()
    cut = [ln for ln in lines if "KUBE-SEP-U476" not in ln or ln.startswith(":")]
    at = next(i for i, ln in enumerate(cut) if ln.startswith("-A KUBE-SERVICES"))
    cut.insert(at, "...")
    dumps = [("cut.txt", "\n".join(cut) + "\n")]
    assert outcome(dumps) == outcome([("save", SAVE)])
    (dp,) = build_dataplanes(dumps)
    msgs = [f.message for f in dp.trace(Packet(CLIENT, WEB, 80)).findings]
    assert any(f"elided (`...` at line {at + 1})" in m for m in msgs)


def test_lines_a_browser_wrapped_are_joined():
    wrapped = NAT_S.replace(' -m comment --comment "shop/web:http cluster IP" -m tcp',
                            '\n-m comment --comment "shop/web:http cluster IP"\n-m tcp')
    assert outcome([("n", wrapped), ("f", FILTER_S)]) == outcome([("save", SAVE)])


def test_iptables_and_ip6tables_save_in_one_file_are_two_families():
    v6 = ("# Generated by ip6tables-save v1.8.9 (nf_tables)\n*nat\n:PREROUTING ACCEPT [0:0]\n"
          ":KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n")
    dps = build_dataplanes([("both.txt", SAVE + v6)])
    assert [dp.family for dp in dps] == [4, 6]


def test_a_mixed_paste_is_split_by_format():
    ipvs = ("$ ipvsadm -Ln\nIP Virtual Server version 1.2.1 (size=4096)\n"
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "TCP  10.96.0.1:443 rr\n  -> 172.18.0.2:6443             Masq    1      0          0\n")
    by_format = classify([("node.txt", "$ iptables-save\n" + SAVE + ipvs)])
    assert sorted(by_format) == ["iptables", "ipvsadm"]


# -- iptables -L as older releases print it ---------------------------------------------------

# iptables 1.6 (legacy): protocol names, and without -n: "anywhere" and service names.
OLD_LISTING = """\
Chain KUBE-SERVICES (2 references)
target     prot opt source               destination
KUBE-MARK-MASQ  tcp  -- !10.244.0.0/16        10.96.0.1            /* default/kubernetes:https cluster IP */ tcp dpt:https
KUBE-SVC-NPX46M4PTMTKRN6Y  tcp  --  anywhere             10.96.0.1            /* default/kubernetes:https cluster IP */ tcp dpt:https
KUBE-NODEPORTS  all  --  anywhere             anywhere             /* kubernetes service nodeports; NOTE: this must be the last rule in this chain */ ADDRTYPE match dst-type LOCAL

Chain KUBE-SVC-NPX46M4PTMTKRN6Y (1 references)
target     prot opt source               destination
KUBE-SEP-A  all  --  anywhere             anywhere             /* default/kubernetes:https */ statistic mode random probability 0.50000000000
KUBE-SEP-B  all  --  anywhere             anywhere             /* default/kubernetes:https */

Chain KUBE-SEP-A (1 references)
target     prot opt source               destination
KUBE-MARK-MASQ  all  --  172.18.0.2           anywhere             /* default/kubernetes:https */
DNAT       tcp  --  anywhere             anywhere             /* default/kubernetes:https */ tcp to:172.18.0.2:6443

Chain KUBE-SEP-B (1 references)
target     prot opt source               destination
KUBE-MARK-MASQ  all  --  172.18.0.3           anywhere             /* default/kubernetes:https */
DNAT       tcp  --  anywhere             anywhere             /* default/kubernetes:https */ tcp to:172.18.0.3:6443

Chain KUBE-MARK-MASQ (4 references)
target     prot opt source               destination
MARK       all  --  anywhere             anywhere             MARK or 0x4000
"""


def test_an_old_listing_without_n_traces():
    dumps = [("l.txt", "# iptables -t nat -L\n" + OLD_LISTING)]
    assert outcome(dumps, "10.96.0.1", port=443) == (
        "dnat", "default/kubernetes:https",
        [("172.18.0.2", 6443, 0.5, False), ("172.18.0.3", 6443, 0.5, False)])
    assert outcome(dumps, "10.96.0.1", OFF_CLUSTER, 443)[2][0][3] is True  # masqueraded


@pytest.mark.parametrize("row, spec", [
    ("    0     0            all  --  *      *       0.0.0.0/0            0.0.0.0/0",
     "-A C"),  # a rule without target only counts
    ("    5   300 ACCEPT     tcp  --  eth0   !lo     10.0.0.0/8           0.0.0.0/0            "
     "tcp spt:!1024:2048 flags:0x17/0x02 ctstate NEW,ESTABLISHED",
     "-A C -s 10.0.0.0/8 -i eth0 ! -o lo -p tcp -m tcp ! --sport 1024:2048 "
     "--tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT"),
    ("    0     0 KUBE-SEP-X  0    --  *      *       0.0.0.0/0            0.0.0.0/0            "
     "/* ns/a:p -> 10.1.1.1:80 */ recent: CHECK seconds: 10800 reap name: KUBE-SEP-X side: "
     "source mask: 255.255.255.255",
     '-A C -m comment --comment "ns/a:p -> 10.1.1.1:80" -m recent --rcheck --seconds 10800 '
     "--reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource -j KUBE-SEP-X"),
    ("    0     0 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            "
     "mark match 0x8000/0x8000",
     "-A C -m mark --mark 0x8000/0x8000 -j DROP"),
    ("    0     0 MARK       0    --  *      *       0.0.0.0/0            0.0.0.0/0            "
     "MARK and 0xffffbfff", "-A C -j MARK --set-xmark 0x0/0x4000"),
    ("    0     0 REJECT     17   --  *      *       0.0.0.0/0            10.96.0.10           "
     "/* kube-system/kube-dns:dns has no endpoints */ udp dpt:53 reject-with "
     "icmp-port-unreachable",
     '-A C -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns has no '
     'endpoints" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable'),
    ("    0     0 KUBE-SVC-Y  6    --  *      *       0.0.0.0/0            fd00:10:96::1        "
     "multiport dports 80,https match-set KUBE-CLUSTER-IP dst,dst",
     "-A C -d fd00:10:96::1/128 -p tcp -m multiport --dports 80,443 -m set --match-set "
     "KUBE-CLUSTER-IP dst,dst -j KUBE-SVC-Y"),
    ("    0     0 MASQUERADE  0    --  *      *       0.0.0.0/0            0.0.0.0/0            "
     "mysterious-match 42",
     '-A C -m listing --text "mysterious-match 42" -j MASQUERADE'),
])
def test_listing_rows_as_save_specs(row, spec):
    cols = " pkts bytes target     prot opt in     out     source     destination".split()
    assert rule_spec("C", row, cols, 4) == spec


# -- unusable pastes and bad values -----------------------------------------------------------


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("text, message", [
    ("$ iptables -L\nsudo: iptables: command not found\n",
     "paste.txt:2: not a recognised rule dump: 'sudo: iptables: command not found'; run "
     "`iptables-save`"),
    ("Chain INPUT (policy ACCEPT)\ntarget     prot opt source destination\n"
     "ACCEPT     all  --  somehost.example      anywhere\n",
     "paste.txt:3: no source and destination columns in 'ACCEPT     all  --  somehost.example"),
    ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n"
     "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 70000 -j ACCEPT\nCOMMIT\n",
     "paste.txt:5: --dport '70000': not a port from 0 to 65535"),
    ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:S - [0:0]\n"
     "-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -d 10.96.0.1/32 -j S\n"
     "-A S -m statistic --mode random --probability 1.5 -j ACCEPT\nCOMMIT\n",
     "paste.txt:7: --probability '1.5': a probability must be above 0 and at most 1"),
    ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n"
     "-A KUBE-SERVICES -d 10.96.0.1/32 -j DNAT --to-destination 10.1.1.300:80\nCOMMIT\n",
     "paste.txt:5: --to-destination '10.1.1.300:80': not an IP address"),
    ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n"
     "-A KUBE-SERVICES -d 10.96.0.1/32 -j DNAT --to-destinationip6 10.1.1.3:80\nCOMMIT\n",
     "paste.txt:5: DNAT without --to-destination (iptables requires one)"),  # found by fuzzing
    ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n"
     "-A KUBE-SERVICES -d 10.96.0.0/99 -j ACCEPT\nCOMMIT\n",
     "paste.txt:5: -d '10.96.0.0/99': not an IP address or CIDR"),
    ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n"
     "-A KUBE-SERVICES -m mark --mark 0x1ffffffff -j ACCEPT\nCOMMIT\n",
     "paste.txt:5: --mark '0x1ffffffff': outside 0..0xffffffff"),
    ('-P INPUT ACCEPT\n-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "a/b has no '
     'endpoints" -m tcp --tcp-flags SYN,BOGUS SYN -j REJECT\n',
     "paste.txt:2: --tcp-flags 'SYN,BOGUS SYN'"),
])
def test_unusable_pastes_and_bad_values_are_one_line(tmp_path, text, message):
    path = tmp_path / "paste.txt"
    path.write_text(text)
    r = run("trace", "--to", "10.96.0.1:443", "--rules-file", str(path))
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert message in r.output.replace(str(tmp_path) + "/", "")


def test_a_10_mb_comment_costs_memory_in_proportion():
    import tracemalloc

    big = "x" * 10_000_000
    text = SAVE.replace('"shop/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC',
                        f'"{big}" -m tcp --dport 80 -j KUBE-SVC', 1)
    tracemalloc.start()
    try:
        (dp,) = build_dataplanes([("big.txt", text)])
        t = dp.trace(Packet(CLIENT, WEB, 80))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert t.verdict == "dnat"
    assert peak < 8 * len(text), f"{peak / 1e6:.0f} MB for a {len(text) / 1e6:.0f} MB dump"


def test_a_bad_value_in_a_listing_names_its_line():
    bad = NAT_L.replace("probability 0.50000000000", "probability 1.5", 1)
    with pytest.raises(ClusterIPError, match=r"nat\.txt:\d+: --probability '1\.5'"):
        build_dataplanes([("nat.txt", bad)])[0].trace(Packet(CLIENT, STICKY, 80))
