"""Turn traces and service views into what a person or a script reads: a report, a table, JSON."""

from __future__ import annotations

import json

from kubectl_clusterip.findings import STEPS, has_errors, ordered, summary
from kubectl_clusterip.model import Candidate, Finding, Node, ServicePort, Trace
from kubectl_clusterip.probe import report as probe_report
from kubectl_clusterip.style import style


def dump(data: object, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    import yaml  # here, not at the top: only -o yaml needs it

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
        return "route unknown (the dump holds no node routes)"
    if route.gateway:
        return f"routed via {route.gateway} ({route.dev})"
    return f"delivered on {route.dev}"


def _forward_line(t: Trace, c: Candidate, node: Node) -> str:
    """Same node or another, from the EndpointSlice; the CNI carries cross-node traffic."""
    ep_node = c.extra.get("node")
    here = node.name or t.extra.get("clientNode")
    route = _forwarding(node, c.ip)
    by = c.extra.get("droppedBy")
    if by:
        route = f"{by['verdict'].upper()} by {by['table']} {by['chain']} (DroppedAfterDnat)"
    if ep_node and here:
        if ep_node == here:
            return f"same node ({ep_node}): {route}"
        cni = t.extra.get("cni") or "the CNI (not identified)"
        return f"cross-node to {ep_node}, carried by {cni}: {route}"
    return route


def _pod(c: Candidate) -> str:
    if c.extra.get("inAPI") is False:
        return "(not in the API)"
    pod, ns = c.extra.get("pod"), c.extra.get("podNamespace")
    return f"{ns}/{pod}" if pod and ns else (pod or "")


def _state(c: Candidate) -> str:
    if "ready" not in c.extra:
        return ""
    if c.extra.get("terminating"):
        return "terminating" + (", serving" if c.extra.get("serving") else "")
    return "ready" if c.extra.get("ready") else "not ready"


def _finding_lines(found: list[Finding], indent: int = 15) -> list[str]:
    pad = " " * indent
    out = []
    for f in found:
        out.append(f"{pad}{style(f.severity.upper(), f.severity)} {f.code}: {f.message}")
        if f.evidence:
            out.append(f"{pad}  evidence: {f.evidence}")
        if f.hint:
            out.append(f"{pad}  next: {f.hint}")
    return out


def trace_report(t: Trace, node: Node) -> str:
    """The six steps of the design notes, each followed by the findings that break it."""
    p = t.packet
    where = f" on {node.name}" if node.name else ""
    origin = "a host-network process" if p.from_host else "a pod"
    lines = [f"Tracing {p.protocol.upper()} {_hp(p.src_ip, p.src_port)} -> "
             f"{_hp(p.dst_ip, p.dst_port)} from {origin}{where} ({t.proxy_mode} mode, "
             f"IPv{p.family})"]
    client = t.extra.get("client")
    if isinstance(client, dict) and client.get("pod") and client.get("ip") == p.src_ip:
        lines.append(f"Client pod {client.get('pod')} ({client.get('ip', '?')}) on node "
                     f"{client.get('node') or t.extra.get('clientNode', '?')}")
    lines.append("")
    by_step: dict[str, list[Finding]] = {}
    for f in ordered(t.findings):
        by_step.setdefault(f.step if f.step in STEPS else "", []).append(f)

    svc = t.service or "(no service claims this address)"
    lines.append(f"1. Service    {svc}  {_hp(p.dst_ip, p.dst_port)}/{p.protocol.upper()}")
    lines += _finding_lines(by_step.get("service", []))
    lines.append(f"2. Rules      {t.proxy_mode}: "
                 + ("the request is claimed by:" if t.capture else "no kube-proxy rule claims it"))
    for s in t.capture:
        lines.append(f"               {s.table} {s.chain}: {s.rule}")
    lines += _finding_lines(by_step.get("rules", []))
    obs = t.extra.get("observed")
    predicted = [c.endpoint for c in t.candidates]
    lines.append(f"3. DNS        {t.extra.get('dnsSummary', 'not checked (offline trace)')}")
    cd = t.extra.get("clusterDomain")
    if isinstance(cd, dict) and cd.get("domain"):
        lines.append(f"               cluster domain {cd['domain']} ({cd.get('source')})")
    lines += probe_report.lines(obs, "dns", predicted)
    lines += _finding_lines(by_step.get("dns", []))
    if t.verdict == "dnat":
        lines.append(f"4. DNAT       one endpoint per new connection, {len(t.candidates)} "
                     "candidate(s):")
        from tabulate import tabulate  # 10+ ms to import: only reports with candidates

        rows = []
        for c in t.candidates:
            rows.append([c.endpoint, percent(c.probability), "yes" if c.masquerade else "no",
                         _pod(c), c.extra.get("node") or "", _state(c),
                         c.extra.get("dnatChain", "")]
                        + ([probe_report.observed_cell(obs, c.endpoint)] if obs else []))
        lines += _indent(tabulate(rows, ["ENDPOINT", "PROBABILITY", "MASQUERADE", "POD", "NODE",
                                         "STATE", "CHAIN"] + (["OBSERVED"] if obs else []),
                                  tablefmt="plain"), 15)
        lines += probe_report.lines(obs, "dnat", predicted)
        lines += _finding_lines(by_step.get("dnat", []))
        lines.append("5. Forwarding")
        for c in t.candidates:
            lines.append(f"               {c.endpoint}: {_forward_line(t, c, node)}")
        lines += probe_report.lines(obs, "forward", predicted)
        lines += _finding_lines(by_step.get("forward", []))
        lines.append("6. Reply      " + ("Cilium reverses the translation for every reply:"
                                      if t.proxy_mode == "cilium" else
                                      "conntrack reverses the NAT for every reply packet:"))
        for c, r in zip(t.candidates, t.reverse):
            if c.extra.get("droppedBy"):
                lines.append(f"               {c.endpoint}: none, the request never arrives")
                continue
            for entry in [r["conntrack"]] if r.get("conntrack") else r.get("ciliumCT") or \
                    [f"{c.endpoint}: socket-LB, no NAT entry"]:
                lines.append(f"               {entry}")
            lines.append(f"                 {style(r['explanation'], 'dim')}")
            if c.masquerade:
                why = c.extra.get("masqueradeRule", "")
                lines.append(f"                 masqueraded by: {why}" if why else
                             "                 masqueraded")
        lines += probe_report.lines(obs, "reply", predicted)
        lines += _finding_lines(by_step.get("reply", []))
    else:
        word = {"reject": "REJECTED", "drop": "DROPPED", "no-match": "NOT NATed"}.get(
            t.verdict, t.verdict)
        lines.append(f"4. DNAT       {style(word, 'error')}: no endpoint is chosen")
        lines += _finding_lines(by_step.get("dnat", []))
        lines.append("5. Forwarding -")
        lines += _finding_lines(by_step.get("forward", []))
        lines.append("6. Reply      -" if t.verdict != "reject" else
                     "6. Reply      the node answers with an ICMP port-unreachable "
                     "(connection refused)")
        lines += _finding_lines(by_step.get("reply", []))
    if by_step.get(""):
        lines += ["", "Other findings:", *_finding_lines(by_step[""], 2)]
    if t.notes:
        lines += ["", "Assumptions:"] + [f"  - {n}" for n in t.notes]
    lines += ["", style(summary(t), "error" if has_errors(t.findings) else "ok")]
    return "\n".join(lines)


def services_table(ports: list[ServicePort], wide: bool = False) -> str:
    rows = []
    for sp in ports:
        eps = ", ".join(f"{_hp(ip, port)} ({percent(pr)})" for ip, port, pr in sp.endpoints)
        row = [sp.namespace, sp.service, sp.port_name or "<unset>",
               f"{_hp(sp.cluster_ip or '-', sp.port or 0)}/{sp.protocol.upper()}",
               eps or "<none>", style(sp.status, "ok" if sp.status == "ok" else "error")]
        if wide:
            row += [sp.chain or "-", sp.affinity_seconds or "-"]
        rows.append(row)
    from tabulate import tabulate

    headers = ["NAMESPACE", "NAME", "PORT", "CLUSTER-IP", "ENDPOINTS", "STATUS"]
    if wide:
        headers += ["CHAIN", "AFFINITY"]
    return tabulate(rows, headers, tablefmt="plain")


def _hp(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _indent(text: str, n: int) -> list[str]:
    return [" " * n + line for line in text.splitlines()]
