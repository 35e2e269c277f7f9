"""libnftables-json statements rendered back to nft syntax, as `nft list ruleset` prints
them: what a person reads for a rule that came from JSON input."""

from __future__ import annotations

import json
from typing import Any

from kubectl_clusterip.nftables.rule_text import BARE_META, BINOPS, VERDICT_WORDS


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
        return v["key"] if v["key"] in BARE_META - {"mark"} else f"meta {v['key']}"
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
    if kind in BINOPS.values():
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
    for op in BINOPS.values():
        if op in e:
            return _is_mark(e[op][0])
    return False


def _is_binop(e: Any) -> bool:
    return isinstance(e, dict) and any(op in e for op in BINOPS.values())


def _is_ifname(e: Any) -> bool:
    return isinstance(e, dict) and "meta" in e and e["meta"].get("key") in (
        "iifname", "oifname", "ibrname", "obrname")
