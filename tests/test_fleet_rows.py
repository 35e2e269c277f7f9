"""fleet.py: rows and summaries from traces, pure."""

from __future__ import annotations

from kubectl_clusterip import fleet
from kubectl_clusterip.findings import CODES, finding
from kubectl_clusterip.model import Candidate, Packet, ServicePort, Trace


def trace(eps: list[str], expected: list[str], *codes: str, family: int = 4) -> Trace:
    dst = "10.96.0.50" if family == 4 else "fd00:10:96::50"
    t = Trace(Packet("10.244.1.100", dst, 80), "iptables", "dnat",
              [Candidate(ip, 8080, 1 / len(eps), False) for ip in eps],
              service="default/web:http")
    t.findings = [finding(c, f"{c} here") for c in codes]
    t.extra["expected"] = {"endpoints": [f"{ip}:8080" for ip in expected]}
    return t


def test_the_codes_it_groups_exist():
    assert set(fleet.DRIFT) <= set(CODES) and set(fleet.NODE_FACTS) <= set(CODES)


def test_a_row_sums_every_port_and_family_and_sorts_findings():
    row = fleet.node_row("n1", [
        trace(["10.0.0.1", "10.0.0.9"], ["10.0.0.1"], "StaleEndpointRules"),
        trace(["10.0.0.1"], ["10.0.0.1"], "ConntrackTableNearlyFull", "NetworkPolicyAllows")])
    assert (row.verdict, row.programmed, row.expected) == ("broken", 3, 2)
    assert [f.code for f in row.drift] == ["StaleEndpointRules"]
    assert [f.code for f in row.facts] == ["ConntrackTableNearlyFull"]
    assert fleet.table_rows([row]) == [["n1", "iptables", "broken", "3/2",
                                        "StaleEndpointRules", "ConntrackTableNearlyFull"]]


def test_warnings_alone_keep_a_node_ok():
    row = fleet.node_row("n1", [trace(["10.0.0.1"], ["10.0.0.1"], "ConntrackDrops")])
    assert row.verdict == "ok" and not row.differs and row.facts


def test_a_node_this_tool_cannot_follow_is_said_not_counted():
    t = trace([], [], "KubeProxyReplaced")
    t.verdict = "no-match"
    row = fleet.node_row("n1", [t])
    assert row.verdict == "not traced" and not row.differs
    assert fleet.summary([row]) == "all 1 nodes agree: not traced (KubeProxyReplaced)"


def test_summaries():
    ok = fleet.node_row("a", [trace(["10.0.0.1"], ["10.0.0.1"])])
    bad = fleet.node_row("b", [trace([], ["10.0.0.1"], "IpForwardDisabled")])
    gone = fleet.failed_row("c", "debug pod did not run: OutOfmemory: no room")
    assert fleet.summary([ok, ok]) == "all 2 nodes agree: ok"
    assert fleet.summary([ok, bad, gone]) == (
        "2 of 3 nodes differ: b (IpForwardDisabled), c (debug pod did not run: OutOfmemory)")
    assert fleet.summary([bad, bad]) == "all 2 nodes broken: IpForwardDisabled"
    many = [fleet.failed_row(f"n{i}", "x") for i in range(8)]
    assert fleet.summary([*many, ok]).endswith(", and 3 more")


def test_rules_rows_name_what_differs_from_most_nodes():
    def sp(*ips: str) -> ServicePort:
        return ServicePort("default/web:http", "tcp", "10.96.0.50", 80,
                           [(ip, 8080, 1 / len(ips)) for ip in ips])
    rows = fleet.rules_rows({"a": (["iptables"], [sp("1", "2")]),
                             "b": (["iptables"], [sp("1", "2")]),
                             "c": (["iptables"], [sp("1", "2", "9")]),
                             "d": (["iptables"], []),
                             "e": "debug pod did not run: DeadlineExceeded"})
    by = {r.node: r for r in rows}
    assert by["a"].differs == [] and by["b"].differs == []
    assert by["c"].differs == ["default/web:http: 3 endpoints, most nodes 2"]
    assert by["d"].differs == ["default/web:http: missing"]
    assert by["e"].reason.startswith("debug pod did not run")
    assert fleet.rules_summary(rows).startswith("3 of 5 nodes differ: c (default/web:http: 3")
