"""Every shape of the same kernel state traces the same: the real kernel's own output.

For each kernel scenario the tests build (tests/test_kernel_iptables.py's services, the
IPv6 service, old kube-proxy shapes, both the nf_tables and the legacy backend), the rules
are loaded into a throwaway network namespace and dumped back as `iptables-save`,
`iptables -S` (per table), `iptables -L -n -v` (per table, also with `--line-numbers` and
`-x`), and `iptables -L -n` without counters; each form, with and without shell prompts
and fences around it, must give the trace iptables-save gives (verdict, service,
endpoints with their odds, masquerade) for every request in the scenario.
"""

from __future__ import annotations

import pytest
from kube_objects import lab_objects, node, rules_for
from netlab import kernel_round_trip, require_root_tools

from kubectl_clusterip.dumps import build_dataplanes
from kubectl_clusterip.iptables.shapes import read_rulesets
from kubectl_clusterip.model import Node, Packet

REASON = require_root_tools("ip", "iptables-restore", "iptables-save", "ip6tables-restore",
                            "iptables-legacy-restore")
pytestmark = [pytest.mark.kernel, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

PODS = {"client": "10.244.1.5", "ep1": "10.244.1.6", "ep2": "10.244.1.7", "ep3": "10.244.2.5"}
ME = node("node", "172.18.0.2", ["10.244.1.0/24", "fd00:10:244:1::/64"])
NODE = Node("node")


def _current() -> str:
    svcs, slices, _, _ = lab_objects()
    return rules_for(svcs, slices, ME)


def _ipv6() -> str:
    _, _, svc6, slices6 = lab_objects()
    return rules_for(svc6, slices6, ME, family=6)


# kube-proxy as releases up to ~1.15 wrote it: masquerade decided in KUBE-SERVICES, a
# KUBE-MARK-DROP chain with filter's KUBE-FIREWALL dropping its mark, odds printed with five
# decimals, svcPortName comments with a trailing colon, MASQUERADE matched on the mark alone.
OLD = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP
-A KUBE-SERVICES -d 10.0.0.11/32 -p tcp -m comment --comment "default/gone: has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-H2F4SOSDHAEHZFXQ - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]
:KUBE-XLB-H2F4SOSDHAEHZFXQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.0.0.10/32 -p tcp -m comment --comment "default/nginx: cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -d 10.0.0.10/32 -p tcp -m comment --comment "default/nginx: cluster IP" -m tcp --dport 80 -j KUBE-SVC-H2F4SOSDHAEHZFXQ
-A KUBE-SERVICES -d 10.0.0.12/32 -p tcp -m comment --comment "default/blocked: loadbalancer IP" -m tcp --dport 80 -j KUBE-MARK-DROP
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-H2F4SOSDHAEHZFXQ -m comment --comment "default/nginx:" -m statistic --mode random --probability 0.33332999982 -j KUBE-SEP-AAAAAAAAAAAAAAAA
-A KUBE-SVC-H2F4SOSDHAEHZFXQ -m comment --comment "default/nginx:" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SVC-H2F4SOSDHAEHZFXQ -m comment --comment "default/nginx:" -j KUBE-SEP-CCCCCCCCCCCCCCCC
-A KUBE-SEP-AAAAAAAAAAAAAAAA -s 10.244.1.6/32 -m comment --comment "default/nginx:" -j KUBE-MARK-MASQ
-A KUBE-SEP-AAAAAAAAAAAAAAAA -p tcp -m comment --comment "default/nginx:" -m tcp -j DNAT --to-destination 10.244.1.6:80
-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 10.244.1.7/32 -m comment --comment "default/nginx:" -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m comment --comment "default/nginx:" -m tcp -j DNAT --to-destination 10.244.1.7:80
-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.244.2.5/32 -m comment --comment "default/nginx:" -j KUBE-MARK-MASQ
-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m comment --comment "default/nginx:" -m tcp -j DNAT --to-destination 10.244.2.5:80
COMMIT
"""

SCENARIOS = {
    # name: (restore input, family, requests as (src, dst, port, proto, from_host))
    "current": (_current, 4, [
        (PODS["client"], "10.96.0.20", 80, "tcp", False),
        ("172.18.0.3", "10.96.0.20", 80, "tcp", False),  # off-cluster: masqueraded
        (PODS["client"], "10.96.0.21", 80, "tcp", False),  # no endpoints: REJECT
        (PODS["client"], "10.96.0.22", 80, "tcp", False),  # hairpin
        (PODS["client"], "10.96.0.10", 53, "udp", False),
        (PODS["client"], "10.96.0.23", 9090, "tcp", False),
        (PODS["client"], "10.96.0.24", 80, "tcp", False),  # affinity
        ("172.18.0.2", "10.96.0.20", 80, "tcp", True),  # host network: OUTPUT
        (PODS["client"], "10.96.9.9", 80, "tcp", False),  # no such service
    ]),
    "ipv6": (_ipv6, 6, [
        ("fd00:10:244:1::5", "fd00:10:96::20", 80, "tcp", False),
        ("fd00:172:18::3", "fd00:10:96::20", 80, "tcp", False),
    ]),
    "old kube-proxy": (lambda: OLD, 4, [
        (PODS["client"], "10.0.0.10", 80, "tcp", False),
        ("172.18.0.3", "10.0.0.10", 80, "tcp", False),
        ("10.244.1.7", "10.0.0.10", 80, "tcp", False),  # hairpin through MARK in the SEP
        (PODS["client"], "10.0.0.11", 80, "tcp", False),
        (PODS["client"], "10.0.0.12", 80, "tcp", False),  # KUBE-MARK-DROP: dropped in filter
    ]),
}
SHOWN = {"nat": "-t nat ", "filter": ""}
FORMS = {
    "iptables -S": ["-S"],
    "iptables -L -n -v": ["-L", "-n", "-v"],
    "iptables -L -n": ["-L", "-n"],
    "iptables -L -n -v -x --line-numbers": ["-L", "-n", "-v", "-x", "--line-numbers"],
}


@pytest.fixture(scope="module", params=[(s, b) for s in SCENARIOS for b in ("nft", "legacy")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def kernel_forms(request) -> tuple[str, int, list, dict[str, list[tuple[str, str]]]]:
    """One scenario's rules as the kernel prints them in every form (one namespace)."""
    name, backend = request.param
    make, family, requests = SCENARIOS[name]
    xt = ("iptables" if family == 4 else "ip6tables") + f"-{backend}"
    dumps = [[f"{xt}-save"]] + [[xt, "-t", table, *args] for args in FORMS.values()
                                for table in ("nat", "filter")]
    saved, *listed = kernel_round_trip(make(), [f"{xt}-restore"], *dumps)
    forms: dict[str, list[tuple[str, str]]] = {"iptables-save": [("save.txt", saved)]}
    it = iter(listed)
    for form in FORMS:
        forms[form] = [(f"{table}.txt", next(it)) for table in ("nat", "filter")]
    return name, family, requests, forms


def outcome(dumps: list[tuple[str, str]], req: tuple) -> tuple:
    (dp,) = build_dataplanes(dumps)
    src, dst, port, proto, host = req
    t = dp.trace(Packet(src, dst, port, proto, from_host=host), NODE)
    return (t.verdict, t.service, t.masquerade,
            sorted((c.ip, c.port, round(c.probability, 9), c.masquerade, c.sticky)
                   for c in t.candidates))


def test_every_form_traces_like_iptables_save(kernel_forms):
    name, family, requests, forms = kernel_forms
    expected = [outcome(forms["iptables-save"], r) for r in requests]
    assert any(e[0] == "dnat" for e in expected)  # the scenario does reach endpoints
    for form, dumps in forms.items():
        with_cmd = [(src, f"$ sudo {'ip6' if family == 6 else 'ip'}tables "
                          f"{SHOWN[src[:-4]]}{' '.join(FORMS[form])}\n{text}")
                    for src, text in dumps] if form in FORMS else dumps
        fenced = [(src, f"```\n{text}```\n") for src, text in dumps]
        one_file = [("all.txt", "\n".join(text for _, text in dumps))]
        for variant in (dumps, with_cmd, fenced, one_file):
            got = [outcome(variant, r) for r in requests]
            assert got == expected, (name, form)


def test_listings_and_specs_become_iptables_saves_lines(kernel_forms):
    """Not only the same trace: the same rules, line for line (comments, marks, odds)."""
    _, _, _, forms = kernel_forms
    (save,) = read_rulesets(forms["iptables-save"])
    for form, dumps in forms.items():
        (got,) = read_rulesets(dumps)
        for table in ("nat", "filter"):
            if table in save.tables:
                assert dict(got.tables[table].lines.items()) == save.tables[table].lines, form
