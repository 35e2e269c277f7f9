"""`nft -j list ruleset` (libnftables-json) into the model."""

from __future__ import annotations

import json
import re
from typing import Any

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.nftables.boundary import (
    BadValue,
    check_object,
    check_rule_object,
    shown,
)
from kubectl_clusterip.nftables.ruleset import (
    Chain,
    NftSet,
    Rule,
    Ruleset,
    chain_priority,
    gc_paused,
)

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
    layout (pretty-printed, reordered keys) is decoded in full. Either way each object is
    checked (boundary) before the model holds it.
    """
    name = source or "nft JSON"
    with gc_paused():
        rs = _parse_json_lazy(text, source) if text.startswith('{"nftables": [') else None
    if rs is not None:
        return rs
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ClusterIPError(f"{name}: JSON nested too deeply to be nft output") from None
    except ValueError as e:
        raise ClusterIPError(f"{name}: not valid JSON: {_json_error(e, text)}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ClusterIPError(f"{name}: no top-level \"nftables\" list")
    rs = Ruleset(source=source, input_format="json")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise BadValue("an item is an object with one key", item).error(
                f"{name}: nftables[{i}]")
        (kind, o), = item.items()
        _json_item(rs, kind, o, f"{name}: nftables[{i}].{kind}")
    return rs


def _json_error(e: ValueError, text: str) -> str:
    """json's message with the text around the position it names."""
    pos = getattr(e, "pos", None)
    msg = getattr(e, "msg", str(e))
    if pos is None:
        return msg
    return f"{msg} at character {pos}: {shown(text[max(0, pos - 40):pos + 40])}"


def _parse_json_lazy(text: str, source: str) -> Ruleset | None:
    items = list(_JSON_ITEM.finditer(text))
    close = text.rfind("]")
    if not items or close < 0:
        return None
    name = source or "nft JSON"
    rs = Ruleset(source=source, input_format="json")
    head = text[len('{"nftables": ['):items[0].start()].rstrip().rstrip(",")
    first = 0
    if head:
        try:
            meta = json.loads(head)
        except ValueError:
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("metainfo"), dict):
            return None
        _json_item(rs, "metainfo", meta["metainfo"], f"{name}: nftables[0].metainfo")
        first = 1
    ends = [m.start() - 2 for m in items[1:]] + [close]
    chains: dict[tuple[str, str], dict[str, Chain]] = {}
    for i, (m, e) in enumerate(zip(items, ends), first):
        s = m.start()
        if text[e - 2:e] != "}}":
            return None  # not the compact layout this reader expects
        kind, family, table, second = m.groups()
        if kind == "rule" and second is not None:
            by_name = chains.get((family, table))
            if by_name is None:
                by_name = chains[(family, table)] = rs._table(family, table).chains
            ch = by_name.get(second)
            if ch is None:
                ch = by_name[second] = Chain(family, table, second, source=source)
            if ch._rules is not None:
                ch._rules, ch._src = None, text
            ch._spans.append((s, e, i))
            continue
        if kind == "chain" and second is not None and text.find('"hook"', m.end(), e) < 0:
            tail = text[m.end():e - 2]
            if tail.startswith(', "handle": ') and tail[12:].isdigit():
                ch = rs._chain(family, table, second)
                ch.handle = int(tail[12:])
                continue
        where = f"{name}: nftables[{i}].{kind}"
        try:
            elem = text.find(', "elem": [', s, e) if kind in ("set", "map") else -1
            item = json.loads(text[s:elem] + "}}" if elem > 0 else text[s:e])
        except ValueError:
            return None
        except RecursionError:
            raise ClusterIPError(f"{where}: JSON nested too deeply to be nft output") from None
        o = _json_item(rs, kind, item[kind], where)
        if elem > 0:
            rs._table(o["family"], o["table"]).sets[o["name"]]._raw = (text, elem + 10, e - 2)
    return rs


def _json_item(rs: Ruleset, kind: str, o: Any, where: str) -> dict:
    """One checked top-level object into the model; returned as checked."""
    try:
        o = check_object(kind, o)
        if kind == "rule":
            ch = rs._chain(o["family"], o["table"], o["chain"])
            ch.rules.append(Rule(ch.family, ch.table, ch.name, o.get("handle"),
                                 o.get("comment"), check_rule_object(o)))
        elif kind == "chain":
            ch = rs._chain(o["family"], o["table"], o["name"])
            ch.handle, ch.comment = o.get("handle"), o.get("comment")
            if "hook" in o:
                ch.type, ch.hook = o.get("type"), o["hook"]
                ch.priority = chain_priority(o.get("prio", 0))
                ch.policy = o.get("policy", "accept")
        elif kind in ("set", "map"):
            t = rs._table(o["family"], o["table"])
            types, data, flags = o.get("type", ()), o.get("map"), o.get("flags", ())
            t.sets[o["name"]] = NftSet(
                o["family"], o["table"], o["name"],
                tuple(types) if isinstance(types, list) else (types,),
                (" . ".join(data) if isinstance(data, list) else data) if kind == "map"
                else None,
                (flags,) if isinstance(flags, str) else tuple(flags), o.get("timeout"),
                o.get("comment"), where, _raw=o.get("elem"))
        elif kind == "table":
            t = rs._table(o["family"], o["name"])
            t.handle, t.comment = o.get("handle"), o.get("comment")
        elif kind == "metainfo":
            rs.nft_version = o.get("version")
    except BadValue as e:
        raise e.error(where) from None
    except ClusterIPError as e:
        raise ClusterIPError(f"{where}: {e}") from None
    return o
