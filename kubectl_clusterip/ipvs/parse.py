"""Parse `ipvsadm-save -n` / `ipvsadm -Ln` output (ipset output: ipvs/ipset.py).

IPVS dumps carry no Service names and no policy beyond the scheduler, so the parse keeps
exactly what the tools print: virtual services with scheduler, persistence and flags, and
their real servers with forwarding method, weight and (in `-L` output) connection counts.

Formats: ipvsadm 1.31 (`print_service_entry`: `-A -t|-u|--sctp-service ADDR -s SCHED
[-p T] [-M MASK] [--pe PE] [-o] [-b FLAGS]`, `-a … -r ADDR -m|-g|-i -w W`; listing
`PROT  ADDR SCHED [(FLAGS)] [persistent T [mask M] [pe PE]] [ops]` and
`  -> ADDR FORWARD WEIGHT ACTIVE INACTIVE`; IPv6 as `[addr]:port`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from kubectl_clusterip.model import ClusterIPError, family_of, join_host_port
from kubectl_clusterip.paste import is_elision, shorten
from kubectl_clusterip.portnames import port_number

FORWARD_NAMES = {"masq": "masq", "route": "route", "tunnel": "tunnel", "local": "local",
                 "fullnat": "fullnat"}
FORWARD_SWITCHES = {"-m": "masq", "--masquerading": "masq", "-g": "route",
                    "--gatewaying": "route", "-i": "tunnel", "--ipip": "tunnel"}
SERVICE_SWITCHES = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
                    "--sctp-service": "sctp", "-f": "fwmark", "--fwmark-service": "fwmark"}
# ip_vs_*.ko schedulers in Linux 6.x (mh since 4.18, twos since 5.5)
SCHEDULERS = frozenset(("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq",
                        "fo", "ovf", "mh", "twos"))
MAX_WEIGHT = 65535  # ipvsadm(8): "valid values of weight are 0 through to 65535"
_LIST_SERVICE = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+)\s+(\S+)(.*)$", re.A)
_LIST_FWMARK = re.compile(r"^FWM\s+(\d+)(\s+IPv6)?\s+(\S+)(.*)$", re.A)
_LIST_DEST = re.compile(r"^\s+->\s+(\S+)\s+([A-Za-z]+)\s+(-?\d+)\s+(\d+)\s+(\d+)\s*$",
                        re.A)


@dataclass(frozen=True)
class RealServer:
    ip: str
    port: int
    forward: str = "masq"  # masq | route | tunnel | local | fullnat
    weight: int = 1
    active: int | None = None  # connection counts, only in `ipvsadm -L` output
    inactive: int | None = None
    line: str = ""

    @property
    def endpoint(self) -> str:
        return join_host_port(self.ip, self.port)


@dataclass(frozen=True)
class VirtualService:
    protocol: str  # tcp | udp | sctp | fwmark
    ip: str  # "" for a firewall-mark service
    port: int
    scheduler: str
    persistent: int | None = None  # persistence timeout in seconds (sessionAffinity ClientIP)
    netmask: str | None = None
    sched_flags: tuple[str, ...] = ()
    one_packet: bool = False
    persistence_engine: str | None = None
    fwmark: int | None = None
    fwmark_family: int = 4
    real_servers: tuple[RealServer, ...] = ()
    line: str = ""

    @property
    def family(self) -> int:
        return family_of(self.ip) if self.ip else self.fwmark_family

    @property
    def key(self) -> str:
        """The service as `ipvsadm -L` names it: `TCP  10.96.0.10:53`, one space here."""
        if self.fwmark is not None:
            return f"FWM {self.fwmark}" + (" IPv6" if self.fwmark_family == 6 else "")
        return f"{self.protocol.upper()} {join_host_port(self.ip, self.port)}"

    @property
    def available(self) -> tuple[RealServer, ...]:
        """Real servers that may get new connections: every scheduler skips weight 0."""
        return tuple(rs for rs in self.real_servers if rs.weight > 0)


@dataclass
class IpvsTable:
    """The node's whole IPVS table: one table holds both families."""

    services: list[VirtualService] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)  # what an elided paste lacks
    _index: dict[tuple[str, str, int], VirtualService] | None = field(default=None, repr=False)

    def lookup(self, protocol: str, ip: str, port: int) -> VirtualService | None:
        if self._index is None:
            self._index = {(vs.protocol, _canon(vs.ip), vs.port): vs
                           for vs in self.services if vs.fwmark is None}
        return self._index.get((protocol, _canon(ip), port))

    def addresses(self) -> frozenset[str]:
        """Every virtual address; kube-proxy binds ClusterIPs to kube-ipvs0, node IPs are local."""
        return frozenset(_canon(vs.ip) for vs in self.services if vs.ip)

    def of_family(self, family: int) -> list[VirtualService]:
        return [vs for vs in self.services if vs.family == family]


def _canon(ip: str) -> str:
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def split_address(value: str, where: str = "", protocol: str = "tcp") -> tuple[str, int]:
    """`10.96.0.1:443`, `[fd00::1]:443`, or a bare address (port 0). Without `-n` ipvsadm
    prints port names (`:https`, `:domain`): read as its getservbyport answered them."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, None
    try:
        ip = ipaddress.ip_address(host).compressed
    except ValueError:
        raise ClusterIPError(f"{where}{_host_problem(host)}: {shorten(value)!r}; run `ipvsadm -Ln` "
                             "(numeric output)") from None
    if port_text is None:
        return ip, 0
    port = port_number(port_text, "tcp" if protocol == "fwmark" else protocol)
    if port is None:
        what = "port out of range (0-65535)" if port_text.isascii() and \
            port_text.isdigit() else f"unknown {protocol} service name"
        raise ClusterIPError(f"{where}{what}: {shorten(value)!r}; run `ipvsadm -Ln` (numeric "
                             "output)")
    return ip, port


def _host_problem(host: str) -> str:
    if host and re.fullmatch(r"[A-Za-z0-9.-]+", host) and not host.replace(".", "").isdigit():
        return "a host name, not an address (ipvsadm -L resolved it)"
    return "not an IP address"


def _number(text: str | None, what: str, limit: int, where: str) -> int:
    """A decimal the tools print (ASCII digits only), within 0..limit."""
    if text is None or not (text.isascii() and text.isdigit()) or int(text) > limit:
        raise ClusterIPError(f"{where}bad {what} (0-{limit}): {shorten(text or '')!r}")
    return int(text)


def _scheduler(name: str | None, where: str) -> str:
    if name not in SCHEDULERS:
        raise ClusterIPError(f"{where}unknown IPVS scheduler {shorten(name or '')!r} (known: "
                             f"{', '.join(sorted(SCHEDULERS))})")
    return name


# The start of a listing line, as a paste cut off at its end leaves it.
_CUT_LINE = re.compile(r"(?:->\s+[\d\[]\S*(?:\s+[A-Za-z]+(?:\s+\d+){0,3})?|"
                       r"(?:TCP|UDP|SCTP|FWM)\s+[\d\[]\S*(?:\s+[a-z]*)?)\s*$", re.A)
# A listing pasted without its header: a virtual service, then a real server under it.
_LIST_FRAGMENT = re.compile(r"^(?:TCP|UDP|SCTP)\s+\S+:\S+\s+[a-z]+\b.*\n\s+->\s+\S+:\S+\s+"
                            r"(?:Masq|Route|Tunnel|Local|FullNat)\s", re.M | re.A)


def looks_like_ipvsadm(text: str) -> bool:
    head = text[:4096].lstrip()
    return head.startswith(("IP Virtual Server", "Prot LocalAddress:Port")) or bool(
        re.search(r"^-A (-t|-u|--sctp-service|-f|--tcp-service|--udp-service|--fwmark-service) ",
                  head, re.M)) or bool(_LIST_FRAGMENT.search(head))


def parse_ipvsadm(text: str, source: str = "") -> IpvsTable:
    """Either output form; the first meaningful line tells which."""
    for line in text.splitlines():
        s = line.strip()
        if not s or is_elision(s):
            continue
        if s.startswith("IP Virtual Server") or s.startswith("Prot ") or \
                _LIST_SERVICE.match(s) or _LIST_FWMARK.match(s):
            return _parse_list(text, source)
        if s.startswith("IPVS connection entries"):
            raise ClusterIPError(f"{source or 'dump'}: this is `ipvsadm -Lnc` (connections); "
                                 "give `ipvsadm-save -n` or `ipvsadm -Ln`")
        return _parse_save(text, source)
    raise ClusterIPError(f"{source or 'dump'}: empty ipvsadm output; run `ipvsadm -Ln` on the "
                         "node and give its output")


def _parse_save(text: str, source: str) -> IpvsTable:
    where = source or "dump"
    services: dict[str, dict] = {}
    order: list[str] = []
    notes: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if is_elision(line):
            notes.append(f"line {lineno} elides lines: the virtual services and real servers "
                         "there are not known (a service's odds may be off)")
            continue
        tokens = line.split()
        cmd = tokens[0]
        if cmd not in ("-A", "-a", "--add-service", "--add-server"):
            raise ClusterIPError(f"{where}:{lineno}: not ipvsadm-save output: {shorten(line)!r}; "
                                 "run `ipvsadm-save -n` (or `ipvsadm -Ln`) on the node")
        opts = _save_options(tokens[1:], f"{where}:{lineno}: ")
        svc_key = opts.get("service")
        if svc_key is None:
            raise ClusterIPError(f"{where}:{lineno}: no virtual service in {shorten(line)!r}")
        if cmd in ("-A", "--add-service"):
            if svc_key in services:
                raise ClusterIPError(f"{where}:{lineno}: virtual service {svc_key} twice")
            services[svc_key] = {"opts": opts, "line": line, "rs": []}
            order.append(svc_key)
        else:
            if svc_key not in services:
                raise ClusterIPError(f"{where}:{lineno}: real server for unknown virtual "
                                     f"service {svc_key}")
            if "server" not in opts:
                raise ClusterIPError(f"{where}:{lineno}: -a without -r: {shorten(line)!r}")
            ip, port = opts["server"]
            vport = services[svc_key]["opts"]["address"][1]
            services[svc_key]["rs"].append(RealServer(
                ip, port or vport, opts.get("forward", "route"), int(opts.get("weight", 1)),
                line=line))
    out = []
    for k in order:
        s = services[k]
        o = s["opts"]
        proto, (ip, port) = o["protocol"], o["address"]
        out.append(VirtualService(
            proto, ip if proto != "fwmark" else "", port if proto != "fwmark" else 0,
            o.get("scheduler", "wlc"), o.get("persistent"), o.get("netmask"),
            tuple(o.get("sched_flags", ())), bool(o.get("ops")), o.get("pe"),
            o.get("fwmark"), 6 if o.get("ipv6") else 4, tuple(s["rs"]), s["line"]))
    return IpvsTable(out, source, notes)


def _save_options(tokens: list[str], where: str) -> dict:
    """The options of one `ipvsadm -S` line, by meaning rather than spelling."""
    opts: dict = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if t in SERVICE_SWITCHES:
            if nxt is None:
                raise ClusterIPError(f"{where}{t} without an address")
            proto = SERVICE_SWITCHES[t]
            opts["protocol"] = proto
            if proto == "fwmark":
                opts["fwmark"] = _number(nxt, "firewall mark", 0xFFFFFFFF, where)
                opts["address"] = ("", 0)
            else:
                opts["address"] = split_address(nxt, where, proto)
            opts["service"] = f"{proto} {nxt}"
            i += 2
        elif t in ("-6", "--ipv6"):
            opts["ipv6"] = True
            if "service" in opts:
                opts["service"] += " -6"
            i += 1
        elif t in ("-s", "--scheduler"):
            opts["scheduler"] = _scheduler(nxt, where)
            i += 2
        elif t in ("-p", "--persistent"):
            if nxt is not None and nxt.isdigit():
                opts["persistent"] = _number(nxt, "persistence timeout", 0x7FFFFFFF, where)
                i += 2
            else:
                opts["persistent"] = 300  # ipvsadm's default timeout
                i += 1
        elif t in ("-M", "--netmask"):
            opts["netmask"] = nxt
            i += 2
        elif t in ("--pe", "pe"):
            opts["pe"] = nxt
            i += 2
        elif t in ("-o", "--ops", "ops"):
            opts["ops"] = True
            i += 1
        elif t in ("-b", "--sched-flags"):
            opts["sched_flags"] = tuple((nxt or "").split(","))
            i += 2
        elif t in ("-r", "--real-server"):
            if nxt is None:
                raise ClusterIPError(f"{where}-r without an address")
            opts["server"] = split_address(nxt, where, opts.get("protocol", "tcp"))
            i += 2
        elif t in FORWARD_SWITCHES:
            opts["forward"] = FORWARD_SWITCHES[t]
            i += 1
        elif t in ("-w", "--weight"):
            opts["weight"] = _number(nxt, "weight", MAX_WEIGHT, where)
            i += 2
        elif t in ("-x", "-y", "--u-threshold", "--l-threshold", "--tun-type", "--tun-port"):
            i += 2
        else:
            i += 1  # flags this predictor does not need (e.g. --tun-csum)
    return opts


def _parse_list(text: str, source: str) -> IpvsTable:
    where = source or "dump"
    services: list[VirtualService] = []
    current: dict | None = None

    notes: list[str] = []
    lines = text.splitlines()
    last = max((i for i, ln in enumerate(lines, 1) if ln.strip()), default=0)

    def close() -> None:
        if current is not None:
            services.append(VirtualService(**current))

    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        s = raw.strip()
        if s.startswith("IP Virtual Server"):
            continue
        if is_elision(s):
            after = f" after {current['protocol'].upper()} {current['ip']}:{current['port']}" \
                if current else ""
            notes.append(f"line {lineno} elides lines{after}: the virtual services and real "
                         "servers there are not known (a service's odds may be off)")
            continue
        if s.startswith("Prot LocalAddress:Port"):
            if "Scheduler" not in s:
                raise ClusterIPError(f"{where}:{lineno}: `ipvsadm -L --stats/--rate/"
                                     "--thresholds` output has no weights; give "
                                     "`ipvsadm-save -n` or `ipvsadm -Ln`")
            continue
        if s.startswith("-> RemoteAddress:Port"):
            if "Forward" not in s or "Weight" not in s:
                raise ClusterIPError(f"{where}:{lineno}: this `ipvsadm -L` variant has no "
                                     "forwarding/weight columns; give `ipvsadm -Ln`")
            continue
        m = _LIST_DEST.match(raw)
        if m:
            if current is None:
                raise ClusterIPError(f"{where}:{lineno}: real server before any service")
            at = f"{where}:{lineno}: "
            ip, port = split_address(m.group(1), at, current["protocol"])
            fwd = FORWARD_NAMES.get(m.group(2).lower())
            if fwd is None:
                raise ClusterIPError(f"{where}:{lineno}: unknown forwarding method "
                                     f"{m.group(2)!r}")
            current["real_servers"] = (*current["real_servers"], RealServer(
                ip, port or current["port"], fwd, _number(m.group(3), "weight", MAX_WEIGHT, at),
                int(m.group(4)), int(m.group(5)), s))
            continue
        m = _LIST_SERVICE.match(raw)
        fm = _LIST_FWMARK.match(raw) if m is None else None
        if m is None and fm is None and lineno == last and current is not None and \
                _CUT_LINE.match(s):
            notes.append(f"the paste ends in a line cut short (line {lineno}: {shorten(s)!r}), "
                         f"under {current['protocol'].upper()} {current['ip']}:"
                         f"{current['port']}: that service's real servers from there on are not "
                         "known")
            continue
        if m is None and fm is None:
            raise ClusterIPError(f"{where}:{lineno}: not ipvsadm -Ln output: {shorten(s)!r}; "
                                 "run `ipvsadm -Ln` on the node and give all of its output")
        close()
        if m is not None:
            at = f"{where}:{lineno}: "
            ip, port = split_address(m.group(2), at, m.group(1).lower())
            current = {"protocol": m.group(1).lower(), "ip": ip, "port": port,
                       "scheduler": _scheduler(m.group(3), at)}
            rest = m.group(4)
        else:
            assert fm is not None
            at = f"{where}:{lineno}: "
            current = {"protocol": "fwmark", "ip": "", "port": 0,
                       "scheduler": _scheduler(fm.group(3), at),
                       "fwmark": _number(fm.group(1), "firewall mark", 0xFFFFFFFF, at),
                       "fwmark_family": 6 if fm.group(2) else 4}
            rest = fm.group(4)
        current.update(_list_flags(rest, f"{where}:{lineno}: "))
        current["real_servers"] = ()
        current["line"] = s
    close()
    return IpvsTable(services, source, notes)


def _list_flags(rest: str, where: str) -> dict:
    out: dict = {}
    flags = re.match(r"\s*\(([^)]*)\)", rest)
    if flags:
        out["sched_flags"] = tuple(f for f in flags.group(1).split(",") if f)
        rest = rest[flags.end():]
    tokens = rest.split()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if t == "persistent":
            if not nxt.isdigit():
                raise ClusterIPError(f"{where}persistent without a timeout")
            out["persistent"] = int(nxt)
            i += 2
        elif t == "mask":
            out["netmask"] = nxt
            i += 2
        elif t == "pe":
            out["persistence_engine"] = nxt
            i += 2
        elif t == "ops":
            out["one_packet"] = True
            i += 1
        else:
            i += 1
    return out
