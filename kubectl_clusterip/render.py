"""Turn traces and service views into what a person or a script reads: a report, a table, JSON."""

from __future__ import annotations

import json

import yaml
from tabulate import tabulate

from kubectl_clusterip.findings import summary
from kubectl_clusterip.model import Node, ServicePort, Trace


def dump(data: object, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


def traces_document(traces: list[Trace]) -> dict:
    """One trace is the object itself; several are a kubectl-style List of them."""
    if len(traces) == 1:
        return traces[0].to_dict()
    return {"kind": "TraceList", "items": [t.to_dict() for t in traces]}


def percent(p: float) -> str:
    return f"{p * 100:.1f}%" if abs(p * 1000 - round(p * 1000)) < 1e-6 else f"{p * 100:.2f}%"


def _forwarding(node: Node, ip: str) -> str:
    route = node.route_to(ip)
    if route is None:
        return "unknown (the dump holds no node routes)"
    if route.gateway:
        return f"to another node via {route.gateway} ({route.dev})"
    return f"same node, delivered on {route.dev}"


def trace_report(t: Trace, node: Node) -> str:
    """The six steps of the design notes, as far as the data at hand can tell."""
    p = t.packet
    where = f" on {node.name}" if node.name else ""
    origin = "a host-network process" if p.from_host else "a pod"
    lines = [f"Tracing {p.protocol.upper()} {_hp(p.src_ip, p.src_port)} -> "
             f"{_hp(p.dst_ip, p.dst_port)} from {origin}{where} ({t.proxy_mode} mode, "
             f"IPv{p.family})", ""]
    svc = t.service or "(no service claims this address)"
    lines.append(f"1. Service    {svc}  {_hp(p.dst_ip, p.dst_port)}/{p.protocol.upper()}")
    lines.append(f"2. Rules      {t.proxy_mode}: "
                 + ("the request is claimed by:" if t.capture else "no kube-proxy rule claims it"))
    for s in t.capture:
        lines.append(f"               {s.table} {s.chain}: {s.rule}")
    lines.append(f"3. DNS        {t.extra.get('dnsSummary', 'not checked (offline trace)')}")
    if t.verdict == "dnat":
        lines.append(f"4. DNAT       one endpoint per new connection, {len(t.candidates)} "
                     "candidate(s):")
        rows = []
        for c in t.candidates:
            via = c.extra.get("dnatChain", "")
            rows.append([c.endpoint, percent(c.probability), "yes" if c.masquerade else "no",
                         c.extra.get("pod", ""), via])
        lines += _indent(tabulate(rows, ["ENDPOINT", "PROBABILITY", "MASQUERADE", "POD",
                                         "CHAIN"], tablefmt="plain"), 15)
        lines.append("5. Forwarding")
        for c in t.candidates:
            lines.append(f"               {c.endpoint}: {_forwarding(node, c.ip)}")
        lines.append("6. Reply      conntrack reverses the NAT for every reply packet:")
        for c, r in zip(t.candidates, t.reverse):
            lines.append(f"               {r['conntrack']}")
            if c.masquerade:
                why = c.extra.get("masqueradeRule", "")
                lines.append(f"                 masqueraded by: {why}" if why else
                             "                 masqueraded")
    else:
        word = {"reject": "REJECTED", "drop": "DROPPED", "no-match": "NOT NATed"}.get(
            t.verdict, t.verdict)
        lines.append(f"4. DNAT       {word}: no endpoint is chosen")
        lines.append("5. Forwarding -")
        lines.append("6. Reply      -" if t.verdict != "reject" else
                     "6. Reply      the node answers with an ICMP port-unreachable "
                     "(connection refused)")
    if t.notes:
        lines += ["", "Assumptions:"] + [f"  - {n}" for n in t.notes]
    if t.findings:
        lines += ["", "Findings:"]
        for f in t.findings:
            lines.append(f"  {f.severity.upper():8} {f.code}: {f.message}")
            if f.evidence:
                lines.append(f"           evidence: {f.evidence}")
            if f.hint:
                lines.append(f"           next: {f.hint}")
    lines += ["", summary(t)]
    return "\n".join(lines)


def services_table(ports: list[ServicePort], wide: bool = False) -> str:
    rows = []
    for sp in ports:
        eps = ", ".join(f"{_hp(ip, port)} ({percent(pr)})" for ip, port, pr in sp.endpoints)
        row = [sp.namespace, sp.service, sp.port_name or "<unset>",
               f"{_hp(sp.cluster_ip or '-', sp.port or 0)}/{sp.protocol.upper()}",
               eps or "<none>", sp.status]
        if wide:
            row += [sp.chain or "-", sp.affinity_seconds or "-"]
        rows.append(row)
    headers = ["NAMESPACE", "NAME", "PORT", "CLUSTER-IP", "ENDPOINTS", "STATUS"]
    if wide:
        headers += ["CHAIN", "AFFINITY"]
    return tabulate(rows, headers, tablefmt="plain")


def _hp(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _indent(text: str, n: int) -> list[str]:
    return [" " * n + line for line in text.splitlines()]
