"""Walk one packet through an IPVS-mode node: iptables, then IPVS, then iptables again.

kube-proxy's IPVS mode keeps a constant set of iptables rules (capture, masquerade marks,
the hairpin KUBE-LOOP-BACK) and lets IPVS choose the endpoint. A request to a ClusterIP is
addressed to the node itself (every ClusterIP is bound to the dummy kube-ipvs0), so in the
kernel it goes: nat PREROUTING (or OUTPUT for host processes) → routing says "local" →
filter INPUT → IPVS, which schedules a real server and rewrites the destination (Masq) →
nat POSTROUTING (masquerade by mark, or hairpin by KUBE-LOOP-BACK). IPVS hooks LOCAL_IN
after filter and before nat INPUT, and LOCAL_OUT just after nat OUTPUT for host traffic.

The iptables parts reuse the iptables `Walker` (its hooks, chains, marks and the ipset
`--match-set` test); this subclass adds the node-local VIPs and the IPVS step between the
hooks. It relies on the walker's protected `_after_routing` / `_hook` / `Branch` shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_clusterip.branch import Branch
from kubectl_clusterip.iptables.walk import Walker
from kubectl_clusterip.ipvs.parse import IpvsTable, RealServer, VirtualService
from kubectl_clusterip.model import Step, join_host_port

# Schedulers whose long-run share of new connections follows from the table alone.
EXACT_SCHEDULERS = {"rr": "round robin over the real servers with weight > 0",
                    "wrr": "weighted round robin: shares in proportion to the weights"}
HASH_SCHEDULERS = {"sh": "source hashing (the client address picks a fixed real server)",
                   "dh": "destination hashing (the service address picks a fixed real server)",
                   "mh": "Maglev hashing (the client address picks a fixed real server)"}
STATE_SCHEDULERS = {"lc": "least connections", "wlc": "weighted least connections",
                    "sed": "shortest expected delay", "nq": "never queue",
                    "lblc": "locality-based least connections",
                    "lblcr": "locality-based least connections with replication",
                    "fo": "weighted failover (highest weight available)",
                    "ovf": "weighted overflow (highest weight until its connections exceed it)"}


def describe_scheduler(sched: str) -> str:
    return (EXACT_SCHEDULERS.get(sched) or HASH_SCHEDULERS.get(sched)
            or STATE_SCHEDULERS.get(sched) or f"scheduler {sched}")


def shares(vs: VirtualService) -> tuple[list[tuple[RealServer, float]], bool]:
    """Each schedulable real server's share of new connections, and whether it is exact.

    rr cycles through the servers with weight > 0 (equal shares); wrr follows the weights.
    For the other schedulers the pick depends on live state (connection counts, the
    kernel's hash table): the share returned is nominal, by weight, over many clients.
    fo sends everything to the highest weight available.
    """
    avail = list(vs.available)
    if not avail:
        return [], True
    if vs.scheduler == "rr":
        return [(rs, 1 / len(avail)) for rs in avail], True
    if vs.scheduler == "fo":
        top = max(rs.weight for rs in avail)
        best = [rs for rs in avail if rs.weight == top]
        return [(rs, 1 / len(best)) for rs in best], len(best) == 1
    total = sum(rs.weight for rs in avail)
    return [(rs, rs.weight / total) for rs in avail], vs.scheduler == "wrr"


@dataclass
class IpvsWalker(Walker):
    """The iptables walker plus the IPVS table: ClusterIPs are local, IPVS picks the endpoint."""

    table: IpvsTable = field(default_factory=IpvsTable)

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        self._vips = self.table.addresses()

    def is_local(self, ip: str) -> bool | None:
        """kube-ipvs0 holds every virtual address, so addrtype LOCAL matches a ClusterIP."""
        if ip in self._vips:
            return True
        return super().is_local(ip)

    def _after_routing(self, st: Branch) -> list[tuple[Branch, str]]:
        vs = self.table.lookup(self._packet.protocol, st.dst, st.dport)
        if vs is None:
            return super()._after_routing(st)
        if self._packet.from_host:
            states = [(st, "accept")]  # LOCAL_OUT: right after nat OUTPUT, before routing out
        else:
            # LOCAL_IN: after filter/security INPUT, before nat INPUT (IPVS takes the packet)
            states = self._hook("INPUT", ("mangle", "filter", "security"), [st])
        out: list[tuple[Branch, str]] = []
        for s, verdict in states:
            if verdict != "accept":
                out.append((s, verdict))
                continue
            for s2, v2 in self._schedule(vs, s):
                out.extend(self._hook("POSTROUTING", ("mangle", "nat"), [s2])
                           if v2 == "accept" else [(s2, v2)])
        return out

    def _schedule(self, vs: VirtualService, st: Branch) -> list[tuple[Branch, str]]:
        sched = f"{vs.scheduler}" + (f" ({','.join(vs.sched_flags)})" if vs.sched_flags else "")
        persist = f", persistent {vs.persistent}s" if vs.persistent is not None else ""
        st = self._ipvs_step(st, vs, vs.line, f"virtual service {vs.key}, scheduler "
                             f"{sched}{persist}")
        picks, exact = shares(vs)
        if not picks:
            why = ("no real servers" if not vs.real_servers else
                   f"all {len(vs.real_servers)} real server(s) have weight 0 (draining)")
            st = self._ipvs_step(st, vs, vs.line, f"{why}: the kernel answers ICMP port "
                                 "unreachable and drops the packet")
            return [(st, "reject")]
        quiescent = [rs.endpoint for rs in vs.real_servers if rs.weight <= 0]
        if quiescent:
            st = st.note(f"IPVS {vs.key}: weight 0 (draining, no new connections): "
                                + ", ".join(quiescent))
        if not exact:
            possible = ", ".join(rs.endpoint for rs, _ in picks)
            st = st.note(f"IPVS {vs.key} uses {describe_scheduler(vs.scheduler)}: the "
                                f"pick depends on live kernel state; possible: {possible}; "
                                "the shares shown are nominal (by weight)")
        if vs.persistent is not None:
            st = st.note(f"IPVS {vs.key} is persistent ({vs.persistent}s): the first "
                                "connection from a client is scheduled, later ones follow its "
                                "persistence template to the same real server")
        out = []
        for rs, share in picks:
            s = st._replace(probability=st.probability * share, dst=rs.ip, dport=rs.port,
                            dnat=(rs.ip, rs.port), sticky=st.sticky or vs.persistent is not None)
            kind = {"masq": "", "local": ", local real server"}.get(
                rs.forward, f", {rs.forward} forwarding")
            if rs.forward not in ("masq", "local"):
                s = s.note(f"IPVS {vs.key} → {rs.endpoint} uses {rs.forward} "
                                  "forwarding: the destination address is not rewritten; the "
                                  "real server must own the virtual address")
            # trace.assemble recognises the DNAT step by its effect's first word.
            effect = (f"DNAT to {join_host_port(rs.ip, rs.port)} (weight {rs.weight}, "
                      f"share {share:.4g}{kind})")
            out.append((self._ipvs_step(s, vs, rs.line or vs.line, effect), "accept"))
        return out

    @staticmethod
    def _ipvs_step(st: Branch, vs: VirtualService, line: str, effect: str) -> Branch:
        return st._replace(steps=(*st.steps, Step("ipvs", vs.key, line, effect)))
