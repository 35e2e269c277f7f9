"""Every node at once: one row per node from its traces (or why it has none), and a summary.

"It works from some pods but not others" is usually one node: its kube-proxy stuck, its
rules stale. Each node's traces (all the service's ports and families) become a row: the
proxy mode, the verdict, endpoints programmed against expected, the drift findings and the
node facts that are off. Pure functions over traces; the pods and the API are elsewhere
(cluster/fleetrun.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kubectl_clusterip.model import Finding, ServicePort, Trace

# Findings that say the node's rules disagree with the API: kube-proxy on it is behind.
DRIFT = ("ServiceNotProgrammed", "MissingEndpointRules", "StaleEndpointRules", "NoKubeProxy",
         "ProxyModeMismatch", "NoServiceRule", "PartialDispatch", "DroppedByRule",
         "KubeProxySyncStale", "KubeProxyChainsUnreachable", "CiliumBackendDrift",
         "CiliumServiceNotInBpfMap", "CiliumBackendMissing")
# Findings about the node's own state (docs/findings.md, "the node's own state").
NODE_FACTS = ("ConntrackTableFull", "ConntrackTableNearlyFull", "ConntrackDrops",
              "IpForwardDisabled", "BridgeNfCallIptablesOff", "PodCidrRouteMissing",
              "PodCidrRouteUnexpectedDevice", "StaleConntrack")
SHOWN = 5  # nodes named in the summary line


@dataclass
class Row:
    """One node of the fleet."""

    node: str
    verdict: str  # ok | broken | not traced | failed
    mode: str = ""
    programmed: int = 0
    expected: int = 0
    ports: list[dict] = field(default_factory=list)
    drift: list[Finding] = field(default_factory=list)
    facts: list[Finding] = field(default_factory=list)
    reason: str = ""  # why the node has no trace, or the first error found

    @property
    def differs(self) -> bool:
        """Broken, or not read: a node to look at (one this tool cannot follow is not)."""
        return self.verdict in ("broken", "failed")

    def to_dict(self) -> dict:
        return {"node": self.node, "proxyMode": self.mode or None, "verdict": self.verdict,
                "endpoints": {"programmed": self.programmed, "expected": self.expected,
                              "ports": self.ports},
                "drift": [f.to_dict() for f in self.drift],
                "nodeFacts": [f.to_dict() for f in self.facts],
                "reason": self.reason or None}


def failed_row(node: str, reason: str) -> Row:
    """A node whose pod could not run or whose dump could not be read: a row, not an abort."""
    return Row(node, "failed", reason=reason)


def node_row(node: str, traces: list[Trace]) -> Row:
    """The node's row from its traces (one per port and family of the service)."""
    found = [f for t in traces for f in t.findings]
    drift = _unique([f for f in found if f.code in DRIFT])
    facts = _unique([f for f in found if f.code in NODE_FACTS])
    ports = [_port(t) for t in traces]
    errors = [f for f in found if f.severity == "error"]
    if not errors and any(f.code == "KubeProxyReplaced" for f in found):
        verdict = "not traced"
    else:
        verdict = "broken" if errors else "ok"
    return Row(node, verdict, ",".join(sorted({t.proxy_mode for t in traces})),
               sum(len(p["programmed"]) for p in ports),
               sum(len(p["expected"]) for p in ports if p["expected"] is not None),
               ports, drift, facts, errors[0].code if errors else
               "KubeProxyReplaced" if verdict == "not traced" else "")


def _port(t: Trace) -> dict:
    programmed = sorted({c.endpoint for c in t.candidates}) if t.verdict == "dnat" else []
    exp = t.extra.get("expected")
    return {"service": t.service, "family": f"IPv{t.packet.family}",
            "programmed": programmed,
            "expected": sorted(exp["endpoints"]) if isinstance(exp, dict) else None}


def _unique(found: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in found:
        if (f.code, f.message) not in seen:
            seen.add((f.code, f.message))
            out.append(f)
    return out


def _why(row: Row) -> str:
    if row.verdict == "failed":  # "debug pod did not run: OutOfmemory", not the whole message
        return ": ".join(row.reason.split(": ")[:2])
    codes = [f.code for f in row.drift + row.facts] or ([row.reason] if row.reason else [])
    return ", ".join(dict.fromkeys(codes)) or row.verdict


def summary(rows: list[Row]) -> str:
    """`3 of 40 nodes differ: n1 (StaleEndpointRules), …` or `all 40 nodes agree: ok`."""
    odd = [r for r in rows if r.differs]
    if not odd:
        kinds = sorted({r.verdict if r.verdict == "ok" else f"{r.verdict} ({_why(r)})"
                        for r in rows})
        return f"all {len(rows)} nodes agree: {'; '.join(kinds)}"
    if len(odd) == len(rows) and len({_why(r) for r in rows}) == 1:
        return f"all {len(rows)} nodes {rows[0].verdict}: {_why(rows[0])}"
    named = ", ".join(f"{r.node} ({_why(r)})" for r in odd[:SHOWN])
    more = f", and {len(odd) - SHOWN} more" if len(odd) > SHOWN else ""
    return f"{len(odd)} of {len(rows)} nodes differ: {named}{more}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    """NODE, MODE, VERDICT, ENDPOINTS (programmed/expected), DRIFT, NODE FACTS."""
    out = []
    for r in rows:
        if r.verdict == "failed":
            out.append([r.node, "-", "failed", "-", r.reason, ""])
            continue
        eps = f"{r.programmed}/{r.expected}"
        out.append([r.node, r.mode or "-", r.verdict, eps,
                    ", ".join(dict.fromkeys(f.code for f in r.drift)),
                    ", ".join(dict.fromkeys(f.code for f in r.facts))])
    return out


# -- rules --all-nodes: each node's programmed service ports against the majority ----------
@dataclass
class RulesRow:
    node: str
    modes: list[str] = field(default_factory=list)
    ports: int = 0
    endpoints: int = 0
    differs: list[str] = field(default_factory=list)  # service ports unlike most nodes'
    reason: str = ""

    def to_dict(self) -> dict:
        return {"node": self.node, "proxyMode": ",".join(self.modes) or None,
                "servicePorts": self.ports, "endpoints": self.endpoints,
                "differs": self.differs, "reason": self.reason or None}


def _key(sp: ServicePort) -> tuple:
    return (sp.name, sp.protocol, sp.cluster_ip, sp.port)


def rules_rows(per_node: dict[str, tuple[list[str], list[ServicePort]] | str]) -> list[RulesRow]:
    """A row per node (value: its modes and ports, or why it has none); a service port
    whose endpoints differ from what most nodes program is named."""
    read = {n: v for n, v in per_node.items() if not isinstance(v, str)}
    votes: dict[tuple, Counter] = {}
    for _modes, ports in read.values():
        for sp in ports:
            votes.setdefault(_key(sp), Counter())[tuple(sorted(e[:2] for e in sp.endpoints))] += 1
    keys = set(votes)
    out = []
    for node, v in per_node.items():
        if isinstance(v, str):
            out.append(RulesRow(node, reason=v))
            continue
        modes, ports = v
        mine = {_key(sp): tuple(sorted(e[:2] for e in sp.endpoints)) for sp in ports}
        differs = []
        for k in sorted(keys, key=str):
            majority = votes[k].most_common(1)[0][0]
            if k not in mine:
                if sum(votes[k].values()) * 2 > len(read):  # most nodes program it
                    differs.append(f"{k[0]}: missing")
            elif mine[k] != majority:
                differs.append(f"{k[0]}: {len(mine[k])} endpoints, most nodes {len(majority)}")
        out.append(RulesRow(node, modes, len(ports), sum(len(sp.endpoints) for sp in ports),
                            differs))
    return out


def rules_summary(rows: list[RulesRow]) -> str:
    odd = [r for r in rows if r.differs or r.reason]
    if not odd:
        return f"all {len(rows)} nodes program the same service ports"
    named = ", ".join(f"{r.node} ({r.reason or r.differs[0]})" for r in odd[:SHOWN])
    more = f", and {len(odd) - SHOWN} more" if len(odd) > SHOWN else ""
    return f"{len(odd)} of {len(rows)} nodes differ: {named}{more}"
