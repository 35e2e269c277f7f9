"""Cilium's view of Services, as its agent prints it: frontends, backends, BPF map entries.

Plain data only. The parsers (parse.py) fill it from whichever output the user pasted; the
dataplane (dataplane.py) walks it. Names follow Cilium's own: a *frontend* is a Service
address (ClusterIP:port/proto), a *backend* an endpoint address with a state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_clusterip.model import family_of, join_host_port

# Backend states (api/v1/models/backend_address.go: active terminating quarantined
# maintenance; the statedb tables print `[unhealthy]` for quarantined).
SELECTABLE = "active"
STATES = ("active", "terminating", "quarantined", "maintenance")
WHY_EXCLUDED = {
    "terminating": "terminating (the pod is shutting down): kept for its open connections, "
                   "new connections go to it only when no active backend is left",
    "quarantined": "quarantined (failed Cilium's backend health check, or set by `cilium-dbg "
                   "service update --states quarantined`): never selected for new connections",
    "maintenance": "in maintenance (set by an operator): never selected for new connections",
    "inactive": "past the service's COUNT in the BPF map (terminating, quarantined or in "
                "maintenance): not selected for new connections",
}


@dataclass(frozen=True)
class Backend:
    ip: str
    port: int
    protocol: str = ""  # "" when the output does not say (older versions)
    state: str = SELECTABLE
    weight: int | None = None
    node: str = ""
    id: int | None = None  # the BPF backend id, where the output shows it

    @property
    def endpoint(self) -> str:
        return join_host_port(self.ip, self.port)


@dataclass
class Frontend:
    """One Service address the agent load-balances, with its backends in the agent's order."""

    ip: str
    port: int
    protocol: str = ""  # tcp | udp | sctp | "" (any: outputs before per-protocol frontends)
    type: str = "ClusterIP"
    scope: str = "external"  # internal: the "/i" frontend of a two-scope service
    backends: list[Backend] = field(default_factory=list)
    id: int | None = None  # service id = revNAT id
    name: str = ""  # namespace/name, when the output names it
    port_name: str = ""
    int_local: bool = False  # internalTrafficPolicy: Local
    affinity: bool = False
    affinity_timeout: int | None = None
    status: str = ""  # statedb reconciliation status: Done, Pending, Error …
    source: str = ""
    line: str = ""  # the line(s) the frontend came from: the evidence

    @property
    def family(self) -> int:
        return family_of(self.ip)

    @property
    def key(self) -> str:
        proto = f"/{self.protocol.upper()}" if self.protocol else ""
        return join_host_port(self.ip, self.port) + proto + ("/i" if self.scope == "internal"
                                                            else "")

    def matches(self, ip: str, port: int, protocol: str) -> bool:
        return (self.ip == ip and self.port == port
                and (not self.protocol or self.protocol == protocol))


@dataclass
class LbSlot:
    """One `bpf lb list` row: slot 0 is the service itself, slots 1… its backends."""

    ip: str
    port: int
    protocol: str = ""
    revnat: int | None = None
    slot: int | None = None  # None: the output predates the SLOT column
    flags: tuple[str, ...] = ()
    missing_backend: int | None = None  # "backend N not found"
    line: str = ""


@dataclass
class LbEntry:
    """A frontend in the BPF service map (`cilium-dbg bpf lb list`)."""

    ip: str
    port: int
    protocol: str = ""
    internal: bool = False
    master: LbSlot | None = None
    slots: list[LbSlot] = field(default_factory=list)
    source: str = ""
    count: int | None = None  # active backends (slots 1..count), from `--frontends`
    qcount: int | None = None  # the inactive ones after them (1.15+ prints COUNT[QCOUNT])

    @property
    def revnat(self) -> int | None:
        return self.master.revnat if self.master else next(
            (s.revnat for s in self.slots if s.revnat is not None), None)

    @property
    def flags(self) -> tuple[str, ...]:
        return self.master.flags if self.master else ()

    def matches(self, ip: str, port: int, protocol: str) -> bool:
        return (self.ip == ip and self.port == port
                and (not self.protocol or self.protocol == protocol))


@dataclass
class KprStatus:
    """`cilium-dbg status --verbose`: what the agent says its kube-proxy replacement does."""

    mode: str = ""  # True/False (1.14+), Strict/Partial/Probe/Disabled (before)
    socket_lb: bool | None = None
    coverage: str = ""  # Full | Hostns-only
    hostns_only: bool | None = None  # BPFSocketLBHostnsOnly (1.14)
    backend_selection: str = ""  # Random | Maglev
    session_affinity: bool | None = None
    graceful_termination: bool | None = None
    protocols: str = ""
    evidence: list[str] = field(default_factory=list)
    source: str = ""

    def pods_use_socket_lb(self) -> bool | None:
        """True: connect-time in every pod; False: host namespace only; None: unknown."""
        if self.socket_lb is False:
            return False
        if self.coverage:
            return self.coverage.lower() == "full"
        if self.hostns_only is not None:
            return not self.hostns_only
        return self.socket_lb


@dataclass(frozen=True)
class CtEntry:
    """One `cilium-dbg bpf ct list global` line that belongs to a service connection."""

    protocol: str
    kind: str  # OUT | IN | SVC | service (old SVC form)
    src: str
    sport: int
    dst: str
    dport: int
    revnat: int | None
    backend_id: int | None
    line: str
