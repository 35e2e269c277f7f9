"""The typed boundary for nft input: what the walker reads is checked here, once.

Every rule (JSON as nft printed it, or text after rule_text turned it into the same
shapes), every set element and every table/chain/set object is checked when it is first
loaded: its shape and types, and the values whose meaning the walker relies on
(addresses, ports, marks, protocol numbers, numgen moduli, DNAT targets). A bad one is
a `ClusterIPError` naming the file, where in it (JSON path or line) and the value, cut
short. Past this point the walker trusts the types.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.paste import shorten

MAX_DEPTH = 32  # nft itself nests a few levels; deeper is not a dump nft printed
U32 = 0xFFFFFFFF
FAMILIES = frozenset(("ip", "ip6", "inet", "arp", "bridge", "netdev"))
MATCH_OPS = frozenset(("==", "!=", "<", ">", "<=", ">=", "in"))
VERDICTS = frozenset(("accept", "drop", "return", "continue", "queue"))
_MAX_LEN = {"ipv4": 32, "ipv6": 128}
_SHOWN = {"ipv4": "IPv4", "ipv6": "IPv6"}


class BadValue(Exception):
    """What is wrong, and the path to it below the place that catches it."""

    def __init__(self, why: str, value: Any) -> None:
        super().__init__(why)
        self.why, self.value, self.path = why, value, ""

    def at(self, step: str) -> BadValue:
        self.path = step + self.path
        return self

    def error(self, where: str, path: bool = True) -> ClusterIPError:
        """`where` is the file and JSON path or line; text input has no path of its own."""
        at = where + self.path if path else where
        return ClusterIPError(f"{at}: {self.why}: {shown(self.value)}")


def shown(value: Any, limit: int = 80) -> str:
    """A value as the input spelled it, cut short (one bad 10 MB value never floods)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return repr(shorten(text, limit)) if isinstance(value, str) else shorten(text, limit)


# --------------------------------------------------------------------------- rules


def check_rule(expr: Any) -> list:
    """A rule's statement list, checked; returned as is."""
    if type(expr) is not list:
        raise BadValue("a rule's expr is a list of statements", expr)
    for j, s in enumerate(expr):
        if type(s) is not dict or len(s) != 1:
            raise BadValue("a statement is an object with one key", s).at(f"[{j}]")
        (kind, v), = s.items()
        try:
            if kind == "match":  # most statements: checked without the generic dispatch
                _match(v)
            elif kind == "jump" or kind == "goto":
                if type(v) is not dict or type(v.get("target")) is not str or not v["target"]:
                    _target(v)
            else:
                check = _STATEMENTS.get(kind)
                if check is not None:  # others are not modelled: the walker says so
                    check(v)
        except BadValue as e:
            raise e.at(f"[{j}].{kind}") from None
    return expr


def check_values(expr: list) -> list:
    """The values of a rule rule_text built (its shapes and types are right by construction):
    addresses, ports, marks, numgen ranges and NAT targets, as check_rule checks them."""
    for j, s in enumerate(expr):
        (kind, v), = s.items()
        try:
            if kind == "match":
                domain = _domain(v["left"])
                if domain is not None:
                    right = v["right"]
                    if type(right) is str:
                        if right[:1] != "@" and domain != "proto" and not (
                                domain == "ipv4" and _IPV4.fullmatch(right)):
                            _in(right, domain)
                    else:
                        _rhs(right, domain)
            elif kind == "vmap" or kind == "mangle":
                _STATEMENTS[kind](v)
            elif kind == "dnat" or kind == "snat":
                _nat(v)
        except BadValue as e:
            raise e.at(f"[{j}].{kind}") from None
    return expr


def _obj(v: Any, *required: str) -> dict:
    if type(v) is not dict:
        raise BadValue("expected an object", v)
    for k in required:
        if k not in v:
            raise BadValue(f"no {k!r}", v)
    return v


def _one_of(value: Any, allowed: frozenset) -> bool:
    """Membership that a list or a mapping (unhashable, from a corrupt dump) cannot crash."""
    return type(value) is str and value in allowed


def _field(v: dict, key: str, check: Any) -> None:
    try:
        check(v[key])
    except BadValue as e:
        raise e.at(f".{key}") from None


def _match(v: Any) -> None:
    if type(v) is not dict or "left" not in v or "right" not in v:
        raise BadValue("a match has a left and a right side", v)
    if not _one_of(v.get("op", "=="), MATCH_OPS):
        raise BadValue("unknown operator", v.get("op")).at(".op")
    left, domain = v["left"], None
    kind, x = next(iter(left.items())) if type(left) is dict and len(left) == 1 else ("", None)
    if kind == "payload" and type(x) is dict and type(x.get("protocol")) is str and \
            type(x.get("field")) is str:
        domain = _PAYLOAD_DOMAIN.get((x["protocol"], x["field"]))
    elif kind == "meta" and type(x) is dict and type(x.get("key")) is str:
        domain = _KEY_DOMAIN.get(x["key"])
    else:
        try:
            domain = _left(left)
        except BadValue as e:
            raise e.at(".left") from None
    right = v["right"]
    try:
        if type(right) is str:  # the common cases inline: an address, a word, @set
            if domain is None or domain == "proto" or right[:1] == "@" or (
                    domain == "ipv4" and _IPV4.fullmatch(right)):
                return
            _in(right, domain)
        elif type(right) is int:
            _in(right, domain)
        else:
            _rhs(right, domain)
    except BadValue as e:
        raise e.at(".right") from None


def _left(e: Any) -> Any:
    """Check a match's left side; its value kind (see _domain)."""
    if type(e) is dict and len(e) == 1:
        (kind, v), = e.items()
        if type(v) is dict:
            if kind == "payload":
                p, f = v.get("protocol"), v.get("field")
                if type(p) is str and type(f) is str:
                    return _PAYLOAD_DOMAIN.get((p, f))
            elif kind == "meta" or kind == "ct":
                k = v.get("key")
                if type(k) is str and (kind == "meta" or type(v.get("dir", "")) is str):
                    return _KEY_DOMAIN.get(k)
    _expr(e)
    return _domain(e)


def _vmap(v: Any) -> None:
    _obj(v, "key", "data")
    _field(v, "key", _expr)
    _field(v, "data", lambda d: _map_data(d, _verdict))


def _map_data(d: Any, check_data: Any, domain: Any = None) -> None:
    """A map's data side: `@name`, or an anonymous `{"set": [[key, data], …]}`."""
    if type(d) is str:
        if not d.startswith("@"):
            raise BadValue("a map is '@name' or an anonymous map", d)
        return
    items = _obj(d, "set")["set"]
    if type(items) is not list:
        raise BadValue("an anonymous map is a list of [key, data]", items)
    for j, item in enumerate(items):
        try:
            if type(item) is not list or len(item) != 2:
                raise BadValue("a map element is [key, data]", item)
            _expr(item[0])
            if domain is not None:
                _in(_elem_val(item[0]), domain)
            check_data(item[1])
        except BadValue as e:
            raise e.at(f".set[{j}]") from None


def _target(v: Any) -> None:
    if type(_obj(v, "target")["target"]) is not str or not v["target"]:
        raise BadValue("a jump or goto target is a chain name", v.get("target"))


def _verdict(v: Any) -> None:
    if type(v) is not dict or len(v) != 1:
        raise BadValue("a verdict is an object with one key", v)
    (kind, x), = v.items()
    if kind in ("jump", "goto"):
        try:
            _target(x)
        except BadValue as e:
            raise e.at(f".{kind}") from None
    elif kind not in VERDICTS:
        raise BadValue("not a verdict", v)


def _mangle(v: Any) -> None:
    _obj(v, "key", "value")
    _field(v, "key", _expr)
    _field(v, "value", _expr)
    if _domain(v["key"]) == "mark" and type(v["value"]) is int:
        _field(v, "value", lambda x: _in(x, "mark"))


def _flags(v: Any) -> None:
    if type(v) is not str and not (type(v) is list and all(type(f) is str for f in v)):
        raise BadValue("flags are a word or a list of words", v)


def _masquerade(v: Any) -> None:
    if v is None:
        return
    _obj(v)
    if "flags" in v:
        _field(v, "flags", _flags)
    if "port" in v:
        _field(v, "port", _port_or_expr)


def _nat(v: Any) -> None:
    if type(v) is not dict:
        raise BadValue("expected an object", v)
    if v.get("family") not in (None, "ip", "ip6"):
        raise BadValue("a NAT family is ip or ip6", v.get("family")).at(".family")
    if "flags" in v:
        _field(v, "flags", _flags)
    port, addr = v.get("port"), v.get("addr")
    if port is not None and not (type(port) is int and 0 <= port <= 65535):
        _field(v, "port", _port_or_expr)
    if addr is not None and not (type(addr) is str and _IPV4.fullmatch(addr)):
        _field(v, "addr", _nat_addr)


def _nat_addr(a: Any) -> None:
    if type(a) is str:
        _address(a)
    elif type(a) is dict and "map" in a:
        m = _obj(a["map"], "key", "data")
        try:
            _expr(m["key"])
            _field(m, "data", lambda d: _map_data(d, _nat_target))
        except BadValue as e:
            raise e.at(".map") from None
    else:
        _expr(a)


def _nat_target(d: Any) -> None:
    """A DNAT map's data: an address, or `address . port`."""
    if type(d) is dict and "concat" in d:
        parts = d["concat"]
        if type(parts) is not list or len(parts) != 2:
            raise BadValue("a DNAT target is address . port", d)
        _address(parts[0])
        _in(parts[1], "port")
    else:
        _address(d)


def _set_stmt(v: Any) -> None:
    _obj(v, "op", "elem", "set")
    if type(v["op"]) is not str or type(v["set"]) is not str:
        raise BadValue("a set statement has an op and a set name", v)
    _field(v, "elem", _expr)


def _optional_obj(v: Any) -> None:
    if v is not None and type(v) not in (dict, str):
        raise BadValue("expected an object", v)


def _nothing(v: Any) -> None:
    pass


_STATEMENTS = {
    "match": _match, "vmap": _vmap, "jump": _target, "goto": _target, "mangle": _mangle,
    "masquerade": _masquerade, "dnat": _nat, "snat": _nat, "set": _set_stmt,
    "reject": _optional_obj, "counter": _optional_obj, "log": _optional_obj,
    "limit": _optional_obj, "accept": _nothing, "drop": _nothing, "return": _nothing,
    "continue": _nothing, "notrack": _nothing,
}


# --------------------------------------------------------------------------- expressions


def _expr(e: Any, depth: int = 0) -> None:
    t = type(e)
    if t is str or t is int or t is bool:
        return
    if depth > MAX_DEPTH:
        raise BadValue(f"nested deeper than {MAX_DEPTH} levels", e)
    if t is list:
        for j, x in enumerate(e):
            try:
                _expr(x, depth + 1)
            except BadValue as err:
                raise err.at(f"[{j}]") from None
        return
    if t is not dict or len(e) != 1:
        raise BadValue("an expression is a value or an object with one key", e)
    (kind, v), = e.items()
    check = _EXPRESSIONS.get(kind)
    if check is not None:
        try:
            check(v, depth + 1)
        except BadValue as err:
            raise err.at(f".{kind}") from None


def _words(v: Any, _d: int, *keys: str) -> None:
    for k in keys:
        if k in v and type(v[k]) is not str:
            raise BadValue("expected a word", v[k]).at(f".{k}")


def _payload(v: Any, d: int) -> None:
    _obj(v)
    _words(v, d, "protocol", "field")


def _meta(v: Any, d: int) -> None:
    _obj(v, "key")
    _words(v, d, "key")


def _ct(v: Any, d: int) -> None:
    _obj(v, "key")
    _words(v, d, "key", "dir")


def _fib(v: Any, d: int) -> None:
    _obj(v, "result")
    _words(v, d, "result")
    if "flags" in v:
        _field(v, "flags", _flags)


def _numgen(v: Any, _d: int) -> None:
    _obj(v, "mode", "mod")
    if v["mode"] not in ("random", "inc"):
        raise BadValue("numgen mode is random or inc", v["mode"]).at(".mode")
    mod, offset = v["mod"], v.get("offset", 0)
    if type(mod) is not int or not 1 <= mod <= U32:
        raise BadValue(f"numgen mod is 1..{U32}", mod).at(".mod")
    if type(offset) is not int or not 0 <= offset <= U32 - mod + 1:
        raise BadValue("numgen offset out of range", offset).at(".offset")


def _list_of(n: int | None) -> Any:
    def check(v: Any, d: int) -> None:
        if type(v) is not list or (n is not None and len(v) != n) or not v:
            raise BadValue(f"expected a list of {n or 'one or more'} values", v)
        _expr(v, d)
    return check


def _prefix(v: Any, _d: int) -> None:
    _obj(v, "addr", "len")
    fam = _address(v["addr"])
    if type(v["len"]) is not int or not 0 <= v["len"] <= _MAX_LEN[fam]:
        raise BadValue("prefix length out of range", v["len"]).at(".len")


def _set_expr(v: Any, d: int) -> None:
    if type(v) is str:
        return
    if type(v) is not list:
        raise BadValue("a set is a list of elements or a name", v)
    _expr(v, d)


def _elem(v: Any, d: int) -> None:
    _obj(v, "val")
    _field(v, "val", lambda x: _expr(x, d))
    for k in ("timeout", "expires"):
        if k in v and type(v[k]) is not int:
            raise BadValue("expected whole seconds", v[k]).at(f".{k}")
    if "comment" in v and type(v["comment"]) is not str:
        raise BadValue("a comment is a string", v["comment"]).at(".comment")


def _map_expr(v: Any, d: int) -> None:
    _obj(v, "key", "data")
    _field(v, "key", lambda x: _expr(x, d))
    _field(v, "data", lambda x: _expr(x, d))


def _verdict_expr(v: Any, _d: int) -> None:
    _target(v)


_EXPRESSIONS = {
    "payload": _payload, "meta": _meta, "ct": _ct, "fib": _fib, "numgen": _numgen,
    "concat": _list_of(None), "&": _list_of(2), "|": _list_of(2), "^": _list_of(2),
    "<<": _list_of(2), ">>": _list_of(2), "prefix": _prefix, "range": _list_of(2),
    "set": _set_expr, "elem": _elem, "map": _map_expr, "jump": _verdict_expr,
    "goto": _verdict_expr,
}


# --------------------------------------------------------------------------- values


_PAYLOAD_DOMAIN = {
    ("ip", "saddr"): "ipv4", ("ip", "daddr"): "ipv4", ("ip6", "saddr"): "ipv6",
    ("ip6", "daddr"): "ipv6", ("ip", "protocol"): "proto", ("ip6", "nexthdr"): "proto",
    **{(p, f): "port" for p in ("tcp", "udp", "sctp", "th") for f in ("sport", "dport")},
}
_KEY_DOMAIN = {"mark": "mark", "l4proto": "proto"}


def _domain(left: Any) -> Any:
    """What kind of value a match's left side yields: ipv4, ipv6, port, mark, proto, a tuple
    of those for a concatenation, or None when the walker does not read its value."""
    if type(left) is not dict:
        return None
    (kind, v), = left.items()
    if kind == "payload":
        return _PAYLOAD_DOMAIN.get((v.get("protocol"), v.get("field")))
    if kind in ("meta", "ct"):
        return _KEY_DOMAIN.get(v.get("key"))
    if kind == "concat":
        return tuple(_domain(x) for x in v)
    if kind in ("&", "|", "^"):
        return "mark" if _domain(v[0]) == "mark" else None
    return None


def _rhs(r: Any, domain: Any) -> None:
    _expr(r)
    if domain is None or (type(r) is str and r.startswith("@")):
        return
    if type(r) is dict and "set" in r and type(r["set"]) is list:
        for j, x in enumerate(r["set"]):
            try:
                _in(_elem_val(x), domain)
            except BadValue as e:
                raise e.at(f".set[{j}]") from None
    elif type(r) is list:
        for x in r:
            _in(x, domain)
    else:
        _in(r, domain)


def _elem_val(x: Any) -> Any:
    if type(x) is list and len(x) == 2:
        x = x[0]
    if type(x) is dict and "elem" in x:
        return x["elem"].get("val")
    return x


def _in(x: Any, domain: Any) -> None:
    """A value (or prefix, range, concatenation) of the given kind."""
    if domain is None:
        return
    if type(domain) is tuple:
        parts = x if type(x) is tuple else x.get("concat") if type(x) is dict else None
        if type(parts) not in (list, tuple) or len(parts) != len(domain):
            raise BadValue(f"expected {len(domain)} values joined by '.'", x)
        for p, d in zip(parts, domain):
            tp = type(p)
            if (tp is str and (d == "proto" or (d == "ipv4" and _IPV4.fullmatch(p)))) or (
                    tp is int and d == "port" and 0 <= p <= 65535):
                continue  # the common parts, without a call each
            if d is None or tp is dict:
                _expr(p)
            _in(p, d)
        return
    if type(x) is dict:
        if "prefix" in x and domain in _MAX_LEN:
            if _address(x["prefix"]["addr"]) != domain:
                raise BadValue(f"not an {_SHOWN[domain]} prefix", x)
            return
        if "range" in x:
            for y in x["range"]:
                _in(y, domain)
            return
        return  # another expression: its value is the walker's to compute
    if domain == "ipv4" and type(x) is str and _IPV4.fullmatch(x):
        return
    if domain == "port" and type(x) is int and 0 <= x <= 65535:
        return
    if domain == "proto" and type(x) is str:
        return
    if domain in _MAX_LEN:
        try:
            fam = _address(x)
        except BadValue:
            fam = None
        if fam != domain:
            raise BadValue(f"not an {_SHOWN[domain]} address", x)
    elif domain == "port":
        if type(x) is not int or not 0 <= x <= 65535:
            raise BadValue("not a port (0-65535)", x)
    elif domain == "mark":
        if type(x) is not int or not 0 <= x <= U32:
            raise BadValue("not a 32-bit mark", x)
    elif domain == "proto" and not (type(x) is str or (type(x) is int and 0 <= x <= 255)):
        raise BadValue("not a protocol", x)


_ADDRESSES: dict[str, str] = {}  # IPv6 literals seen (ipaddress is slow, dumps repeat)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _address(a: Any) -> str:
    """ipv4 or ipv6 for an address literal; anything else is refused."""
    if type(a) is not str:
        raise BadValue("not an IP address", a)
    if _IPV4.fullmatch(a):
        return "ipv4"
    fam = _ADDRESSES.get(a)
    if fam is not None:
        return fam
    try:
        fam = "ipv4" if ipaddress.ip_address(a).version == 4 else "ipv6"
    except (ValueError, TypeError):
        raise BadValue("not an IP address", a) from None
    if fam == "ipv6" and len(_ADDRESSES) < 1 << 16:
        _ADDRESSES[a] = fam
    return fam


def _port_or_expr(p: Any) -> None:
    if type(p) is int:
        _in(p, "port")
    else:
        _expr(p)


# --------------------------------------------------------------------------- sets and objects


_TYPE_DOMAIN = {"ipv4_addr": "ipv4", "ipv6_addr": "ipv6", "inet_service": "port",
                "mark": "mark", "inet_proto": "proto"}


def type_domain(types: tuple[str, ...]) -> Any:
    """The value kind of a set key or map data type (`ipv4_addr . inet_service`)."""
    doms = tuple(_TYPE_DOMAIN.get(t.strip()) for t in types)
    return doms[0] if len(doms) == 1 else doms or None


def check_element(item: Any, key_domain: Any, map_type: str | None) -> None:
    """One element of a named set or map as the dump spells it, by the set's types."""
    if map_type is not None:
        if type(item) is not list or len(item) != 2:
            raise BadValue("a map element is [key, data]", item)
        key, value = item
    else:
        key, value = item, None
    try:
        if key_domain is None or (type(key) is dict and "concat" not in key):
            _expr(key)  # a prefix, range or `elem` wrapper; or types the walker only compares
        _in(_elem_val(key), key_domain)  # checks each part of a concatenation as it goes
    except BadValue as e:
        raise e.at(" key") from None
    if not map_type:
        return
    try:
        if map_type == "verdict":
            if type(value) is dict and len(value) == 1:
                x = value.get("goto") or value.get("jump")
                if type(x) is dict and type(x.get("target")) is str and x["target"]:
                    return
            _verdict(value)
        else:
            _expr(value)
            _in(value, type_domain(tuple(map_type.split(" . "))))
    except BadValue as e:
        raise e.at(" data") from None


_OBJECT_FIELDS = {  # field: allowed JSON types
    "family": (str,), "table": (str,), "name": (str,), "chain": (str,), "handle": (int,),
    "comment": (str,), "type": (str, list), "hook": (str,), "prio": (int, str),
    "policy": (str,), "map": (str, list), "flags": (str, list), "timeout": (int,),
    "elem": (list,), "expr": (list,), "version": (str,), "dev": (str, list),
}


def check_rule_object(o: Any) -> list:
    """A rule object the compact reader located (family, table, chain already read): its
    handle, comment and statements."""
    if type(o) is not dict:
        raise BadValue("expected an object", o)
    h, c = o.get("handle"), o.get("comment")
    if h is not None and type(h) is not int:
        raise BadValue("handle should be int", h).at(".handle")
    if c is not None and type(c) is not str:
        raise BadValue("comment should be str", c).at(".comment")
    try:
        return check_rule(o.get("expr", []))
    except BadValue as e:
        raise e.at(".expr") from None


def check_object(kind: str, o: Any) -> dict:
    """A top-level `{"table"|"chain"|"rule"|"set"|"map": {…}}` object's own fields."""
    if type(o) is not dict:
        raise BadValue("expected an object", o)
    for k, v in o.items():
        allowed = _OBJECT_FIELDS.get(k)
        if allowed is not None and type(v) not in allowed:
            raise BadValue(f"{k} should be {' or '.join(t.__name__ for t in allowed)}",
                           v).at(f".{k}")
    if kind == "metainfo":
        return o
    need = {"table": ("family", "name"), "chain": ("family", "table", "name"),
            "rule": ("family", "table", "chain"), "set": ("family", "table", "name"),
            "map": ("family", "table", "name")}.get(kind, ("family",))
    for k in need:
        if k not in o:
            raise BadValue(f"no {k!r}", o)
    if o["family"] not in FAMILIES:
        raise BadValue("unknown family", o["family"]).at(".family")
    if kind in ("set", "map") and type(o.get("type")) is list and \
            not all(type(t) is str for t in o["type"]):
        raise BadValue("set types are words", o["type"]).at(".type")
    if "flags" in o:
        _field(o, "flags", _flags)
    return o
