"""Parse `ipset save` / `ipset list` output (ipset 6/7: `create NAME TYPE opts` / `add NAME
ELEMENT opts`; `Name:`/`Type:`/`Header:`/`Members:` blocks). The sets become membership tests
the iptables walker calls for `-m set --match-set` in IPVS mode."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from kubectl_clusterip.model import ClusterIPError, family_of
from kubectl_clusterip.paste import is_elision, shorten

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
    entries: int | None = None  # `Number of entries:` of `ipset list`, when printed
    cut: bool = False  # the paste elides some of its members (`...`)
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
            hit = key in self._exact
        else:
            hit = (any(_net_match(m, key) for m in self._nets)
                   and not any(_net_match(m, key) for m in self._excluded))
        if not hit and (self.missing or self.cut):
            listed = len(self.members) + len(self.nomatch)
            have = f"lists {listed} of its {self.entries} members" if self.missing else \
                f"is cut short ({listed} members shown)"
            return (f"ipset {self.name} {have} in the paste: whether it holds this one is "
                    "unknown")
        return hit

    @property
    def missing(self) -> int:
        """Members the set has (by its own count) that the paste does not show."""
        shown = len(self.members) + len(self.nomatch)
        return max(0, (self.entries or 0) - shown)


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
        raise ClusterIPError(f"ipset {s.name}: member {shorten(text)!r} does not fit type {s.type}")
    out: list = []
    try:
        for dim, part in zip(s.dimensions, parts):
            if dim == "ip":
                out.append(ipaddress.ip_address(part))
            elif dim == "net":
                out.append(ipaddress.ip_network(part, strict=False))
            elif s.type.startswith("bitmap:"):
                out.append(_port(part))
            else:
                proto, sep, port = part.rpartition(":")
                out.append(((proto or "tcp") if sep else "tcp", _port(port)))
    except ValueError:
        raise ClusterIPError(f"ipset {s.name}: unreadable member {shorten(text)!r}") from None
    return tuple(out)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ValueError(text)
    return int(text)


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


def _build(name: str, typ: str, header: str, members: list[str],
           entries: int | None = None, cut: bool = False) -> IpSet:
    keep, excluded, comments = [], [], []
    for line in members:
        elem, _, opts = line.strip().partition(" ")
        comment = re.search(r'\bcomment "((?:[^"\\]|\\.)*)"', opts)
        if comment:
            comments.append((elem, comment.group(1)))
            opts = opts[:comment.start()] + opts[comment.end():]
        (excluded if re.search(r"(^|\s)nomatch(\s|$)", opts) else keep).append(elem)
    return IpSet(name, typ, _family(header), tuple(keep), tuple(excluded), header,
                 tuple(comments), entries, cut)


def _parse_ipset_save(text: str, source: str) -> dict[str, IpSet]:
    where = source or "dump"
    heads: dict[str, tuple[str, str]] = {}
    members: dict[str, list[str]] = {}
    cut: set[str] = set()  # sets whose members a `...` line stands for
    last = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if is_elision(line):
            cut.add(last)
            continue
        parts = line.split(" ", 3)
        if parts[0] == "create" and len(parts) >= 3:
            heads[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")
            members.setdefault(parts[1], [])
            last = parts[1]
        elif parts[0] == "add" and len(parts) >= 3:
            if parts[1] not in heads:
                raise ClusterIPError(f"{where}:{lineno}: member of unknown set {parts[1]}")
            members[parts[1]].append(" ".join(parts[2:]))
            last = parts[1]
        else:
            raise ClusterIPError(f"{where}:{lineno}: not ipset save output: {raw[:60]!r}")
    try:
        return {n: _build(n, t, h, members[n], cut=n in cut) for n, (t, h) in heads.items()}
    except ClusterIPError as e:
        raise ClusterIPError(f"{where}: {e}") from None


_LIST_KEYS = frozenset(("Name", "Type", "Revision", "Header", "Size in memory", "References",
                        "Number of entries"))


def _parse_ipset_list(text: str, source: str) -> dict[str, IpSet]:
    """`ipset list` blocks. Members run to the next `Name:`, across blank lines (where an
    elided `...` was); fewer members than `Number of entries` marks the set incomplete."""
    where = source or "dump"
    out: dict[str, IpSet] = {}
    block: dict[str, str] = {}
    members: list[str] = []
    in_members = elided = False

    def close() -> None:
        if block:
            if "Name" not in block or "Type" not in block:
                raise ClusterIPError(f"{where}: ipset list block without Name/Type")
            count = block.get("Number of entries", "")
            try:
                out[block["Name"]] = _build(block["Name"], block["Type"],
                                            block.get("Header", ""), members,
                                            int(count) if count.isdigit() else None, elided)
            except ClusterIPError as e:
                raise ClusterIPError(f"{where}: {e}") from None

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        key, colon, value = line.partition(":")
        if line.startswith("Name: "):
            close()
            block, members, in_members, elided = {"Name": line[6:].strip()}, [], False, False
        elif not line.strip():
            continue
        elif line == "Members:" and block:
            in_members = True
        elif colon and key in _LIST_KEYS and block and not in_members:
            block[key] = value.strip()
        elif in_members and is_elision(line):
            elided = True
        elif in_members:
            members.append(line.strip())
        else:
            raise ClusterIPError(f"{where}:{lineno}: not ipset list output: {shorten(raw)!r}; run "
                                 "`ipset list` (or `ipset save`) on the node")
    close()
    return out
