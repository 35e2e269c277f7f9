"""Which backend a new in-cluster connection to a ClusterIP gets, as Cilium decides it.

bpf/lib/lb.h `lb4_select_backend_id_random`: slot = prandom % count + 1, so each backend
in slots 1..count (the active ones) gets an equal share. The agent puts terminating,
quarantined and maintenance backends past `count`, where no new connection lands; when no
active backend is left, terminating ones fill the slots (graceful termination,
pkg/loadbalancer tests "graceful-termination"). internalTrafficPolicy Local keeps the
node's own backends only. Maglev hashes the 5-tuple (north-south NodePort/LoadBalancer
traffic; per packet only), so its shares are nominal, by weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_clusterip.cilium.model import (
    SELECTABLE,
    WHY_EXCLUDED,
    Backend,
    Frontend,
    LbEntry,
)
from kubectl_clusterip.model import Node


@dataclass
class Selection:
    picks: list[tuple[Backend, float]] = field(default_factory=list)
    excluded: list[tuple[Backend, str]] = field(default_factory=list)  # backend, why
    notes: list[str] = field(default_factory=list)
    fallback_terminating: bool = False


def shares(fe: Frontend, node: Node | None, per_packet: bool = False,
           maglev: bool = False) -> Selection:
    sel = Selection()
    pool = list(fe.backends)
    if fe.int_local:
        here = node.name if node is not None else None
        known = [b for b in pool if b.node]
        if here and known:
            for b in pool:
                if b.node and b.node != here:
                    sel.excluded.append((b, f"on node {b.node}: internalTrafficPolicy Local "
                                            f"keeps the backends of node {here} only"))
            pool = [b for b in pool if not b.node or b.node == here]
        else:
            sel.notes.append(f"{fe.key} has internalTrafficPolicy Local: the agent lists only "
                             "this node's backends for it (assumed: the output does not name "
                             "backend nodes or the node is unknown)")
    active = [b for b in pool if b.state == SELECTABLE]
    chosen = active
    if not active:
        chosen = [b for b in pool if b.state == "terminating"]
        sel.fallback_terminating = bool(chosen)
    for b in pool:
        if b not in chosen and b.state != SELECTABLE:
            sel.excluded.append((b, WHY_EXCLUDED.get(b.state, f"state {b.state}")))
    if sel.fallback_terminating:
        sel.notes.append(f"{fe.key}: no active backend left; the terminating ones keep serving "
                         "new connections until they are gone (graceful termination)")
    if not chosen:
        return sel
    weights = [b.weight for b in chosen]
    if per_packet and maglev and all(w is not None for w in weights) and sum(weights) > 0:
        total = sum(w or 0 for w in weights)
        sel.picks = [(b, (b.weight or 0) / total) for b in chosen if b.weight]
        sel.notes.append(f"{fe.key}: Maglev hashes the connection's 5-tuple to a backend; the "
                         "shares shown are nominal (by weight)")
        return sel
    sel.picks = [(b, 1 / len(chosen)) for b in chosen]
    if len({w for w in weights if w is not None}) > 1:
        sel.notes.append(f"{fe.key}: backend weights differ, but random selection gives every "
                         "active backend an equal share (weights shape Maglev tables only)")
    return sel


def frontend_from_lb(entry: LbEntry, backends: dict[int, Backend]) -> Frontend:
    """A frontend known only from the BPF map: every listed backend slot is selectable."""
    flags = entry.flags
    def state(slot: int | None) -> str:  # slots past COUNT hold the inactive backends
        return "inactive" if entry.count is not None and slot and slot > entry.count \
            else "active"
    bes = [Backend(s.ip, s.port, s.protocol, state(s.slot)) for s in entry.slots if s.ip]
    return Frontend(entry.ip, entry.port, entry.protocol,
                    flags[0] if flags else "ClusterIP",
                    "internal" if entry.internal else "external", bes, entry.revnat,
                    int_local="InternalLocal" in flags, affinity="sessionAffinity" in flags,
                    source=entry.source,
                    line=entry.master.line.strip() if entry.master else
                    (entry.slots[0].line.strip() if entry.slots else ""))
