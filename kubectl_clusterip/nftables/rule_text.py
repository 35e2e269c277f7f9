"""One rule as `nft list ruleset` prints it, parsed into libnftables-json statements.

Text and JSON inputs share one vocabulary this way: the walker only ever sees the JSON
shapes. Set element lists (`{ a : goto x, … }`) are parsed here too, with a fast path for
the plain lists kube-proxy writes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.nftables.values import parse_duration

VERDICT_WORDS = ("accept", "drop", "return", "continue", "queue")
BARE_META = {"mark", "iif", "oif", "iifname", "oifname", "iiftype", "oiftype", "skuid",
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
BINOPS = {"&": "&", "|": "|", "^": "^", "and": "&", "or": "|", "xor": "^", "<<": "<<",
          ">>": ">>"}
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{},]|[^\s{},"]+')


def unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1].replace('\\"', '"')
    return s


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
            stmts.append({w: {"target": unquote(t.next())}})
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
            comment = unquote(t.next())
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
                opts[k] = unquote(t.next())
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
    while t.peek() in BINOPS:
        op = BINOPS[t.next()]
        left = {op: [left, _parse_primary(t)]}
    return left


def _parse_primary(t: _Tokens) -> Any:
    w = t.next()
    if w in _PROTOCOLS and t.peek() in _FIELDS:
        return {"payload": {"protocol": w, "field": t.next()}}
    if w == "meta":
        return {"meta": {"key": t.next()}}
    if w in BARE_META:
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
            attrs[k] = unquote(v) if k == "comment" else parse_duration(v)
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
        return {w: {"target": unquote(t.next())}}
    if w in VERDICT_WORDS:
        t.next()
        return {w: None}
    return _parse_concat(t)


def parse_elements_text(body: str) -> list:
    inner = body.strip()
    close = inner.find("}")
    if inner.startswith("{") and '"' not in inner and "{" not in inner[1:close]:
        fast = fast_elements(inner[1:close])
        if fast is not None:
            return fast
    t = _Tokens(body)
    if t.next() != "{":
        raise ClusterIPError(f"set elements: expected '{{', got {body[:40]!r}")
    return _parse_set_body(t)


def fast_elements(inner: str) -> list | None:
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
        return unquote(tok)
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
