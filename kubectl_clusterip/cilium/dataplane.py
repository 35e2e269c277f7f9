"""Cilium's kube-proxy replacement as a dataplane: a peer of iptables, nftables and IPVS.

Fed by what the agent prints (parse.py). Where the translation happens decides the trace:

- socket-LB (bpf_sock.c, cgroup connect/sendmsg hooks): a pod's connect() to the ClusterIP
  is rewritten to a backend before any packet exists. No packet DNAT, no NAT conntrack
  entry; the reply comes from the backend to the socket, and getpeername()/recvmsg() show
  the ClusterIP again (UDP replies through the reverse-socket map).
- per-packet LB in the pod's BPF program (bpf_lxc.c, when socket-LB covers the host
  namespace only, e.g. with Istio): the first packet is DNAT'd, Cilium's own conntrack
  keeps a SVC entry (the chosen BackendID) and the connection's revNAT id, which turns the
  reply's source back into the ClusterIP.

Backend choice (bpf/lib/lb.h `lb4_select_backend_id_random`): slot = prandom % count + 1
over slots 1..count, which hold the active backends only; terminating, quarantined and
maintenance backends sit past `count` (QCOUNT) and are never picked for a new connection,
except that terminating ones are used when no active one is left (graceful termination).
Maglev (`bpf-lb-algorithm=maglev`) hashes north-south NodePort/LoadBalancer traffic; the
socket-LB always picks at random. No selectable backend: drop (before 1.15) or an ICMP
"destination unreachable" (1.15+, `service-no-backend-response: reject`, the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_clusterip.cilium import select
from kubectl_clusterip.cilium.model import (
    Backend,
    CtEntry,
    Frontend,
    KprStatus,
    LbEntry,
)
from kubectl_clusterip.cilium.parse import (
    merge_lb,
    parse_bpf_lb,
    parse_services,
)
from kubectl_clusterip.cilium.status import parse_ct, parse_status
from kubectl_clusterip.model import (
    ClusterIPError,
    Node,
    Packet,
    Path,
    ServicePort,
    Step,
    Trace,
    join_host_port,
    select_service,
)
from kubectl_clusterip.trace import assemble

# Cilium SNATs a pod's request to itself through a service to this address (hairpin).
SERVICE_LOOPBACK = {4: "169.254.42.1", 6: "fe80::1"}


@dataclass
class CiliumDataplane:
    frontends: list[Frontend] | None  # the agent's view; None: no service list given
    lb: list[LbEntry] | None = None  # the BPF service map; None: no `bpf lb list` given
    revnat: dict[int, tuple] = field(default_factory=dict)
    lb_backends: dict[int, Backend] = field(default_factory=dict)
    status: KprStatus | None = None
    ct: list[CtEntry] | None = None
    fam: int = 4
    sources: tuple[str, ...] = ()
    no_backend_response: str = ""  # reject | drop, from cilium-config when known
    mode: str = "cilium"

    @property
    def family(self) -> int:
        return self.fam

    @property
    def source(self) -> str:
        return ", ".join(self.sources)

    def has_kube_proxy(self) -> bool:
        """Cilium programs Services here: it stands in for kube-proxy."""
        return True

    def cluster_cidrs(self) -> list[str]:
        return []

    def configure(self, cilium_config: dict) -> None:
        """Settings only the cilium-config ConfigMap holds (the engine passes its data)."""
        value = str(cilium_config.get("service-no-backend-response", "")).lower()
        if value in ("reject", "drop"):
            self.no_backend_response = value

    # -- the services view --------------------------------------------------------------------

    def services(self, service: str | None = None) -> list[ServicePort]:
        out = []
        for fe in self.agent_frontends():
            if fe.type != "ClusterIP" or (fe.scope == "internal" and self._has_external(fe)):
                continue
            picks = select.shares(fe, None).picks
            share = {(b.ip, b.port): p for b, p in picks}
            name = (fe.name or "-/-") + (f":{fe.port_name}" if fe.port_name else
                                          ("" if fe.name else f":{fe.key}"))
            out.append(ServicePort(name, fe.protocol or "tcp", fe.ip, fe.port,
                                   [(b.ip, b.port, share.get((b.ip, b.port), 0.0))
                                    for b in fe.backends],
                                   "ok" if picks else "no-endpoints",
                                   None, fe.key, self.fam))
        out = sorted(out, key=lambda s: (s.name, s.protocol, s.port or 0))
        return out if service is None else select_service(out, service)

    def _has_external(self, fe: Frontend) -> bool:
        return any(o.scope == "external" and (o.ip, o.port, o.protocol) ==
                   (fe.ip, fe.port, fe.protocol) for o in self.agent_frontends())

    def agent_frontends(self) -> list[Frontend]:
        """The agent's frontends; from the BPF map alone when no service list was given."""
        if self.frontends is not None:
            return self.frontends
        return [select.frontend_from_lb(e, self.lb_backends) for e in self.lb or []]

    # -- one request --------------------------------------------------------------------------

    def lookup(self, packet: Packet) -> tuple[Frontend | None, LbEntry | None]:
        """In-cluster traffic looks up the internal scope first (two-scope services)."""
        fes = [f for f in self.agent_frontends()
               if f.matches(packet.dst_ip, packet.dst_port, packet.protocol)]
        fe = next((f for f in fes if f.scope == "internal"), None) or \
            next(iter(fes), None)
        entries = [e for e in self.lb or []
                   if e.matches(packet.dst_ip, packet.dst_port, packet.protocol)]
        entry = next((e for e in entries if e.internal), None) or next(iter(entries), None)
        return fe, entry

    def socket_lb(self, packet: Packet) -> tuple[bool, str]:
        """Whether the socket-LB translates this client's connect(), and the evidence."""
        if packet.from_host:
            return True, "host-namespace sockets always go through socket-LB"
        if self.status is None:
            return True, ("assumed: no `cilium-dbg status --verbose` given; kube-proxy "
                          "replacement turns socket-LB on for all namespaces unless "
                          "socketLB.hostNamespaceOnly is set")
        pods = self.status.pods_use_socket_lb()
        ev = "; ".join(self.status.evidence) or "status --verbose"
        if pods is None:
            return True, f"assumed (status does not say the socket-LB coverage): {ev}"
        return pods, ev

    def walk(self, packet: Packet, node: Node | None = None) -> tuple[list[Path], dict]:
        fe, entry = self.lookup(packet)
        ctx: dict = {"frontend": fe, "lbEntry": entry}
        target = f"{join_host_port(packet.dst_ip, packet.dst_port)}/{packet.protocol.upper()}"
        if fe is None:
            step = Step("cilium", "service map", f"no frontend {target} in "
                        f"{self.source or 'the agent output'}", "no match: not translated")
            return [Path(1.0, "no-match", [step])], ctx
        sock, why = self.socket_lb(packet)
        ctx["socketLB"], ctx["socketLBEvidence"] = sock, why
        where = ("socket-LB connect()" if packet.protocol == "tcp" else
                 "socket-LB sendmsg()/connect()") if sock else "bpf_lxc from-container"
        ctx["where"] = where
        first = Step("cilium", where, fe.line.splitlines()[0] if fe.line else fe.key,
                     f"frontend {fe.key} ({fe.type}" + (f", {fe.name}" if fe.name else "") + ")")
        if self.lb is not None and entry is None and self.frontends is not None:
            ctx["notInMap"] = True
            step = Step("cilium", "BPF service map", f"no entry for {target} in `bpf lb list`",
                        "no match: the datapath does not know the frontend")
            return [Path(1.0, "no-match", [first, step])], ctx
        result = select.shares(fe, node, per_packet=not sock,
                               maglev=bool(self.status and self.status.backend_selection
                                           .lower().startswith("maglev")))
        ctx["selection"] = result
        notes = list(result.notes)
        if not result.picks:
            verdict, how = self._no_backend()
            rule = f"{fe.key}: {fe.name or target} has no endpoints (no selectable backend: " + \
                (", ".join(f"{b.endpoint} {b.state}" for b in fe.backends) or "none") + ")"
            return [Path(1.0, verdict, [first, Step("cilium", where, rule, how)],
                         notes=notes)], ctx
        paths = []
        hairpin = SERVICE_LOOPBACK[self.fam]
        for b, share in result.picks:
            effect = (f"DNAT to {b.endpoint} (connect-time: the socket is connected to the "
                      "backend, no packet is rewritten)" if sock else
                      f"DNAT to {b.endpoint} (per packet, revNAT id {self._revnat(fe, entry)})")
            effect += f", share {share:.4g}"
            masq = (not sock) and b.ip == packet.src_ip
            paths.append(Path(share, "dnat", [first, Step("cilium", where, _be_line(b), effect)],
                              dnat=(b.ip, b.port), masquerade=masq,
                              snat_ip=hairpin if masq else None, sticky=fe.affinity,
                              notes=notes))
        return paths, ctx

    def _no_backend(self) -> tuple[str, str]:
        if self.no_backend_response == "drop":
            return "drop", "drop (service-no-backend-response: drop; Hubble: DROP_NO_SERVICE)"
        if self.no_backend_response == "reject":
            return "reject", ("ICMP destination unreachable (service-no-backend-response: "
                              "reject): the client sees connection refused")
        return "reject", ("ICMP destination unreachable on Cilium 1.15+ (the default "
                          "service-no-backend-response: reject); drop (DROP_NO_SERVICE) "
                          "before 1.15, with `service-no-backend-response: drop`, or on "
                          "kernels before 5.2")

    def _revnat(self, fe: Frontend, entry: LbEntry | None) -> str:
        rid = entry.revnat if entry is not None else fe.id
        return str(rid) if rid is not None else "?"

    def trace(self, packet: Packet, node: Node | None = None) -> Trace:
        from kubectl_clusterip.cilium import findings as cilium_findings

        paths, ctx = self.walk(packet, node)
        fe = ctx["frontend"]
        capture = paths[0].steps[0] if paths and paths[0].steps and fe is not None else None
        trace = assemble(packet, self.mode, paths, fe.name + (f":{fe.port_name}" if fe and
                                                              fe.port_name else "")
                         if fe is not None and fe.name else None, capture)
        cilium_findings.explain(self, trace, ctx)
        return trace


def _be_line(b: Backend) -> str:
    extra = f", node {b.node}" if b.node else ""
    extra += f", weight {b.weight}" if b.weight is not None else ""
    return f"backend {b.endpoint}" + (f"/{b.protocol.upper()}" if b.protocol else "") + \
        f" ({b.state}{extra})"


# -- building from a node's dumps -------------------------------------------------------------


def build(dumps: list[tuple[str, str]], _all: dict[str, list[tuple[str, str]]]):
    """One dataplane per IP family with frontends, from every Cilium output of the node."""
    frontends: list[Frontend] | None = None
    for source, text in _all.get("cilium-services", []):
        frontends = (frontends or []) + parse_services(text, source)
    entries: list[LbEntry] = []
    revnat: dict[int, tuple] = {}
    backends: dict[int, Backend] = {}
    for source, text in _all.get("cilium-lb", []):
        got, rn, bes = parse_bpf_lb(text, source)
        entries += got
        revnat.update(rn)
        backends.update(bes)
    lb = merge_lb(entries) or None
    if frontends is None and lb is None:
        given = ", ".join(s for s, _ in _all.get("cilium-lb", []))
        raise ClusterIPError(f"{given}: `bpf lb list --revnat/--backends/--frontends` alone do "
                             "not say which backends serve a frontend; add `cilium-dbg service "
                             "list` or `cilium-dbg bpf lb list`")
    status = None
    for source, text in _all.get("cilium-status", []):
        status = parse_status(text, source)
    ct = None
    for source, text in _all.get("cilium-ct", []):
        ct = (ct or []) + parse_ct(text, source)
    sources = tuple(s for fmt in ("cilium-services", "cilium-lb", "cilium-status", "cilium-ct")
                    for s, _ in _all.get(fmt, []))
    families = sorted({f.family for f in frontends or []} | {e.ip and _fam(e.ip)
                                                              for e in lb or []}) or [4]
    return [CiliumDataplane([f for f in frontends if f.family == fam]
                            if frontends is not None else None,
                            [e for e in lb if _fam(e.ip) == fam] if lb is not None else None,
                            revnat, backends, status, ct, fam, sources)
            for fam in families]


def _fam(ip: str) -> int:
    return 6 if ":" in ip else 4

