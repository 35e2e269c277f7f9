"""Parse `ipvsadm-save -n` / `ipvsadm -Ln` and `ipset save` / `ipset list` output.

IPVS dumps carry no Service names and no policy beyond the scheduler, so the parse keeps
exactly what the tools print: virtual services with scheduler, persistence and flags, and
their real servers with forwarding method, weight and (in `-L` output) connection counts.
The ipsets become membership tests the iptables walker calls for `-m set --match-set`.

Formats: ipvsadm 1.31 (`print_service_entry`: `-A -t|-u|--sctp-service ADDR -s SCHED
[-p T] [-M MASK] [--pe PE] [-o] [-b FLAGS]`, `-a … -r ADDR -m|-g|-i -w W`; listing
`PROT  ADDR SCHED [(FLAGS)] [persistent T [mask M] [pe PE]] [ops]` and
`  -> ADDR FORWARD WEIGHT ACTIVE INACTIVE`; IPv6 as `[addr]:port`), and ipset 6/7
(`create NAME TYPE opts` / `add NAME ELEMENT opts`; `Name:`/`Type:`/`Header:`/`Members:`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from kubectl_clusterip.model import ClusterIPError, family_of, join_host_port

FORWARD_NAMES = {"masq": "masq", "route": "route", "tunnel": "tunnel", "local": "local",
                 "fullnat": "fullnat"}
FORWARD_SWITCHES = {"-m": "masq", "--masquerading": "masq", "-g": "route",
                    "--gatewaying": "route", "-i": "tunnel", "--ipip": "tunnel"}
SERVICE_SWITCHES = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
                    "--sctp-service": "sctp", "-f": "fwmark", "--fwmark-service": "fwmark"}
_LIST_SERVICE = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+)\s+(\S+)(.*)$")
_LIST_FWMARK = re.compile(r"^FWM\s+(\d+)(\s+IPv6)?\s+(\S+)(.*)$")
_LIST_DEST = re.compile(r"^\s+->\s+(\S+)\s+([A-Za-z]+)\s+(-?\d+)\s+(\d+)\s+(\d+)\s*$")


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


def split_address(value: str, where: str = "") -> tuple[str, int]:
    """`10.96.0.1:443`, `[fd00::1]:443`, or a bare address (port 0)."""
    try:
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 0
        elif value.count(":") == 1:
            host, _, p = value.partition(":")
            port = int(p)
        else:
            host, port = value, 0
        return ipaddress.ip_address(host).compressed, port
    except ValueError:
        raise ClusterIPError(f"{where}unreadable address {value!r}") from None


def looks_like_ipvsadm(text: str) -> bool:
    head = text[:4096].lstrip()
    return head.startswith(("IP Virtual Server", "Prot LocalAddress:Port")) or bool(
        re.search(r"^-A (-t|-u|--sctp-service|-f|--tcp-service|--udp-service|--fwmark-service) ",
                  head, re.M))


def parse_ipvsadm(text: str, source: str = "") -> IpvsTable:
    """Either output form; the first meaningful line tells which."""
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("IP Virtual Server") or s.startswith("Prot "):
            return _parse_list(text, source)
        if s.startswith("IPVS connection entries"):
            raise ClusterIPError(f"{source or 'dump'}: this is `ipvsadm -Lnc` (connections); "
                                 "give `ipvsadm-save -n` or `ipvsadm -Ln`")
        return _parse_save(text, source)
    raise ClusterIPError(f"{source or 'dump'}: empty ipvsadm output")


def _parse_save(text: str, source: str) -> IpvsTable:
    where = source or "dump"
    services: dict[str, dict] = {}
    order: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        cmd = tokens[0]
        if cmd not in ("-A", "-a", "--add-service", "--add-server"):
            raise ClusterIPError(f"{where}:{lineno}: not ipvsadm-save output: {raw[:60]!r}")
        opts = _save_options(tokens[1:], f"{where}:{lineno}: ")
        svc_key = opts.get("service")
        if svc_key is None:
            raise ClusterIPError(f"{where}:{lineno}: no virtual service in {raw[:60]!r}")
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
                raise ClusterIPError(f"{where}:{lineno}: -a without -r: {raw[:60]!r}")
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
    return IpvsTable(out, source)


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
                opts["fwmark"] = int(nxt)
                opts["address"] = ("", 0)
            else:
                opts["address"] = split_address(nxt, where)
            opts["service"] = f"{proto} {nxt}"
            i += 2
        elif t in ("-6", "--ipv6"):
            opts["ipv6"] = True
            if "service" in opts:
                opts["service"] += " -6"
            i += 1
        elif t in ("-s", "--scheduler"):
            opts["scheduler"] = nxt
            i += 2
        elif t in ("-p", "--persistent"):
            if nxt is not None and nxt.isdigit():
                opts["persistent"] = int(nxt)
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
            opts["server"] = split_address(nxt, where)
            i += 2
        elif t in FORWARD_SWITCHES:
            opts["forward"] = FORWARD_SWITCHES[t]
            i += 1
        elif t in ("-w", "--weight"):
            try:
                opts["weight"] = int(nxt or "")
            except ValueError:
                raise ClusterIPError(f"{where}bad weight {nxt!r}") from None
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

    def close() -> None:
        if current is not None:
            services.append(VirtualService(**current))

    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        s = raw.strip()
        if s.startswith("IP Virtual Server"):
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
            ip, port = split_address(m.group(1), f"{where}:{lineno}: ")
            fwd = FORWARD_NAMES.get(m.group(2).lower())
            if fwd is None:
                raise ClusterIPError(f"{where}:{lineno}: unknown forwarding method "
                                     f"{m.group(2)!r}")
            current["real_servers"] = (*current["real_servers"], RealServer(
                ip, port or current["port"], fwd, int(m.group(3)), int(m.group(4)),
                int(m.group(5)), s))
            continue
        m = _LIST_SERVICE.match(raw)
        fm = _LIST_FWMARK.match(raw) if m is None else None
        if m is None and fm is None:
            raise ClusterIPError(f"{where}:{lineno}: not ipvsadm -Ln output: {raw[:60]!r}")
        close()
        if m is not None:
            ip, port = split_address(m.group(2), f"{where}:{lineno}: ")
            current = {"protocol": m.group(1).lower(), "ip": ip, "port": port,
                       "scheduler": m.group(3)}
            rest = m.group(4)
        else:
            assert fm is not None
            current = {"protocol": "fwmark", "ip": "", "port": 0, "scheduler": fm.group(3),
                       "fwmark": int(fm.group(1)), "fwmark_family": 6 if fm.group(2) else 4}
            rest = fm.group(4)
        current.update(_list_flags(rest, f"{where}:{lineno}: "))
        current["real_servers"] = ()
        current["line"] = s
    close()
    return IpvsTable(services, source)


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


# -- ipset ------------------------------------------------------------------------------------

_PORT_PROTOS = ("tcp", "udp", "sctp", "udplite")


@dataclass(frozen=True)
class IpSet:
    """One ipset and its members; `test` answers an iptables `--match-set NAME FLAGS` match."""

    name: str
    type: str  # hash:ip,port / hash:ip,port,ip / bitmap:port / hash:ip / hash:net …
    family: int | None = None  # 4 | 6; None for bitmap:port (no family)
    members: tuple[str, ...] = ()  # elements as printed, options stripped
    nomatch: tuple[str, ...] = ()  # elements added with `nomatch` (excluded from a net)
    header: str = ""
    comments: tuple[tuple[str, str], ...] = ()  # (element, comment) where a member has one
    _exact: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)
    _nets: tuple = field(default=(), init=False, repr=False, compare=False)
    _excluded: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Members become comparable tuples once; a bad member is an error at load time."""
        elems = tuple(_element(self, m) for m in self.members)
        object.__setattr__(self, "_exact", frozenset(elems))
        object.__setattr__(self, "_nets", elems if "net" in self.dimensions else ())
        object.__setattr__(self, "_excluded", tuple(_element(self, m) for m in self.nomatch))

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(self.type.split(":", 1)[1].split(",")) if ":" in self.type else ()

    def test(self, flags: list[str], src: str, dst: str, sport: int, dport: int,
             protocol: str) -> bool | str:
        """Kernel semantics: one flag per dimension (fewer flags never match), family must fit."""
        dims = self.dimensions
        if any(d not in ("ip", "port", "net") for d in dims):
            return f"ipset {self.name} ({self.type}) is not modelled"
        if len(flags) < len(dims):
            return False
        if self.family is not None and family_of(dst) != self.family:
            return False
        want = []
        for dim, flag in zip(dims, flags):
            if flag not in ("src", "dst"):
                return f"ipset flag {flag!r} is not modelled"
            if dim == "port":
                port = sport if flag == "src" else dport
                if protocol not in _PORT_PROTOS:
                    return False
                want.append(port if self.type.startswith("bitmap:") else (protocol, port))
            else:
                want.append(ipaddress.ip_address(src if flag == "src" else dst))
        key = tuple(want)
        if "net" not in dims:
            return key in self._exact
        return (any(_net_match(m, key) for m in self._nets)
                and not any(_net_match(m, key) for m in self._excluded))


def _net_match(member: tuple, want: tuple) -> bool:
    for have, got in zip(member, want):
        if isinstance(have, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            if got.version != have.version or got not in have:
                return False
        elif have != got:
            return False
    return True



def _element(s: IpSet, text: str) -> tuple:
    parts = text.split(",")
    if len(parts) != len(s.dimensions):
        raise ClusterIPError(f"ipset {s.name}: member {text!r} does not fit type {s.type}")
    out: list = []
    try:
        for dim, part in zip(s.dimensions, parts):
            if dim == "ip":
                out.append(ipaddress.ip_address(part))
            elif dim == "net":
                out.append(ipaddress.ip_network(part, strict=False))
            elif s.type.startswith("bitmap:"):
                out.append(int(part))
            else:
                proto, sep, port = part.rpartition(":")
                out.append(((proto or "tcp") if sep else "tcp", int(port)))
    except ValueError:
        raise ClusterIPError(f"ipset {s.name}: unreadable member {text!r}") from None
    return tuple(out)


def looks_like_ipset(text: str) -> bool:
    return bool(re.search(r"^(create \S+ (hash|bitmap|list):|Name: \S+\nType: )",
                          text[:8192].lstrip(), re.M))


def parse_ipset(text: str, source: str = "") -> dict[str, IpSet]:
    """`ipset save` or `ipset list` output -> sets by name (IPv6 ones are named KUBE-6-…)."""
    if re.search(r"^Name: ", text, re.M):
        return _parse_ipset_list(text, source)
    return _parse_ipset_save(text, source)


def _family(header: str) -> int | None:
    m = re.search(r"\bfamily (inet6?)\b", header)
    return (6 if m.group(1) == "inet6" else 4) if m else None


def _build(name: str, typ: str, header: str, members: list[str]) -> IpSet:
    keep, excluded, comments = [], [], []
    for line in members:
        elem, _, opts = line.strip().partition(" ")
        comment = re.search(r'\bcomment "((?:[^"\\]|\\.)*)"', opts)
        if comment:
            comments.append((elem, comment.group(1)))
            opts = opts[:comment.start()] + opts[comment.end():]
        (excluded if re.search(r"(^|\s)nomatch(\s|$)", opts) else keep).append(elem)
    return IpSet(name, typ, _family(header), tuple(keep), tuple(excluded), header,
                 tuple(comments))


def _parse_ipset_save(text: str, source: str) -> dict[str, IpSet]:
    where = source or "dump"
    heads: dict[str, tuple[str, str]] = {}
    members: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(" ", 3)
        if parts[0] == "create" and len(parts) >= 3:
            heads[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")
            members.setdefault(parts[1], [])
        elif parts[0] == "add" and len(parts) >= 3:
            if parts[1] not in heads:
                raise ClusterIPError(f"{where}:{lineno}: member of unknown set {parts[1]}")
            members[parts[1]].append(" ".join(parts[2:]))
        else:
            raise ClusterIPError(f"{where}:{lineno}: not ipset save output: {raw[:60]!r}")
    try:
        return {n: _build(n, t, h, members[n]) for n, (t, h) in heads.items()}
    except ClusterIPError as e:
        raise ClusterIPError(f"{where}: {e}") from None


def _parse_ipset_list(text: str, source: str) -> dict[str, IpSet]:
    where = source or "dump"
    out: dict[str, IpSet] = {}
    block: dict[str, str] = {}
    members: list[str] = []
    in_members = False

    def close() -> None:
        if block:
            if "Name" not in block or "Type" not in block:
                raise ClusterIPError(f"{where}: ipset list block without Name/Type")
            try:
                out[block["Name"]] = _build(block["Name"], block["Type"],
                                            block.get("Header", ""), members)
            except ClusterIPError as e:
                raise ClusterIPError(f"{where}: {e}") from None

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line.startswith("Name: "):
            close()
            block, members, in_members = {"Name": line[6:].strip()}, [], False
        elif not line.strip():
            in_members = False
        elif in_members:
            members.append(line.strip())
        elif line == "Members:":
            in_members = True
        elif ":" in line and block:
            k, _, v = line.partition(":")
            block[k.strip()] = v.strip()
        else:
            raise ClusterIPError(f"{where}:{lineno}: not ipset list output: {raw[:60]!r}")
    close()
    return out
