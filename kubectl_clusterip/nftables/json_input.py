"""`nft -j list ruleset` (libnftables-json) into the model."""

from __future__ import annotations

import json
import re

from kubectl_clusterip.model import ClusterIPError
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
            ch.priority = chain_priority(o.get("prio", 0))
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
