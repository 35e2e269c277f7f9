"""What the probe saw, as plain data: parsed from the probe's log and the node's conntrack.

The probe pod prints one `CONN` line per connection (path, destination, its own source
port, outcome, seconds); the node debug pod prints conntrack's NEW events for the
ClusterIP. A connection's endpoint is the reply source of the event with the probe's
address and that source port: the DNAT the kernel really chose. Parsing is the boundary:
a line that does not fit is skipped and counted, never trusted.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from kubectl_clusterip.model import join_host_port

OUTCOMES = ("connected", "answered", "sent", "refused", "timeout", "reset", "unreachable",
            "error")
OK = ("connected", "answered")
FAILED = ("refused", "timeout", "reset", "unreachable", "error")
MARK = "==== kubectl-clusterip"
_TUPLE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


@dataclass(frozen=True)
class Connection:
    """One probe connection: `service` (to the ClusterIP) or `direct` (to IP:targetPort)."""

    path: str
    index: int
    ip: str
    port: int
    source_port: int
    outcome: str
    seconds: float | None = None
    detail: str = ""
    endpoint: str | None = None  # ip:port it was DNAT'd to (conntrack); direct: itself

    @property
    def latency_ms(self) -> float | None:
        return None if self.seconds is None else round(self.seconds * 1000, 3)

    def to_dict(self) -> dict:
        return {"path": self.path, "index": self.index,
                "destination": {"ip": self.ip, "port": self.port},
                "sourcePort": self.source_port, "endpoint": self.endpoint,
                "outcome": self.outcome, "latencyMs": self.latency_ms,
                **({"detail": self.detail} if self.detail else {})}


@dataclass
class Resolution:
    """The probe pod's own resolver: its resolv.conf and what `getent hosts NAME` said."""

    name: str
    resolv_conf: str = ""
    addresses: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def search(self) -> list[str]:
        return [w for line in self.resolv_conf.splitlines() if line.startswith("search")
                for w in line.split()[1:]]

    @property
    def ndots(self) -> int | None:
        m = re.search(r"^options\s.*\bndots:(\d+)", self.resolv_conf, re.M)
        return int(m.group(1)) if m else None

    @property
    def nameservers(self) -> list[str]:
        return [line.split()[1] for line in self.resolv_conf.splitlines()
                if line.startswith("nameserver") and len(line.split()) > 1]

    def to_dict(self) -> dict:
        return {"name": self.name, "addresses": self.addresses, "searchPath": self.search,
                "ndots": self.ndots, "nameservers": self.nameservers,
                **({"error": self.error} if self.error else {})}


@dataclass
class ProbeLog:
    """The probe container's log, parsed."""

    connections: list[Connection] = field(default_factory=list)
    resolution: Resolution | None = None
    source_ip: str | None = None
    method: str = ""  # connect | dns | datagram
    complete: bool = False
    skipped: int = 0  # lines that did not parse


def parse_probe_log(text: str) -> ProbeLog:
    out = ProbeLog(complete=f"{MARK} PROBE-DONE ====" in text)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        words = lines[i].split()
        i += 1
        if not words:
            continue
        if words[0] == "CONN":
            conn = _conn(words)
            if conn is None:
                out.skipped += 1
            else:
                out.connections.append(conn)
        elif words[0] == "PROBE" and len(words) >= 3:
            out.method, out.source_ip = words[1], words[2] if words[2] != "-" else None
        elif words[0] == "RESOLV-BEGIN" and len(words) == 2:
            body = []
            while i < len(lines) and lines[i] != "RESOLV-END":
                body.append(lines[i])
                i += 1
            i += 1
            out.resolution = out.resolution or Resolution(words[1])
            out.resolution.resolv_conf = "\n".join(body)
        elif words[0] == "GETENT" and len(words) == 3:
            res = out.resolution = out.resolution or Resolution(words[1])
            while i < len(lines) and lines[i] != "GETENT-END":
                first = lines[i].split()[:1]
                if first and first[0] not in res.addresses:
                    res.addresses.append(first[0])
                i += 1
            i += 1
            if words[2] != "rc=0" and not res.addresses:
                res.error = f"getent hosts {words[1]}: {words[2]} (the name does not resolve)"
    return out


def _conn(words: list[str]) -> Connection | None:
    """`CONN PATH INDEX IP PORT SPORT OUTCOME START END [DETAIL...]` (times: `date
    +%s.%N`, or `-` where the image's date has no nanoseconds)."""
    if len(words) < 9 or words[1] not in ("service", "direct") or words[6] not in OUTCOMES:
        return None
    try:
        index, port, sport = int(words[2]), int(words[4]), int(words[5])
        seconds = float(words[8]) - float(words[7]) if "-" not in (words[7], words[8]) \
            else None
    except ValueError:
        return None
    if seconds is not None and not 0 <= seconds < 3600:
        seconds = None
    return Connection(words[1], index, words[3], port, sport, words[6], seconds,
                      " ".join(words[9:])[:200])


def parse_events(text: str) -> list[tuple[tuple[str, str, int, int], tuple[str, int]]]:
    """conntrack NEW events (or -L entries): (orig src, orig dst, sport, dport) -> reply
    source (the DNAT target)."""
    out = []
    for line in text.splitlines():
        tuples = _TUPLE.findall(line)
        if len(tuples) < 2:
            continue
        (osrc, odst, osport, odport), (rsrc, _rdst, rsport, _rdport) = tuples[:2]
        out.append(((osrc, odst, int(osport), int(odport)), (rsrc, int(rsport))))
    return out


def _canon(ip: str) -> str:
    import ipaddress
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def join(log: ProbeLog, events_text: str | None, source_ip: str | None) -> list[Connection]:
    """Each service connection with the endpoint conntrack says it was DNAT'd to; direct
    ones are their own endpoint. Without events the endpoint stays unknown (None)."""
    src = _canon(source_ip or log.source_ip or "")
    events: dict[tuple[str, int], tuple[str, int]] = {}
    for (osrc, odst, sport, _dport), (rip, rport) in parse_events(events_text or ""):
        if not src or _canon(osrc) == src:
            events.setdefault((_canon(odst), sport), (rip, rport))
    out = []
    for c in log.connections:
        if c.path == "direct":
            ep: str | None = join_host_port(c.ip, c.port)
        else:
            hit = events.get((_canon(c.ip), c.source_port))
            ep = join_host_port(_canon(hit[0]), hit[1]) if hit else None
            if hit and _canon(hit[0]) == _canon(c.ip) and hit[1] == c.port:
                ep = "not-nated"  # the reply comes from the ClusterIP itself: no DNAT
        out.append(Connection(c.path, c.index, c.ip, c.port, c.source_port, c.outcome,
                              c.seconds, c.detail, ep))
    return out


@dataclass
class Observed:
    """The `observed` block: the probe, its connections, and what it resolved."""

    probe: dict  # where it ran: pod, namespace, node, ip, mode (pod|ephemeral), n, pace
    protocol: str
    method: str  # connect (TCP) | dns (UDP DNS) | datagram (UDP, no reply protocol known)
    connections: list[Connection] = field(default_factory=list)
    resolution: Resolution | None = None
    events_read: bool = True  # the node's conntrack events were read
    notes: list[str] = field(default_factory=list)

    @property
    def service(self) -> list[Connection]:
        return [c for c in self.connections if c.path == "service"]

    @property
    def direct(self) -> dict[str, Connection]:
        return {c.endpoint or join_host_port(c.ip, c.port): c for c in self.connections
                if c.path == "direct"}

    def by_endpoint(self) -> dict[str, Counter]:
        """Outcome counts of the service connections, per endpoint they were DNAT'd to."""
        out: dict[str, Counter] = {}
        for c in self.service:
            if c.endpoint:
                out.setdefault(c.endpoint, Counter())[c.outcome] += 1
        return out

    def unattributed(self) -> list[Connection]:
        return [c for c in self.service if c.endpoint is None]


def median_ms(conns: list[Connection]) -> float | None:
    values = sorted(c.latency_ms for c in conns if c.latency_ms is not None
                    and c.outcome in OK)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 3)


def outcome_text(counts: Counter) -> str:
    """`18 connected, 2 refused` in OUTCOMES order."""
    return ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o))
