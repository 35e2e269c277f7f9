"""Plain data shared by every proxy mode: the request, the node it is traced on, the answer.

Every mode's parser and walker speaks these types, so the CLI, the findings and the
renderers never need to know whether an answer came from iptables, nftables or IPVS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

PROTOCOLS = ("tcp", "udp", "sctp")


class ClusterIPError(Exception):
    """An error the user can act on; the CLI prints it as one line and exits non-zero."""


def family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def join_host_port(ip: str, port: int) -> str:
    """Go's net.JoinHostPort, which kube-proxy uses for endpoint strings and chain hashes."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class Packet:
    """The first packet of one request, as it reaches the node's netfilter hooks."""

    src_ip: str
    dst_ip: str
    dst_port: int
    protocol: str = "tcp"
    src_port: int = 51234
    from_host: bool = False  # host-network process: nat OUTPUT instead of PREROUTING

    @property
    def family(self) -> int:
        return family_of(self.dst_ip)

    def to_dict(self) -> dict:
        return {
            "source": {"ip": self.src_ip, "port": self.src_port},
            "destination": {"ip": self.dst_ip, "port": self.dst_port},
            "protocol": self.protocol,
            "fromHost": self.from_host,
        }


@dataclass(frozen=True)
class Address:
    ip: str
    prefixlen: int
    dev: str = ""


@dataclass(frozen=True)
class Route:
    dst: str  # a CIDR, or "default"
    dev: str = ""
    prefsrc: str | None = None
    gateway: str | None = None


@dataclass(frozen=True)
class Node:
    """What the walker may know about the node; empty means unknown, never 'none'."""

    name: str | None = None
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()

    def is_local(self, ip: str) -> bool | None:
        """addrtype LOCAL; None when the node's addresses are unknown and ip is not loopback."""
        addr = ipaddress.ip_address(ip)
        if addr.is_loopback:
            return True
        if not self.addresses:
            return None
        return any(ipaddress.ip_address(a.ip) == addr for a in self.addresses)

    def route_to(self, ip: str) -> Route | None:
        """The longest-prefix route toward ip, as the node's `ip route` lists it."""
        addr = ipaddress.ip_address(ip)
        best: Route | None = None
        best_len = -1
        for r in self.routes:
            cidr = r.dst if r.dst != "default" else ("0.0.0.0/0" if addr.version == 4 else "::/0")
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version == addr.version and addr in net and net.prefixlen > best_len:
                best, best_len = r, net.prefixlen
        return best

    def source_toward(self, ip: str) -> str | None:
        """The address MASQUERADE picks: the preferred source of the route to ip."""
        route = self.route_to(ip)
        if route is not None:
            return route.prefsrc or self._address_on(route.dev, family_of(ip))
        addr = ipaddress.ip_address(ip)
        for a in self.addresses:
            net = ipaddress.ip_network(f"{a.ip}/{a.prefixlen}", strict=False)
            if net.version == addr.version and addr in net:
                return a.ip
        return None

    def _address_on(self, dev: str, version: int) -> str | None:
        for a in self.addresses:
            if a.dev == dev and ipaddress.ip_address(a.ip).version == version:
                return a.ip
        return None


@dataclass
class Step:
    """One rule the packet matched, in the order the kernel met it."""

    table: str
    chain: str
    rule: str
    effect: str = ""  # what it did: "jump KUBE-SVC-…", "DNAT to 10.244.1.5:80", "chosen with p=0.5"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Finding:
    severity: str  # error | warning | info
    code: str
    message: str
    evidence: str = ""
    step: str = ""  # which of the six steps it breaks: service, rules, dns, dnat, forward, reply
    hint: str = ""  # the next command or change to make

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v or k in ("severity", "code", "message")}


@dataclass
class Candidate:
    """One endpoint the request may be DNAT'd to, with how it gets there."""

    ip: str
    port: int
    probability: float
    masquerade: bool
    snat_ip: str | None = None  # MASQUERADE's source, when the node's addresses are known
    random_fully: bool = False
    steps: list[Step] = field(default_factory=list)
    sticky: bool = False  # session affinity records the client on this path
    extra: dict = field(default_factory=dict)  # pod, node, ready… when the API is known

    @property
    def endpoint(self) -> str:
        return join_host_port(self.ip, self.port)


@dataclass
class Path:
    """One way through the rules, with its probability; the walker returns all of them."""

    probability: float
    verdict: str  # dnat | reject | drop | no-match | accept
    steps: list[Step] = field(default_factory=list)
    dnat: tuple[str, int] | None = None
    masquerade: bool = False
    random_fully: bool = False
    sticky: bool = False
    notes: list[str] = field(default_factory=list)  # assumptions made on the way
    snat_ip: str | None = None
    undecided: list[str] = field(default_factory=list)  # matches assumed not to match


@dataclass
class ServicePort:
    """One service port as a dataplane programs it: the view `rules` prints."""

    name: str  # kube-proxy's svcPortName: ns/name[:port]
    protocol: str
    cluster_ip: str | None
    port: int | None
    endpoints: list[tuple[str, int, float]] = field(default_factory=list)  # ip, port, probability
    status: str = "ok"  # ok | no-endpoints | no-local-endpoints
    affinity_seconds: int | None = None
    chain: str = ""
    family: int = 4

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def service(self) -> str:
        return self.name.split("/", 1)[1].split(":", 1)[0]

    @property
    def port_name(self) -> str:
        rest = self.name.split("/", 1)[1]
        return rest.split(":", 1)[1] if ":" in rest else ""

    def to_dict(self) -> dict:
        return {
            "service": f"{self.namespace}/{self.service}",
            "portName": self.port_name,
            "protocol": self.protocol,
            "clusterIP": self.cluster_ip,
            "port": self.port,
            "family": f"IPv{self.family}",
            "status": self.status,
            "sessionAffinitySeconds": self.affinity_seconds,
            "chain": self.chain,
            "endpoints": [{"ip": ip, "port": p, "probability": round(pr, 10)}
                          for ip, p, pr in self.endpoints],
        }


def select_service(ports: list[ServicePort], service: str) -> list[ServicePort]:
    """The ports of one `namespace/name`."""
    ns, _, name = service.partition("/")
    return [sp for sp in ports if sp.namespace == ns and sp.service == name]


def select_ports(ports: list[ServicePort], namespace: str, name: str,
                 port: str | None = None) -> list[ServicePort]:
    """The ports of one service, optionally one port by name or number."""
    return [sp for sp in ports if sp.namespace == namespace and sp.service == name
            and (not port or port in (sp.port_name, str(sp.port)))]


@dataclass
class Trace:
    """The answer for one request; `to_dict` is the JSON contract other tools read."""

    packet: Packet
    proxy_mode: str
    verdict: str
    candidates: list[Candidate] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)  # the rules every path shares, in order
    capture: list[Step] = field(default_factory=list)  # up to the rule that claims the request
    findings: list[Finding] = field(default_factory=list)
    service: str | None = None  # svcPortName of the rule that captured the request
    notes: list[str] = field(default_factory=list)  # assumptions the walker had to make
    reverse: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def masquerade(self) -> bool:
        return any(c.masquerade for c in self.candidates)

    def to_dict(self) -> dict:
        out = {
            "request": self.packet.to_dict(),
            "proxyMode": self.proxy_mode,
            "family": f"IPv{self.packet.family}",
            "service": self.service,
            "verdict": self.verdict,
            "dnat": [
                {
                    "ip": c.ip,
                    "port": c.port,
                    "probability": round(c.probability, 10),
                    "masquerade": c.masquerade,
                    "snatIP": c.snat_ip,
                    "sticky": c.sticky,
                    "steps": [s.to_dict() for s in c.steps],
                    **c.extra,
                }
                for c in self.candidates
            ],
            "masquerade": self.masquerade,
            "reverse": self.reverse,
            "steps": [s.to_dict() for s in self.steps],
            "findings": [f.to_dict() for f in self.findings],
            "notes": self.notes,
        }
        out.update(self.extra)
        return out
