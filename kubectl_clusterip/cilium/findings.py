"""What the Cilium walk means for one request: its reply path, its findings, its JSON.

Pure: the dataplane's walk context in, the trace's reverse entries, findings and `cilium`
key out. The API-side comparisons (agent backends vs EndpointSlices) need the snapshot's
objects and live in cilium/drift.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubectl_clusterip.cilium.model import CtEntry, Frontend, LbEntry
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Finding, Packet, Trace, join_host_port

if TYPE_CHECKING:
    from kubectl_clusterip.cilium.dataplane import CiliumDataplane

PROTO = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


def explain(dp: CiliumDataplane, trace: Trace, ctx: dict) -> None:
    fe: Frontend | None = ctx["frontend"]
    entry: LbEntry | None = ctx["lbEntry"]
    p = trace.packet
    target = f"{join_host_port(p.dst_ip, p.dst_port)}/{PROTO.get(p.protocol, p.protocol)}"
    svc = trace.service or target
    generic = {"NoEndpointsReject", "DroppedByRule", "NoServiceRule", "NoLocalEndpointsDrop"}
    found: list[Finding] = [f for f in trace.findings if f.code not in generic]
    sel = ctx.get("selection")
    info: dict = {"frontend": fe.key if fe else None, "sources": list(dp.sources)}
    if fe is not None:
        info.update({"type": fe.type, "scope": fe.scope, "serviceId": fe.id,
                     "translation": ctx.get("where"), "socketLB": ctx.get("socketLB"),
                     "socketLBEvidence": ctx.get("socketLBEvidence"),
                     "backends": [{"ip": b.ip, "port": b.port, "state": b.state,
                                   **({"node": b.node} if b.node else {}),
                                   **({"weight": b.weight} if b.weight is not None else {})}
                                  for b in fe.backends]})
    if entry is not None:
        info["bpfMap"] = {"revNat": entry.revnat, "flags": list(entry.flags),
                          "slots": [s.line.strip() for s in entry.slots]}
    if sel is not None:
        info["excluded"] = [{"endpoint": b.endpoint, "state": b.state, "why": why}
                            for b, why in sel.excluded]
    trace.extra["cilium"] = info

    if fe is None:
        found.append(finding("NoServiceRule", f"Cilium's agent has no frontend for {target}: "
                             "the packet leaves untranslated and nothing answers at that "
                             "address", dp.source,
                             "check the address, port and protocol against `kubectl get svc`; "
                             "if they are right, compare `cilium-dbg service list` on this "
                             "node with the Service"))
    elif ctx.get("notInMap"):
        found.append(finding("CiliumServiceNotInBpfMap",
                             f"the agent knows {svc} ({fe.key}) but the BPF service map has no "
                             "entry for it: the datapath does not translate the request",
                             fe.line.splitlines()[0],
                             "kubectl -n kube-system logs <cilium pod on this node> | grep -i "
                             "'service\\|lbmap'; restarting the agent re-syncs the map"))
    elif trace.verdict in ("reject", "drop"):
        how = trace.steps[-1].effect if trace.steps else ""
        states = ", ".join(f"{b.endpoint} {b.state}" for b in fe.backends) or "no backends"
        found.append(finding("CiliumNoBackend",
                             f"{svc} has no selectable backend on this node ({states}): {how}",
                             fe.line.splitlines()[0],
                             f"kubectl get endpointslices -A -o wide | grep {fe.ip}; "
                             "`hubble observe --to-ip " + p.dst_ip + "` shows the drop"))
    if entry is not None:
        for s in entry.slots:
            if s.missing_backend is not None:
                found.append(finding("CiliumBackendMissing",
                                     f"the BPF service map entry for {svc} points at backend "
                                     f"id {s.missing_backend}, which is not in the backend map: "
                                     "connections that pick this slot are dropped",
                                     s.line.strip(), "restart the cilium agent on this node to "
                                     "rebuild its maps"))
    if sel is not None:
        for b, why in sel.excluded:
            if b.state == "quarantined":
                found.append(finding("CiliumBackendQuarantined",
                                     f"backend {b.endpoint} of {svc} is {why}", _be(fe, b),
                                     "check the pod; `cilium-dbg service update --backends "
                                     f"{b.endpoint} --states active` clears a manual quarantine"))
            elif b.state in ("terminating", "maintenance", "inactive"):
                found.append(finding("CiliumBackendExcluded",
                                     f"backend {b.endpoint} of {svc} is {why}", _be(fe, b)))
    if fe is not None and ctx.get("socketLB") is False and not p.from_host:
        found.append(finding("CiliumSocketLBBypassed",
                             f"socket-LB covers the host namespace only, so pods reach {svc} "
                             "through per-packet DNAT in their BPF program, not at connect(): "
                             "the backend is chosen per connection's first packet, the "
                             "conntrack SVC entry and revNAT id carry the reply",
                             ctx.get("socketLBEvidence", ""),
                             "expected with Istio/Linkerd (socketLB.hostNamespaceOnly); "
                             "otherwise check the Helm values"))
    found += stale_ct(dp, fe, entry, p, svc)
    trace.findings = found
    trace.reverse = reverse(dp, trace, fe, entry, ctx)
    for c in trace.candidates:
        b = next((b for b in (fe.backends if fe else []) if (b.ip, b.port) == (c.ip, c.port)),
                 None)
        if b is not None:
            c.extra.update({"state": b.state, **({"node": b.node} if b.node else {})})


def _be(fe: Frontend | None, b) -> str:
    line = next((ln for ln in (fe.line.splitlines() if fe else []) if b.endpoint in ln), "")
    return line.strip() or f"{b.endpoint} ({b.state})"


def reverse(dp: CiliumDataplane, trace: Trace, fe: Frontend | None, entry: LbEntry | None,
            ctx: dict) -> list[dict]:
    p = trace.packet
    out = []
    proto = PROTO.get(p.protocol, p.protocol.upper())
    client = join_host_port(p.src_ip, p.src_port)
    vip = join_host_port(p.dst_ip, p.dst_port)
    rid = entry.revnat if entry is not None else (fe.id if fe else None)
    for c in trace.candidates:
        if ctx.get("socketLB"):
            why = ("the socket was connected to the backend at connect(): the reply comes "
                   f"from {c.endpoint} straight to the socket, no reverse NAT is needed; "
                   f"getpeername() still reports {vip}")
            if p.protocol == "udp":
                why = (f"sendmsg() was translated to {c.endpoint}; recvmsg() rewrites the "
                       f"reply's source back to {vip} through the socket-LB reverse map "
                       "(cilium_lb4_reverse_sk)")
            out.append({"endpoint": c.endpoint, "conntrack": None, "socketLB": True,
                        "explanation": why})
            continue
        rev = dp.revnat.get(rid) if rid is not None else None
        entries = [f"{proto} SVC {client} -> {vip} … RevNAT={rid if rid is not None else '?'}"
                   " BackendID=<id of " + c.endpoint + ">",
                   f"{proto} OUT {client} -> {c.endpoint} … RevNAT="
                   f"{rid if rid is not None else '?'}"]
        observed = [e.line for e in dp.ct or []
                    if e.src == p.src_ip and e.sport == p.src_port]
        item = {"endpoint": c.endpoint, "conntrack": None, "ciliumCT": entries,
                "revNat": {"id": rid, "address": join_host_port(*rev) if rev else vip},
                "explanation": (f"{c.endpoint} replies to {client}; the connection's revNAT id "
                                f"{rid if rid is not None else '?'} turns the source back into "
                                f"{vip} in the pod's BPF program, so the client sees the "
                                "Service")}
        if observed:
            item["observed"] = observed
        out.append(item)
    return out


def stale_ct(dp: CiliumDataplane, fe: Frontend | None, entry: LbEntry | None, p: Packet,
             svc: str) -> list[Finding]:
    """Service connections in Cilium's conntrack whose backend is gone."""
    if not dp.ct or fe is None:
        return []
    live = {(b.ip, b.port) for b in fe.backends}
    live_ids = set(dp.lb_backends)
    rid = entry.revnat if entry is not None else fe.id
    stale: list[CtEntry] = []
    for e in dp.ct:
        if e.protocol != p.protocol:
            continue
        if e.kind == "SVC" and (e.dst, e.dport) == (p.dst_ip, p.dst_port):
            if e.backend_id and live_ids and e.backend_id not in live_ids:
                stale.append(e)
        elif e.kind == "OUT" and rid is not None and e.revnat == rid and \
                (e.dst, e.dport) not in live:
            stale.append(e)
    if not stale:
        return []
    return [finding("CiliumStaleConntrack",
                    f"{len(stale)} conntrack entr{'y' if len(stale) == 1 else 'ies'} for {svc} "
                    "still lead to a backend that is no longer in its backend list: those "
                    "clients' packets go to a gone pod until the entries expire",
                    stale[0].line, "on the node's cilium agent: cilium-dbg bpf ct flush global "
                    "(drops all tracked connections), or wait for the entries to expire")]
