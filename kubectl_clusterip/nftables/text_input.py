"""`nft list ruleset` text (also with -a handles) into the model."""

from __future__ import annotations

import re

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.nftables.rule_text import unquote
from kubectl_clusterip.nftables.ruleset import (
    Chain,
    NftSet,
    Ruleset,
    Table,
    chain_priority,
    gc_paused,
)
from kubectl_clusterip.nftables.values import parse_duration
from kubectl_clusterip.paste import first_line, shorten

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
    where = source or "nft ruleset"
    rs = Ruleset(source=source, input_format="text")
    headers = []
    for m in _TEXT_OPEN.finditer(text):
        start = text.rfind("\n", 0, m.start()) + 1
        h = _TEXT_HEADER.match(text, start, m.end())
        if h is not None:
            headers.append((h, m.end() + 1))
    if not headers:
        if text.strip():
            n, seen = first_line(text)
            raise ClusterIPError(f"{where}:{n}: not an nft listing (no 'table FAMILY NAME {{' "
                                 f"line), saw {seen!r}; run `nft list ruleset` on the node")
        return rs
    opens, closes = text.count("{"), text.count("}")
    if closes > opens:
        raise ClusterIPError(f"{where}: {closes - opens} more '}}' than '{{': not one nft "
                             "listing; run `nft list ruleset` and give all of its output")
    table: Table | None = None
    line, counted = 1, 0  # line numbers for the few objects whose errors name one
    ends = [h.start() for h, _ in headers[1:]] + [len(text)]
    for (m, body_start), end in zip(headers, ends):
        is_table, family, kind, name, handle = m.groups()
        if name[0] == '"':
            name = unquote(name)
        cut = opens > closes and end == len(text)  # the paste stops in this object
        if is_table:
            table = rs._table(family, name)
            table.handle = int(handle) if handle else None
            _table_lines(table, text[body_start:end])
            if cut:
                rs.notes.append(f"the listing stops after table {family} {name}'s header "
                                f"(line {_lines(text)}): its chains and sets are missing")
            continue
        if table is None:
            raise ClusterIPError(f"{where}: {kind} {name} outside a table; run "
                                 "`nft list ruleset` on the node")
        if cut:
            end = _cut(rs, text, body_start, kind, f"{table.family} {table.name} {kind} {name}")
        if kind == "chain":
            ch = table.chains.get(name)
            if ch is None:
                ch = table.chains[name] = Chain(table.family, table.name, name, source=source,
                                                notes=rs.notes)
            ch.handle = int(handle) if handle else None
            if _CHAIN_HEAD.match(text, body_start, end):  # any indent: tabs, spaces
                _chain_header(ch, text, (body_start, end))
            ch._src, ch._rules = text, None
            ch._spans.append((body_start, end, -1))
        elif kind in ("set", "map"):
            line += text.count("\n", counted, m.start())
            counted = m.start()
            st = NftSet(table.family, table.name, name, map_type="" if kind == "map" else None,
                        where=f"{where} line {line}: {kind} {name}")
            body = text[body_start:end]
            _set_body(st, body + ("}" if cut and "elements = " in body else ""))
            st.incomplete = cut and "elements = " in body
            st.notes = rs.notes
            table.sets[name] = st
    return rs


_CHAIN_HEAD = re.compile(r"\s*(?:type|comment)\s")
def _lines(text: str) -> int:
    return text.count("\n") + (not text.endswith("\n"))


def _cut(rs: Ruleset, text: str, start: int, kind: str, what: str) -> int:
    """Where the last, unclosed object's complete part ends, and a note on what is lost.

    A chain keeps its rules up to the line before the last one (the cut may have taken the
    end of that line and changed its meaning); a set keeps the elements before the last
    comma. Everything the listing would have printed after the cut is missing.
    """
    body = text[start:]
    last = _lines(text)
    if body.count("}") > body.count("{"):  # the object itself is complete
        rs.notes.append(f"the listing stops after {what} (line {last}): whatever followed "
                        "it is missing")
        return len(text)
    if kind in ("set", "map"):
        comma = text.rfind(",")
        end = comma + 1 if comma >= start else len(text)
        rs.notes.append(f"the listing stops inside {what}'s elements (line {last}): the "
                        "elements after the last complete one are missing")
        return end
    stripped = text.rstrip()
    end = stripped.rfind("\n") + 1 if stripped.rfind("\n") >= start else start
    dropped = stripped[end:].strip()
    rs.notes.append(f"the listing stops inside {what} (line {last}): its last line "
                    f"{shorten(dropped)!r} may be cut short and was not read; the rest of "
                    "the chain and everything after it is missing")
    return end


def _table_lines(table: Table, chunk: str) -> None:
    for line in chunk.splitlines():
        m = re.match(r'^\s*comment\s+(".*")\s*$', line)
        if m:
            table.comment = unquote(m.group(1))


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
                ch.priority = chain_priority(m.group(3).strip())
                ch.policy = m.group(4) or "accept"
        elif line.startswith("comment "):
            ch.comment = unquote(line[8:].strip())
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
        s.comment = unquote(rest)
    elif key == "elements":
        body = rest.lstrip("=").strip()
        s._raw = body
