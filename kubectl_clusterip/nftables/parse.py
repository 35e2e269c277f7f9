"""Parse `nft -j list ruleset` (preferred) and `nft list ruleset` text into one model.

Both inputs end up as libnftables-json expressions (the JSON input as nft printed it, the
text parsed into the same shapes), so the walker has one vocabulary and a rule read from
text or from JSON gives the same answer. Rule text shown to people is what nft printed
(text input) or rendered back to nft syntax from the JSON (JSON input).

Big rulesets are the norm (one chain per endpoint), so work is deferred: text rules are
parsed when their chain is first walked, and set/map elements are indexed on first lookup.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from kubectl_clusterip.model import ClusterIPError

# nft's symbolic base-chain priorities (ip, ip6 and inet families).
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50,
              "srcnat": 100}
VERDICT_WORDS = ("accept", "drop", "return", "continue", "queue")
_BARE_META = {"mark", "iif", "oif", "iifname", "oifname", "iiftype", "oiftype", "skuid",
              "skgid", "priority", "nftrace", "rtclassid", "ibrname", "obrname", "pkttype",
              "cpu", "iifgroup", "oifgroup", "cgroup"}
_PROTOCOLS = {"ip", "ip6", "tcp", "udp", "sctp", "th", "icmp", "icmpv6", "ether", "vlan",
              "arp", "udplite", "dccp", "ah", "esp", "comp"}
_FIELDS = {"saddr", "daddr", "sport", "dport", "protocol", "nexthdr", "length", "ttl",
           "hoplimit", "flags", "type", "code", "id", "version", "dscp", "ecn", "checksum",
           "sequence", "ackseq", "window", "urgptr", "doff", "frag-off", "hdrlength", "vtag",
           "flowlabel", "mtu", "gateway", "spi", "ether", "vid", "pcp"}
_NAT_MAP_KEYS = _PROTOCOLS | {"meta", "ct", "numgen", "jhash", "symhash"}  # `dnat to K map`
_OPS = {"==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "eq": "==",
        "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}
_BINOPS = {"&": "&", "|": "|", "^": "^", "and": "&", "or": "|", "xor": "^", "<<": "<<",
           ">>": ">>"}
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{},]|[^\s{},"]+')
_HANDLE = re.compile(r"\s*#\s*handle\s+(\d+)\s*$")
_DURATION = re.compile(r"(\d+)(ms|d|h|m|s)")


# --------------------------------------------------------------------------- the model


@dataclass
class Element:
    """One set or map element: key (scalar, prefix/range dict, or tuple for a concatenation)."""

    key: Any
    value: Any = None  # map data: a verdict dict ({"goto": {"target": …}}) or a value
    comment: str | None = None
    expires: int | None = None


@dataclass
class NftSet:
    family: str
    table: str
    name: str
    key_types: tuple[str, ...] = ()
    map_type: str | None = None  # "verdict", a data type, or None for a plain set
    flags: tuple[str, ...] = ()
    timeout: int | None = None
    comment: str | None = None
    _raw: Any = field(default=None, repr=False)  # JSON "elem" list or the text between braces
    _elements: list[Element] | None = field(default=None, repr=False)
    _exact: dict | None = field(default=None, repr=False)
    _intervals: list[Element] | None = field(default=None, repr=False)

    @property
    def is_map(self) -> bool:
        return self.map_type is not None

    @property
    def elements(self) -> list[Element]:
        if self._elements is None:
            self._elements = _elements_from(self._raw)
            self._raw = None
        return self._elements

    def lookup(self, key: Any) -> Element | None:
        """The element whose key matches (exact, prefix, range, per concat component)."""
        if self._exact is None:
            if type(self._raw) is str:  # text not yet parsed: one lookup need not parse it all
                found = _find_text_element(self._raw, key)
                if found is not None:
                    return found
            self._exact, self._intervals = {}, []
            for e in self.elements:
                k = _exact_key(e.key)
                if k is None:
                    self._intervals.append(e)
                else:
                    self._exact.setdefault(k, e)
        hit = self._exact.get(norm_key(key))
        if hit is not None:
            return hit
        assert self._intervals is not None
        for e in self._intervals:
            if value_matches(key, e.key):
                return e
        return None


def _exact_key(k: Any) -> Any:
    """An element key as the exact-match index holds it; None for a prefix or range."""
    if type(k) is tuple:
        if any(type(x) is dict for x in k):
            return None
        if any(type(x) is str and ":" in x for x in k):
            return norm_key(k)
    elif type(k) is dict:
        return None
    elif type(k) is str and ":" in k:
        return _canon_ip(k)
    return k


def _find_text_element(body: str, key: Any) -> Element | None:
    """The element keyed exactly `key`, read from the raw `{ … }` text alone.

    A trace looks up one key in a 10,000-element map; finding its text (str.find, in C)
    and parsing that one element beats parsing them all. Only a sure hit counts: an element
    list the full parse reads the same way (no quotes or nested braces), the key spelled as
    nft prints it, after `{` or `,` and parsing back to the same key. Anything else, a miss
    included (a prefix or range may still match), is None: the caller parses every element.
    """
    parts = key if type(key) is tuple else (key,)
    if '"' in body or not all(type(p) in (str, int) for p in parts):
        return None
    inner = body.strip()
    close = inner.find("}")
    if not inner.startswith("{") or "{" in inner[1:close]:
        return None
    spelled = " . ".join(str(p) for p in parts)
    pos = inner.find(spelled)
    while pos >= 0:
        end = pos + len(spelled)
        if inner[end:end + 1] in (" ", "\t", "\n", ",", "}", ":") and \
                inner[max(0, pos - 64):pos].rstrip().endswith(("{", ",")):
            stop = min((x for x in (inner.find(",", end), inner.find("}", end)) if x >= 0),
                       default=len(inner))
            items = _fast_elements(inner[pos:stop])
            if not items:
                return None
            (e,) = _elements_from(items)
            return e if _exact_key(e.key) == norm_key(key) else None
        pos = inner.find(spelled, end)
    return None


class Rule:
    """One rule; `expr` and `text` are each computed from the other when first asked for."""

    __slots__ = ("_expr", "_text", "chain", "comment", "family", "handle", "table")

    def __init__(self, family: str, table: str, chain: str, handle: int | None = None,
                 comment: str | None = None, expr: list | None = None,
                 text: str | None = None) -> None:
        self.family, self.table, self.chain = family, table, chain
        self.handle, self.comment = handle, comment
        self._expr, self._text = expr, text

    @property
    def expr(self) -> list:
        if self._expr is None:
            self._expr, comment = parse_rule_text(self._text or "")
            if comment is not None and self.comment is None:
                self.comment = comment
        return self._expr

    @property
    def text(self) -> str:
        """The rule as `nft list ruleset` prints it (without the handle)."""
        if self._text is None:
            self._text = render_rule(self.expr, self.comment, self.family)
        return self._text

    def __repr__(self) -> str:
        return f"Rule({self.table} {self.chain}: {self.text})"


class Chain:
    """A chain; its rules are read from the dump only when the walk first enters it."""

    __slots__ = (
        "_rules",
        "_spans",
        "_src",
        "comment",
        "family",
        "handle",
        "hook",
        "name",
        "policy",
        "priority",
        "table",
        "type",
    )

    def __init__(self, family: str, table: str, name: str, handle: int | None = None) -> None:
        self.family, self.table, self.name, self.handle = family, table, name, handle
        self.type: str | None = None  # filter | nat | route, for base chains
        self.hook: str | None = None
        self.priority: int | None = None
        self.policy = "accept"
        self.comment: str | None = None
        self._rules: list[Rule] | None = []
        self._src: str | None = None  # the dump text the spans point into
        self._spans: list[tuple[int, int]] = []  # JSON rule objects, or one text body

    @property
    def is_base(self) -> bool:
        return self.hook is not None

    @property
    def rules(self) -> list[Rule]:
        if self._rules is None:
            self._rules = self._load()
        return self._rules

    def defer(self, src: str, span: tuple[int, int]) -> None:
        """Remember where a rule (JSON) or the chain body (text) is; read it on first use."""
        self._src = src
        self._spans.append(span)
        self._rules = None

    def forget(self) -> None:
        """Drop the parsed rules (they can be read again): keeps a full scan's memory flat."""
        if self._src is not None:
            self._rules = None

    def _load(self) -> list[Rule]:
        src = self._src or ""
        out: list[Rule] = []
        for s, e in self._spans:
            if src[s] == "{":
                o = json.loads(src[s:e])["rule"]
                out.append(Rule(self.family, self.table, self.name, o.get("handle"),
                                o.get("comment"), o.get("expr") or []))
                continue
            for line in src[s:e].splitlines():
                line = line.strip()
                if not line or line == "}" or line.startswith(("type ", "comment ", "policy ",
                                                               "#")):
                    continue
                handle = None
                # A handle follows the line's last "#": match there, not at every position.
                hash_at = line.rfind("#")
                m = _HANDLE.match(line, hash_at) if hash_at >= 0 else None
                if m:
                    handle = int(m.group(1))
                    line = line[: m.start()].rstrip()
                out.append(Rule(self.family, self.table, self.name, handle, None, None, line))
        return out

    def __repr__(self) -> str:
        return f"Chain({self.family} {self.table} {self.name}, hook={self.hook})"


@dataclass
class Table:
    family: str
    name: str
    handle: int | None = None
    comment: str | None = None
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)  # sets and maps share one namespace

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"


@dataclass
class Ruleset:
    tables: dict[tuple[str, str], Table] = field(default_factory=dict)
    source: str = ""
    nft_version: str | None = None
    input_format: str = "json"  # json | text

    def table(self, family: str, name: str) -> Table | None:
        return self.tables.get((family, name))

    def _table(self, family: str, name: str) -> Table:
        t = self.tables.get((family, name))
        if t is None:
            t = self.tables[(family, name)] = Table(family, name)
        return t

    def _chain(self, family: str, table: str, name: str) -> Chain:
        t = self._table(family, table)
        ch = t.chains.get(name)
        if ch is None:
            ch = t.chains[name] = Chain(family, table, name)
        return ch


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cycle collector while building many objects that form no cycles.

    Each full collection walks every live object: with 60,000 chains alive, building the
    model or walking every service spent a fifth or more of its time in collections that free
    nothing. Reference counting still frees everything as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- values


@lru_cache(maxsize=262144)
def _canon_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def norm_key(key: Any) -> Any:
    """A hashable, canonical form of a value or concatenation (IPv6 spelled one way)."""
    if isinstance(key, (list, tuple)):
        return tuple(norm_key(k) for k in key)
    if isinstance(key, dict) and "concat" in key:
        return tuple(norm_key(k) for k in key["concat"])
    if isinstance(key, str) and ":" in key:
        return _canon_ip(key)
    return key


@lru_cache(maxsize=65536)
def _network(addr: str, length: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{addr}/{length}", strict=False)


@lru_cache(maxsize=65536)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def value_matches(value: Any, pattern: Any) -> bool:
    """Does a packet value (scalar or tuple) match a set key, prefix, range or concat?"""
    if type(pattern) is int:  # the common cases first: numgen indices, ports, marks
        return value == pattern
    if type(pattern) is str and type(value) is str:
        return value == pattern or norm_key(value) == norm_key(pattern)
    if isinstance(pattern, tuple) or (isinstance(pattern, dict) and "concat" in pattern):
        parts = pattern if isinstance(pattern, tuple) else tuple(pattern["concat"])
        vals = value if isinstance(value, tuple) else (value,)
        return len(parts) == len(vals) and all(value_matches(v, p) for v, p in zip(vals, parts))
    if isinstance(pattern, dict):
        if "prefix" in pattern:
            p = pattern["prefix"]
            addr = _address(value) if isinstance(value, str) else None
            if addr is None:
                return False
            net = _network(p["addr"], int(p["len"]))
            return addr.version == net.version and addr in net
        if "range" in pattern:
            lo, hi = pattern["range"]
            if isinstance(value, int) and isinstance(lo, int):
                return lo <= value <= hi
            try:
                a, lo_a, hi_a = (ipaddress.ip_address(x) for x in (value, lo, hi))
            except (ValueError, TypeError):
                return False
            return a.version == lo_a.version and lo_a <= a <= hi_a  # type: ignore[operator]
        if "elem" in pattern:
            return value_matches(value, pattern["elem"].get("val"))
        if "set" in pattern:
            return any(value_matches(value, _elem_key(e)) for e in pattern["set"])
        return False
    if isinstance(value, str) and isinstance(pattern, str):
        return value == pattern or norm_key(value) == norm_key(pattern)
    return value == pattern


def _elem_key(e: Any) -> Any:
    if isinstance(e, list) and len(e) == 2:  # [key, data] in an anonymous map
        e = e[0]
    if isinstance(e, dict) and "elem" in e:
        return e["elem"].get("val")
    return e


def _elements_from(raw: Any) -> list[Element]:
    if raw is None:
        return []
    if isinstance(raw, tuple):  # (dump text, start, end) of a JSON "elem" list
        raw = json.loads(raw[0][raw[1]:raw[2]])
    if isinstance(raw, str):
        raw = _parse_elements_text(raw)
    out = []
    for item in raw:
        value = None
        if isinstance(item, list) and len(item) == 2:
            item, value = item
        comment = expires = None
        if isinstance(item, dict) and "elem" in item:
            inner = item["elem"]
            comment, expires = inner.get("comment"), inner.get("expires")
            item = inner.get("val")
        if isinstance(item, dict) and "concat" in item:
            item = tuple(item["concat"])
        out.append(Element(item, value, comment, expires))
    return out


def parse_duration(text: str) -> int:
    """'3h', '10800s', '2h59m58s500ms' -> whole seconds."""
    if text.isdigit():
        return int(text)
    total = 0.0
    for n, unit in _DURATION.findall(text):
        total += int(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return int(total)


# --------------------------------------------------------------------------- JSON input


_TOP_KINDS = "table|chain|rule|set|map|element|flowtable|counter|quota|limit|secmark|synproxy"
# A top-level object: `{"kind": {"family": "…", "table"|"name": "…"[, "chain"|…: "…"]`.
# Quotes inside JSON strings are escaped and nested objects never start with "family"
# under these kinds, so this finds exactly the items, with their table and chain names.
_JSON_ITEM = re.compile(r'\{"(' + _TOP_KINDS + r')": \{"family": "(\w+)", "(?:table|name)": '
                        r'"([^"\\]*)"(?:, "(?:chain|name|table)": "([^"\\]*)")?')


def parse_json(text: str, source: str = "") -> Ruleset:
    """`nft -j list ruleset` output (libnftables-json schema).

    nft prints one compact line; then rule objects are only located here (by their chain)
    and decoded when walked, which keeps a 50,000-endpoint dump fast and small. Any other
    layout (pretty-printed, reordered keys) is decoded in full.
    """
    with gc_paused():
        rs = _parse_json_lazy(text, source) if text.startswith('{"nftables": [') else None
    if rs is not None:
        return rs
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ClusterIPError(f"{source or 'nft JSON'}: not valid JSON: {e}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ClusterIPError(f"{source or 'nft JSON'}: no top-level \"nftables\" list")
    rs = Ruleset(source=source, input_format="json")
    for item in items:
        if isinstance(item, dict) and len(item) == 1:
            (kind, o), = item.items()
            _json_item(rs, kind, o)
    return rs


def _parse_json_lazy(text: str, source: str) -> Ruleset | None:
    items = list(_JSON_ITEM.finditer(text))
    close = text.rfind("]")
    if not items or close < 0:
        return None
    rs = Ruleset(source=source, input_format="json")
    head = text[len('{"nftables": ['):items[0].start()].rstrip().rstrip(",")
    if head:
        try:
            meta = json.loads(head)
        except ValueError:
            return None
        rs.nft_version = (meta.get("metainfo") or {}).get("version")
    ends = [m.start() - 2 for m in items[1:]] + [close]
    chains: dict[tuple[str, str], dict[str, Chain]] = {}
    for m, e in zip(items, ends):
        s = m.start()
        if text[e - 2:e] != "}}":
            return None  # not the compact layout this reader expects
        kind, family, first, second = m.groups()
        if kind == "rule" and second is not None:
            by_name = chains.get((family, first))
            if by_name is None:
                by_name = chains[(family, first)] = rs._table(family, first).chains
            ch = by_name.get(second)
            if ch is None:
                ch = by_name[second] = Chain(family, first, second)
            if ch._rules is not None:
                ch._rules, ch._src = None, text
            ch._spans.append((s, e))
            continue
        if kind == "chain" and second is not None and text.find('"hook"', m.end(), e) < 0:
            tail = text[m.end():e - 2]
            if tail.startswith(', "handle": ') and tail[12:].isdigit():
                ch = rs._chain(family, first, second)
                ch.handle = int(tail[12:])
                continue
        if kind in ("set", "map"):
            elem = text.find(', "elem": [', s, e)
            if elem > 0:
                o = json.loads(text[s:elem] + "}}")[kind]
                _json_item(rs, kind, o)
                rs._table(o["family"], o["table"]).sets[o["name"]]._raw = (text, elem + 10,
                                                                          e - 2)
                continue
        try:
            item = json.loads(text[s:e])
        except ValueError:
            return None
        _json_item(rs, kind, item[kind])
    return rs


def _json_item(rs: Ruleset, kind: str, o: dict) -> None:
    if kind == "rule":
        ch = rs._chain(o["family"], o["table"], o["chain"])
        ch.rules.append(Rule(ch.family, ch.table, ch.name, o.get("handle"), o.get("comment"),
                             o.get("expr") or []))
    elif kind == "chain":
        ch = rs._chain(o["family"], o["table"], o["name"])
        ch.handle, ch.comment = o.get("handle"), o.get("comment")
        if "hook" in o:
            ch.type, ch.hook = o.get("type"), o.get("hook")
            ch.priority = _priority(o.get("prio", 0))
            ch.policy = o.get("policy", "accept")
    elif kind in ("set", "map"):
        t = rs._table(o["family"], o["table"])
        types = o.get("type")
        types = tuple(types) if isinstance(types, list) else (types,) if types else ()
        flags = o.get("flags") or ()
        t.sets[o["name"]] = NftSet(
            o["family"], o["table"], o["name"], types,
            o.get("map") if kind == "map" else None,
            tuple([flags] if isinstance(flags, str) else flags), o.get("timeout"),
            o.get("comment"), _raw=o.get("elem"))
    elif kind == "table":
        t = rs._table(o["family"], o["name"])
        t.handle, t.comment = o.get("handle"), o.get("comment")
    elif kind == "metainfo":
        rs.nft_version = o.get("version")


def _priority(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value).replace(" ", "")
    m = re.match(r"^([a-z]+)?([+-]\d+)?$", text)
    if not m:
        raise ClusterIPError(f"unknown chain priority {value!r}")
    base = PRIORITIES.get(m.group(1), 0) if m.group(1) else 0
    return base + int(m.group(2) or 0)


# --------------------------------------------------------------------------- text input


# Every object header ends its line with `{` (maybe `{ # handle N`); rule lines never do.
_TEXT_OPEN = re.compile(r" \{(?:[ \t]*#[ \t]*handle[ \t]+\d+)?[ \t]*$", re.M)
_TEXT_HEADER = re.compile(
    r"[ \t]*(?:(table)[ \t]+(\w+)[ \t]+|(chain|set|map|flowtable|ct[ \t]+\w+|counter|quota|"
    r"limit|secmark|synproxy)[ \t]+)(\S+|\"[^\"]*\")[ \t]*\{[ \t]*(?:#[ \t]*handle[ \t]+(\d+))?"
    r"[ \t]*$")


def parse_text(text: str, source: str = "") -> Ruleset:
    """`nft list ruleset` (also with -a handles).

    Object headers are found in one pass; a chain's rules stay text until the walk enters
    the chain, and set elements until the first lookup.
    """
    with gc_paused():
        return _parse_text(text, source)


def _parse_text(text: str, source: str) -> Ruleset:
    rs = Ruleset(source=source, input_format="text")
    headers = []
    for m in _TEXT_OPEN.finditer(text):
        start = text.rfind("\n", 0, m.start()) + 1
        h = _TEXT_HEADER.match(text, start, m.end())
        if h is not None:
            headers.append((h, m.end() + 1))
    if not headers:
        if text.strip():
            raise ClusterIPError(f"{source or 'nft ruleset'}: no 'table FAMILY NAME {{' line")
        return rs
    if text.count("{") != text.count("}"):
        raise ClusterIPError(f"{source or 'nft ruleset'}: unbalanced braces (truncated dump?)")
    table: Table | None = None
    ends = [h.start() for h, _ in headers[1:]] + [len(text)]
    for (m, body_start), end in zip(headers, ends):
        is_table, family, kind, name, handle = m.groups()
        if name[0] == '"':
            name = _unquote(name)
        if is_table:
            table = rs._table(family, name)
            table.handle = int(handle) if handle else None
            _table_lines(table, text[body_start:end])
            continue
        if table is None:
            raise ClusterIPError(f"{source or 'nft ruleset'}: {kind} {name} outside a table")
        if kind == "chain":
            ch = table.chains.get(name)
            if ch is None:
                ch = table.chains[name] = Chain(table.family, table.name, name)
            ch.handle = int(handle) if handle else None
            if text[body_start:body_start + 12].lstrip().startswith(("type ", "comment ")):
                _chain_header(ch, text, (body_start, end))
            ch._src, ch._rules = text, None
            ch._spans.append((body_start, end))
        elif kind in ("set", "map"):
            st = NftSet(table.family, table.name, name, map_type="" if kind == "map" else None)
            _set_body(st, text[body_start:end])
            table.sets[name] = st
    return rs


def _handle_of(line: str) -> int | None:
    m = _HANDLE.search(line)
    return int(m.group(1)) if m else None


def _table_lines(table: Table, chunk: str) -> None:
    for line in chunk.splitlines():
        m = re.match(r'^\s*comment\s+(".*")\s*$', line)
        if m:
            table.comment = _unquote(m.group(1))


def _chain_header(ch: Chain, text: str, body: tuple[int, int]) -> None:
    """Base-chain type/hook/priority and the chain comment lead the body."""
    pos = body[0]
    for _ in range(3):
        nl = text.find("\n", pos + 1, body[1])
        line = text[pos:nl if nl >= 0 else body[1]].strip()
        if line.startswith("type "):
            m = re.match(r"^type\s+(\w+)\s+hook\s+(\w+)(?:\s+device\s+\S+)?\s+priority\s+"
                         r"([^;]+);(?:\s*policy\s+(\w+);)?", line)
            if m:
                ch.type, ch.hook = m.group(1), m.group(2)
                ch.priority = _priority(m.group(3).strip())
                ch.policy = m.group(4) or "accept"
        elif line.startswith("comment "):
            ch.comment = _unquote(line[8:].strip())
        elif line:
            return
        if nl < 0:
            return
        pos = nl


def _set_body(st: NftSet, body: str) -> None:
    elem = body.find("elements = ")
    head = body if elem < 0 else body[:elem]
    for line in head.splitlines():
        line = line.strip()
        if line and line != "}":
            _set_line(st, line)
    if elem >= 0:
        st._raw = body[elem + len("elements = "):].strip()


def _set_line(s: NftSet, line: str) -> None:
    key, _, rest = line.partition(" ")
    rest = rest.strip()
    if key in ("type", "typeof"):
        data = None
        if " : " in rest:
            rest, data = (x.strip() for x in rest.rsplit(" : ", 1))
        s.key_types = tuple(x.strip() for x in rest.split(" . "))
        if s.map_type is not None:
            s.map_type = data or ""
    elif key == "flags":
        s.flags = tuple(x.strip() for x in rest.split(","))
    elif key == "timeout":
        s.timeout = parse_duration(rest)
    elif key == "comment":
        s.comment = _unquote(rest)
    elif key == "elements":
        body = rest.lstrip("=").strip()
        s._raw = body


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1].replace('\\"', '"')
    return s


# --------------------------------------------------------------------------- rule text


class _Tokens:
    __slots__ = ("i", "toks")

    def __init__(self, text: str) -> None:
        # Without quotes, braces or commas the tokens are the words: str.split is twice as
        # fast as the regex. Two None sentinels: peek() and peek(1) past the end need no
        # bounds check (they run millions of times over a big ruleset).
        plain = not ('"' in text or "{" in text or "}" in text or "," in text)
        self.toks: list[str | None] = [*(text.split() if plain else _TOKEN.findall(text)),
                                       None, None]
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        return self.toks[self.i + k]

    def next(self) -> str:
        t = self.toks[self.i]
        if t is None:
            raise ValueError("unexpected end of rule")
        self.i += 1
        return t

    def accept(self, *words: str) -> str | None:
        t = self.peek()
        if t in words:
            self.i += 1
            return t
        return None


def parse_rule_text(text: str) -> tuple[list, str | None]:
    """One rule as nft prints it -> (libnftables-json statements, comment).

    What cannot be parsed becomes {"unparsed": text}: the walker treats it as undecided
    instead of guessing.
    """
    try:
        return _parse_rule(_Tokens(text))
    except (ValueError, KeyError, IndexError) as e:
        return [{"unparsed": {"text": text, "error": str(e)}}], None


def _parse_rule(t: _Tokens) -> tuple[list, str | None]:
    stmts: list = []
    comment = None
    while (w := t.peek()) is not None:
        if w in ("jump", "goto"):
            t.next()
            stmts.append({w: {"target": _unquote(t.next())}})
        elif w in VERDICT_WORDS:
            t.next()
            stmts.append({w: None})
        elif w == "reject":
            t.next()
            if t.accept("with"):
                kind = t.next()
                what = t.next()
                if what == "type":
                    what = t.next()
                stmts.append({"reject": {"type": kind, "expr": what}})
            else:
                stmts.append({"reject": None})
        elif w == "counter":
            t.next()
            c: dict = {}
            while t.peek() in ("packets", "bytes"):
                k = t.next()
                c[k] = int(t.next())
            stmts.append({"counter": c or None})
        elif w == "comment":
            t.next()
            comment = _unquote(t.next())
        elif w == "masquerade":
            t.next()
            m: dict = {}
            while t.peek() in ("fully-random", "random", "persistent", "to"):
                flag = t.next()
                if flag == "to":
                    m["port"] = int(t.next().lstrip(":"))
                    continue
                m.setdefault("flags", []).append(flag)
                while t.accept(","):
                    m["flags"].append(t.next())
            if "flags" in m and len(m["flags"]) == 1:
                m["flags"] = m["flags"][0]
            stmts.append({"masquerade": m or None})
        elif w in ("dnat", "snat"):
            stmts.append(_parse_nat(t))
        elif w in ("update", "add", "delete") and (t.peek(1) or "").startswith("@"):
            op = t.next()
            name = t.next()
            if t.next() != "{":
                raise ValueError("expected { after set name")
            elem = _parse_concat(t)
            while t.peek() not in ("}", None):
                t.next()  # timeout/counter options of the element
            t.next()
            stmts.append({"set": {"op": op, "elem": elem, "set": name}})
        elif w == "log":
            t.next()
            opts: dict = {}
            while t.peek() in ("prefix", "level", "group", "flags", "snaplen"):
                k = t.next()
                opts[k] = _unquote(t.next())
            stmts.append({"log": opts or None})
        elif w == "notrack":
            t.next()
            stmts.append({"notrack": None})
        elif w == "limit":
            words = [t.next()]
            while t.peek() not in (None, *VERDICT_WORDS, "jump", "goto", "counter",
                                   "comment", "log", "drop", "reject"):
                words.append(t.next())
            stmts.append({"limit": {"text": " ".join(words)}})
        else:
            stmts.append(_parse_expr_stmt(t))
    return stmts, comment


def _parse_nat(t: _Tokens) -> dict:
    kind = t.next()
    body: dict = {}
    if t.peek() in ("ip", "ip6") and t.peek(1) == "to":
        body["family"] = t.next()
    if t.next() != "to":
        raise ValueError(f"expected 'to' after {kind}")
    if t.peek() in _NAT_MAP_KEYS:
        key = _parse_concat(t)
        if t.next() != "map":
            raise ValueError("expected map")
        body["addr"] = {"map": {"key": key, "data": _parse_value(t)}}
    else:
        addr, port = _split_addr_port(t.next())
        body["addr"] = addr
        if port is not None:
            body["port"] = port
    while t.peek() in ("fully-random", "random", "persistent"):
        body.setdefault("flags", []).append(t.next())
    return {kind: body}


def _split_addr_port(tok: str) -> tuple[Any, int | None]:
    if tok.startswith("["):
        host, _, rest = tok[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if tok.startswith(":"):
        return None, int(tok[1:])
    if tok.count(":") == 1:
        host, _, port = tok.partition(":")
        return host, int(port)
    return tok, None


def _parse_expr_stmt(t: _Tokens) -> dict:
    left = _parse_concat(t)
    w = t.peek()
    if w == "set":
        t.next()
        return {"mangle": {"key": left, "value": _parse_operand(t)}}
    if w == "vmap":
        t.next()
        return {"vmap": {"key": left, "data": _parse_value(t)}}
    if w in _OPS:
        op = _OPS[t.next()]
        return {"match": {"op": op, "left": left, "right": _parse_value(t)}}
    if w is None:
        raise ValueError("expression without a value")
    flags = isinstance(left, dict) and "ct" in left and left["ct"].get("key") in (
        "state", "status")
    return {"match": {"op": "in" if flags else "==", "left": left, "right": _parse_value(t)}}


def _parse_concat(t: _Tokens) -> Any:
    parts = [_parse_operand(t)]
    while t.peek() == ".":
        t.next()
        parts.append(_parse_operand(t))
    return parts[0] if len(parts) == 1 else {"concat": parts}


def _parse_operand(t: _Tokens) -> Any:
    left = _parse_primary(t)
    while t.peek() in _BINOPS:
        op = _BINOPS[t.next()]
        left = {op: [left, _parse_primary(t)]}
    return left


def _parse_primary(t: _Tokens) -> Any:
    w = t.next()
    if w in _PROTOCOLS and t.peek() in _FIELDS:
        return {"payload": {"protocol": w, "field": t.next()}}
    if w == "meta":
        return {"meta": {"key": t.next()}}
    if w in _BARE_META:
        return {"meta": {"key": w}}
    if w == "ct":
        k = t.next()
        if k in ("original", "reply"):
            return {"ct": {"key": t.next(), "dir": k}}
        return {"ct": {"key": k}}
    if w == "fib":
        flags = [t.next()]
        while t.peek() == ".":
            t.next()
            flags.append(t.next())
        return {"fib": {"result": t.next(), "flags": flags}}
    if w == "numgen":
        mode = t.next()
        if t.next() != "mod":
            raise ValueError("expected mod")
        ng = {"mode": mode, "mod": int(t.next()), "offset": 0}
        if t.accept("offset"):
            ng["offset"] = int(t.next())
        return {"numgen": ng}
    if w in ("jhash", "symhash"):
        raise ValueError(f"{w} is not modelled")
    return _literal(w)


def _parse_value(t: _Tokens) -> Any:
    """A right-hand side: @set, an anonymous set/map, or a literal (maybe a list or concat)."""
    w = t.peek()
    if w is not None and w.startswith("@"):
        return t.next()
    if w == "{":
        t.next()
        return {"set": _parse_set_body(t)}
    v = _parse_concat(t)
    if t.peek() == ",":  # ct state established,related
        items = [v]
        while t.accept(","):
            items.append(_literal(t.next()))
        return items
    return v


def _parse_set_body(t: _Tokens) -> list:
    items: list = []
    while True:
        if t.peek() == "}":
            t.next()
            return items
        key = _parse_concat(t)
        attrs: dict = {}
        while t.peek() in ("comment", "timeout", "expires", "counter"):
            k = t.next()
            if k == "counter":
                while t.peek() in ("packets", "bytes"):
                    t.next()
                    t.next()
                continue
            v = t.next()
            attrs[k] = _unquote(v) if k == "comment" else parse_duration(v)
        if attrs:
            key = {"elem": {"val": key, **attrs}}
        if t.peek() == ":":
            t.next()
            items.append([key, _parse_data(t)])
        else:
            items.append(key)
        if not t.accept(","):
            if t.next() != "}":
                raise ValueError("expected , or } in set")
            return items


def _parse_data(t: _Tokens) -> Any:
    w = t.peek()
    if w in ("jump", "goto"):
        t.next()
        return {w: {"target": _unquote(t.next())}}
    if w in VERDICT_WORDS:
        t.next()
        return {w: None}
    return _parse_concat(t)


def _parse_elements_text(body: str) -> list:
    inner = body.strip()
    close = inner.find("}")
    if inner.startswith("{") and '"' not in inner and "{" not in inner[1:close]:
        fast = _fast_elements(inner[1:close])
        if fast is not None:
            return fast
    t = _Tokens(body)
    if t.next() != "{":
        raise ClusterIPError(f"set elements: expected '{{', got {body[:40]!r}")
    return _parse_set_body(t)


def _fast_elements(inner: str) -> list | None:
    """Plain `a . b . c : goto x, …` lists (no comments or options) without the tokenizer."""
    out: list = []
    for item in inner.split(","):
        key, sep, data = item.partition(" : ")
        parts = key.split()
        if not parts:
            continue
        if any(p in ("timeout", "expires", "counter") for p in parts):
            return None
        vals = [_literal(p) for p in parts if p != "."]
        k: Any = vals[0] if len(vals) == 1 else {"concat": vals}
        if not sep:
            out.append(k)
            continue
        words = data.split()
        if len(words) == 2 and words[0] in ("goto", "jump"):
            out.append([k, {words[0]: {"target": words[1]}}])
        elif len(words) == 1 and words[0] in VERDICT_WORDS:
            out.append([k, {words[0]: None}])
        else:
            return None
    return out


_INT = re.compile(r"^(0x[0-9a-fA-F]+|\d+)$")


def _literal(tok: str) -> Any:
    if tok.startswith('"'):
        return _unquote(tok)
    if tok.isdecimal() or (tok.startswith("0x") and _INT.match(tok)):  # _INT, regex-free
        return int(tok, 0)
    if "/" in tok:
        addr, _, length = tok.partition("/")
        if length.isdigit():
            return {"prefix": {"addr": addr, "len": int(length)}}
    if "-" in tok:
        lo, _, hi = tok.partition("-")
        if lo.isdigit() and hi.isdigit():
            return {"range": [int(lo), int(hi)]}
        if _looks_ip(lo) and _looks_ip(hi):
            return {"range": [lo, hi]}
    return tok


def _looks_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- rendering


def render_rule(expr: list, comment: str | None = None, family: str = "ip") -> str:
    """Statements back to nft syntax, as `nft list ruleset` prints them."""
    parts = [render_stmt(s, family) for s in expr]
    if comment:
        parts.append(f'comment "{comment}"')
    return " ".join(p for p in parts if p)


def render_stmt(s: dict, family: str = "ip") -> str:
    (kind, v), = s.items()
    if kind == "match":
        left = render_expr(v["left"])
        right = render_expr(v["right"], _is_mark(v["left"]), _is_ifname(v["left"]))
        op = v.get("op", "==")
        if op == "in" or (op == "==" and not _is_binop(v["left"])):
            return f"{left} {right}"
        return f"{left} {op} {right}"
    if kind in ("jump", "goto"):
        return f"{kind} {v['target']}"
    if kind in VERDICT_WORDS or kind == "notrack":
        return kind
    if kind == "reject":
        if not v:
            return "reject"
        default = {"ip": ("icmp", "port-unreachable"), "ip6": ("icmpv6", "port-unreachable"),
                   "inet": ("icmpx", "port-unreachable")}.get(family)
        if (v.get("type"), v.get("expr")) == default or (v.get("type") == "icmpx" and
                                                         v.get("expr") == "port-unreachable"):
            return "reject"
        if v.get("type") == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {v.get('type')} {v.get('expr')}".rstrip(" None")
    if kind == "counter":
        if not v:
            return "counter"
        return f"counter packets {v.get('packets', 0)} bytes {v.get('bytes', 0)}"
    if kind == "vmap":
        return f"{render_expr(v['key'])} vmap {render_expr(v['data'])}"
    if kind == "mangle":
        mark = _is_mark(v["key"])
        return f"{render_expr(v['key'])} set {render_expr(v['value'], mark)}"
    if kind == "masquerade":
        out = "masquerade"
        if v and v.get("port") is not None:
            out += f" to :{v['port']}"
        if v and v.get("flags"):
            flags = v["flags"]
            out += " " + (flags if isinstance(flags, str) else ",".join(flags))
        return out
    if kind in ("dnat", "snat"):
        out = kind + (f" {v['family']}" if v.get("family") else "") + " to "
        addr = v.get("addr")
        if isinstance(addr, dict) and "map" in addr:
            out += f"{render_expr(addr['map']['key'])} map {render_expr(addr['map']['data'])}"
        else:
            host = render_expr(addr) if addr is not None else ""
            if v.get("port") is not None:
                host = f"[{host}]" if ":" in host else host
                out += f"{host}:{v['port']}"
            else:
                out += host
        if v.get("flags"):
            flags = v["flags"]
            out += " " + (flags if isinstance(flags, str) else ",".join(flags))
        return out
    if kind == "set":
        return f"{v['op']} {v['set']} {{ {render_expr(v['elem'])} }}"
    if kind == "log":
        if not v:
            return "log"
        return "log " + " ".join(f'{k} "{x}"' if k == "prefix" else f"{k} {x}"
                                 for k, x in v.items())
    if kind == "limit":
        return v.get("text", "limit") if isinstance(v, dict) else "limit"
    if kind == "unparsed":
        return v["text"]
    return f"<{kind} {json.dumps(v)}>"


def render_expr(e: Any, mark: bool = False, quote: bool = False) -> str:
    if isinstance(e, bool):
        return str(e).lower()
    if isinstance(e, int):
        return f"0x{e:08x}" if mark else str(e)
    if isinstance(e, str):
        return f'"{e}"' if quote else e
    if isinstance(e, list):
        return ",".join(render_expr(x, mark) for x in e)
    if not isinstance(e, dict):
        return str(e)
    (kind, v), = e.items()
    if kind == "payload":
        return f"{v['protocol']} {v['field']}"
    if kind == "meta":
        return v["key"] if v["key"] in _BARE_META - {"mark"} else f"meta {v['key']}"
    if kind == "ct":
        return f"ct {v['dir']} {v['key']}" if v.get("dir") else f"ct {v['key']}"
    if kind == "fib":
        flags = v.get("flags") or []
        return f"fib {' . '.join(flags if isinstance(flags, list) else [flags])} {v['result']}"
    if kind == "numgen":
        out = f"numgen {v['mode']} mod {v['mod']}"
        return out + (f" offset {v['offset']}" if v.get("offset") else "")
    if kind == "concat":
        return " . ".join(render_expr(x, mark) for x in v)
    if kind in _BINOPS.values():
        is_mark = mark or _is_mark(v[0])
        return f"{render_expr(v[0], is_mark)} {kind} {render_expr(v[1], is_mark)}"
    if kind == "prefix":
        return f"{v['addr']}/{v['len']}"
    if kind == "range":
        return f"{render_expr(v[0])}-{render_expr(v[1])}"
    if kind == "set":
        if not isinstance(v, list):
            return render_expr(v, mark)
        return "{ " + ", ".join(_render_elem(x, mark) for x in v) + " }"
    if kind == "elem":
        out = render_expr(v.get("val"), mark)
        if v.get("timeout") is not None:
            out += f" timeout {v['timeout']}s"
        if v.get("expires") is not None:
            out += f" expires {v['expires']}s"
        if v.get("comment"):
            out += f' comment "{v["comment"]}"'
        return out
    if kind in ("jump", "goto"):
        return f"{kind} {v['target']}"
    if kind in VERDICT_WORDS:
        return kind
    if kind == "map":
        return f"{render_expr(v['key'])} map {render_expr(v['data'])}"
    return f"<{kind} {json.dumps(v)}>"


def _render_elem(x: Any, mark: bool) -> str:
    if isinstance(x, list) and len(x) == 2:
        return f"{render_expr(x[0], mark)} : {render_expr(x[1])}"
    return render_expr(x, mark)


def _is_mark(e: Any) -> bool:
    if not isinstance(e, dict):
        return False
    if "meta" in e:
        return e["meta"].get("key") == "mark"
    if "ct" in e:
        return e["ct"].get("key") == "mark"
    for op in _BINOPS.values():
        if op in e:
            return _is_mark(e[op][0])
    return False


def _is_binop(e: Any) -> bool:
    return isinstance(e, dict) and any(op in e for op in _BINOPS.values())


def _is_ifname(e: Any) -> bool:
    return isinstance(e, dict) and "meta" in e and e["meta"].get("key") in (
        "iifname", "oifname", "ibrname", "obrname")


# --------------------------------------------------------------------------- entry points


def looks_like_nft_json(text: str) -> bool:
    head = text[:200].lstrip()
    return head.startswith("{") and '"nftables"' in head


def parse_ruleset(text: str, source: str = "") -> Ruleset:
    """Either format, recognised from the content."""
    if looks_like_nft_json(text):
        return parse_json(text, source)
    return parse_text(text, source)
