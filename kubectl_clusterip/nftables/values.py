"""Values as nft rules hold them: canonical keys, and matching a packet value against a
set key, prefix, range or concatenation (the walker's one notion of "matches")."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any

_DURATION = re.compile(r"(\d+)(ms|d|h|m|s)")


@lru_cache(maxsize=262144)
def canon_ip(text: str) -> str:
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
        return canon_ip(key)
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



def parse_duration(text: str) -> int:
    """'3h', '10800s', '2h59m58s500ms' -> whole seconds."""
    if text.isdigit():
        return int(text)
    total = 0.0
    for n, unit in _DURATION.findall(text):
        total += int(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return int(total)
