"""The nftables model: tables, chains, rules, sets and maps, read lazily from the dump.

Big rulesets are the norm (one chain per endpoint), so work is deferred: rules are parsed
when their chain is first walked, and set/map elements are indexed on first lookup.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.nftables.boundary import (
    BadValue,
    check_element,
    check_rule_object,
    check_values,
    shown,
    type_domain,
)
from kubectl_clusterip.nftables.render import render_rule
from kubectl_clusterip.nftables.rule_text import (
    fast_elements,
    parse_elements_text,
    parse_rule_text,
)
from kubectl_clusterip.nftables.values import canon_ip, norm_key, value_matches
from kubectl_clusterip.paste import is_elision

PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50,
              "srcnat": 100}
_HANDLE = re.compile(r"\s*#\s*handle\s+(\d+)\s*$")
_ELIDED_ELEMENTS = re.compile(r"(?<![\w.:])(?:\.\.\.+|…)(?![\w.:])")
_decode = json.JSONDecoder().raw_decode  # one rule object in place, no slice of the dump


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
    where: str = ""  # the dump and where in it, for errors
    incomplete: bool = False  # elements were cut from the paste: a miss proves nothing
    notes: list[str] | None = field(default=None, repr=False)  # the ruleset's, for elisions
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
            self._elements = self._checked(self._raw)
            self._raw = None
        return self._elements

    def _checked(self, raw: Any) -> list[Element]:
        """Elements from the dump's JSON list or text, each checked against the set's types."""
        where = self.where or f"{self.kind} {self.name}"
        try:
            if type(raw) is tuple:  # (dump text, start, end) of a JSON "elem" list
                raw = json.loads(raw[0][raw[1]:raw[2]])
            elif type(raw) is str:
                raw = parse_elements_text(self._without_elisions(raw))
        except (ValueError, RecursionError) as e:
            raise ClusterIPError(f"{where}: cannot read the elements: "
                                 f"{str(e).split(':')[0]}") from None
        if raw is None:
            return []
        if type(raw) is not list:
            raise BadValue("elements are a list", raw).error(where)
        key_domain = type_domain(self.key_types)
        for j, item in enumerate(raw):
            try:
                check_element(item, key_domain, self.map_type)
            except BadValue as e:
                step = f".elem[{j}]" if "nftables[" in where else f", element {j + 1}"
                raise e.at(step).error(where) from None
        return _elements_from(raw)

    def _without_elisions(self, body: str) -> str:
        """Element text with a pasted `...` in place of elements taken out (and noted)."""
        if "..." not in body and "…" not in body:
            return body
        kept = _ELIDED_ELEMENTS.sub("", body)
        if kept != body:
            self.incomplete = True
            if self.notes is not None:
                self.notes.append(f"the paste elides elements of {self.family} {self.table} "
                                  f"{self.kind} {self.name} ('...'): a key missing from it "
                                  "may be among them")
        return kept

    @property
    def kind(self) -> str:
        return "set" if self.map_type is None else "map"

    def lookup(self, key: Any) -> Element | None:
        """The element whose key matches (exact, prefix, range, per concat component)."""
        if self._exact is None:
            if type(self._raw) is str:  # text not yet parsed: one lookup need not parse it all
                found = _find_text_element(self._raw, key, self._checked)
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
        return canon_ip(k)
    return k


def _find_text_element(body: str, key: Any, read: Callable[[list], list[Element]]
                       ) -> Element | None:
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
            items = fast_elements(inner[pos:stop])
            if not items:
                return None
            try:
                (e,) = read(items)
            except ClusterIPError:  # the full parse says which element, and where
                return None
            return e if _exact_key(e.key) == norm_key(key) else None
        pos = inner.find(spelled, end)
    return None


class Rule:
    """One rule, its statements checked; `text` is rendered from them when not given."""

    __slots__ = ("_text", "chain", "comment", "expr", "family", "handle", "table")

    def __init__(self, family: str, table: str, chain: str, handle: int | None,
                 comment: str | None, expr: list, text: str | None = None) -> None:
        self.family, self.table, self.chain = family, table, chain
        self.handle, self.comment = handle, comment
        self.expr, self._text = expr, text

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
        "notes",
        "policy",
        "priority",
        "source",
        "table",
        "type",
    )

    def __init__(self, family: str, table: str, name: str, handle: int | None = None,
                 source: str = "", notes: list[str] | None = None) -> None:
        self.family, self.table, self.name, self.handle = family, table, name, handle
        self.source = source  # the dump's name, for errors
        self.notes = notes  # the ruleset's: where a pasted listing elides lines
        self.type: str | None = None  # filter | nat | route, for base chains
        self.hook: str | None = None
        self.priority: int | None = None
        self.policy = "accept"
        self.comment: str | None = None
        self._rules: list[Rule] | None = []
        self._src: str | None = None  # the dump text the spans point into
        # (start, end, item): a JSON rule object (its index in the "nftables" list), or a
        # text chain body (item -1).
        self._spans: list[tuple[int, int, int]] = []

    @property
    def is_base(self) -> bool:
        return self.hook is not None

    @property
    def rules(self) -> list[Rule]:
        if self._rules is None:
            self._rules = self._load()
        return self._rules

    def forget(self) -> None:
        """Drop the parsed rules (they can be read again): keeps a full scan's memory flat."""
        if self._src is not None:
            self._rules = None

    def _load(self) -> list[Rule]:
        src = self._src or ""
        out: list[Rule] = []
        for s, e, item in self._spans:
            if item >= 0:
                out.append(self._json_rule(src, s, item))
                continue
            closed = False  # past the chain's `}`: text up to the next object's header
            for k, line in enumerate(src[s:e].splitlines()):
                line = line.strip()
                if line == "}":
                    closed = True
                if not line or line == "}" or line.startswith(("type ", "comment ", "policy ",
                                                               "#")):
                    continue
                if line[0] in ".…[<" and is_elision(line):
                    if self.notes is not None:
                        n = src.count("\n", 0, s) + k + 1
                        what = f"{self.family} {self.table} chain {self.name}"
                        self.notes.append(f"line {n} of the paste elides what followed {what}"
                                          if closed else f"line {n} of the paste elides rules "
                                          f"of {what}: what they do is not known")
                    continue
                handle = None
                # A handle follows the line's last "#": match there, not at every position.
                hash_at = line.rfind("#")
                m = _HANDLE.match(line, hash_at) if hash_at >= 0 else None
                if m:
                    handle = int(m.group(1))
                    line = line[: m.start()].rstrip()
                expr, comment = parse_rule_text(line)
                try:
                    check_values(expr)
                except BadValue as err:
                    n = src.count("\n", 0, s) + k + 1
                    raise err.error(f"{self.source or 'nft ruleset'} line {n}", path=False) \
                        from None
                out.append(Rule(self.family, self.table, self.name, handle, comment, expr,
                                line))
        return out

    def _json_rule(self, src: str, start: int, item: int) -> Rule:
        where = f"{self.source or 'nft JSON'}: nftables[{item}].rule"
        try:
            o = _decode(src, start)[0]["rule"]
            expr = check_rule_object(o)
            return Rule(self.family, self.table, self.name, o.get("handle"), o.get("comment"),
                        expr)
        except BadValue as err:
            raise err.error(where) from None
        except (ValueError, RecursionError) as err:
            raise ClusterIPError(f"{where}: not valid JSON ({str(err).split(':')[0]}): "
                                 f"{shown(src[start:start + 200])}") from None

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
    notes: list[str] = field(default_factory=list)  # what a cut or elided paste lacks

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
            ch = t.chains[name] = Chain(family, table, name, source=self.source)
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


def _elements_from(raw: list) -> list[Element]:
    """Checked element items (JSON shapes) as Elements."""
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


def chain_priority(value: Any) -> int:
    """A base chain's priority, symbolic (`dstnat - 5`) or numeric, as a number."""
    if isinstance(value, int):
        return value
    text = str(value).replace(" ", "")
    m = re.match(r"^([a-z]+)?([+-]\d+)?$", text)
    if not m:
        raise ClusterIPError(f"unknown chain priority {value!r}")
    base = PRIORITIES.get(m.group(1), 0) if m.group(1) else 0
    return base + int(m.group(2) or 0)
