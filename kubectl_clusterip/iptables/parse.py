"""Parse `iptables-save` / `ip6tables-save` output (nft or legacy backend, with or without -c).

Lines are grouped by table and chain on load, but a rule is only tokenised when something
asks for its chain: a trace of one service on a 200,000-rule node touches a few hundred
rules, so it costs little more than reading the file.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import NamedTuple

from kubectl_clusterip.branch import in_cidr
from kubectl_clusterip.iptables.values import check_rule
from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.paste import shorten

BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# Base (non-module) parameters, long spellings folded to the short ones iptables-save prints.
_BASE = {
    "-s": "-s", "--source": "-s", "--src": "-s",
    "-d": "-d", "--destination": "-d", "--dst": "-d",
    "-p": "-p", "--protocol": "-p",
    "-i": "-i", "--in-interface": "-i",
    "-o": "-o", "--out-interface": "-o",
    "-f": "-f", "--fragment": "-f",
}
_TOKEN = re.compile(r'"((?:\\.|[^"\\])*)"|(\S+)')
# The same, unrolled (`[^"\\]*(?:\\.[^"\\]*)*`): a 10 MB comment is one scan instead of a
# regex stack frame per character, but short lines tokenise faster with the plain form.
_LONG_TOKEN = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"|(\S+)')


class Option(NamedTuple):
    name: str  # "--dport", "-s", …
    values: tuple[str, ...]
    negated: bool = False

    @property
    def value(self) -> str:
        return self.values[0] if self.values else ""


class Match(NamedTuple):
    module: str  # "" for the base parameters (-s -d -p -i -o)
    options: tuple[Option, ...]

    def get(self, name: str) -> Option | None:
        for o in self.options:
            if o.name == name:
                return o
        return None


class Rule(NamedTuple):
    """One rule; tuples rather than objects because a node can hold half a million."""

    table: str
    chain: str
    text: str  # the line as printed, without counters
    matches: tuple[Match, ...]
    target: str | None  # -j / -g target; None for a rule that only counts
    target_options: tuple[Option, ...] = ()
    goto: bool = False

    def option(self, module: str, name: str) -> Option | None:
        for m in self.matches:
            if m.module == module:
                for o in m.options:
                    if o.name == name:
                        return o
        return None

    def target_option(self, name: str) -> Option | None:
        for o in self.target_options:
            if o.name == name:
                return o
        return None

    @property
    def comment(self) -> str | None:
        o = self.option("comment", "--comment")
        return o.value if o else None


def tokenize(line: str) -> tuple[list[str], set[int]]:
    """Split like iptables-save quotes: double-quoted words are one token, never an option."""
    if '"' not in line:
        return line.split(), set()
    tokens: list[str] = []
    quoted: set[int] = set()
    for m in (_TOKEN if len(line) < 4096 else _LONG_TOKEN).finditer(line):
        if m.group(1) is not None:
            quoted.add(len(tokens))
            tokens.append(m.group(1).replace('\\"', '"').replace("\\\\", "\\"))
        else:
            tokens.append(m.group(2))
    return tokens, quoted


def parse_rule(table: str, line: str) -> Rule:
    """Turn one `-A CHAIN …` line into matches and a target; unknown modules are kept verbatim."""
    tokens, quoted = tokenize(line)
    n = len(tokens)
    if n < 2 or tokens[0] != "-A":
        raise ClusterIPError(f"not an iptables rule: {shorten(line)!r}")
    base: list[Option] = []
    matches: list[Match] = []
    module = ""
    opts: list[Option] = []
    target: str | None = None
    target_opts: list[Option] = []
    goto = False
    negate = False
    i = 2
    while i < n:
        tok = tokens[i]
        if tok == "!" and i not in quoted:
            negate = True
            i += 1
            continue
        if tok in _MODULE_WORDS:
            if module or opts:
                matches.append(Match(module, tuple(opts)))
            module, opts = (tokens[i + 1] if i + 1 < n else ""), []
            i += 2
            continue
        if tok in _TARGET_WORDS:
            target = tokens[i + 1] if i + 1 < n else None
            goto = tok in ("-g", "--goto")
            i += 2
            break
        j = i + 1
        while j < n:  # an option's values run to the next unquoted option or "!"
            t = tokens[j]
            if ((t[:1] == "-" and len(t) > 1 and not t[1].isdigit()) or t == "!") \
                    and j not in quoted:
                break
            j += 1
        values = tuple(tokens[i + 1:j])
        name = _BASE.get(tok)
        if name is not None:
            base.append(Option(name, values, negate))
        else:
            opts.append(Option(tok, values, negate))
        negate = False
        i = j
    if module or opts:
        matches.append(Match(module, tuple(opts)))
    while i < n:  # target options
        tok = tokens[i]
        if tok == "!":
            negate, i = True, i + 1
            continue
        j = i + 1
        while j < n and not (tokens[j][:2] == "--" and j not in quoted):
            j += 1
        target_opts.append(Option(tok, tuple(tokens[i + 1:j]), negate))
        negate = False
        i = j
    if base:
        matches.insert(0, Match("", tuple(base)))
    check_rule(matches, target_opts, target)
    return Rule(table, tokens[1], line, tuple(matches), target, tuple(target_opts), goto)


_MODULE_WORDS = frozenset(("-m", "--match"))
_TARGET_WORDS = frozenset(("-j", "--jump", "-g", "--goto"))


@dataclass
class Table:
    name: str
    policies: dict[str, str] = field(default_factory=dict)  # chain -> policy ("-" for user chains)
    lines: dict[str, list[str]] = field(default_factory=dict)  # chain -> raw rule lines
    _parsed: dict[str, list[Rule | None]] = field(default_factory=dict)
    _hints: dict[str, list[str | None]] = field(default_factory=dict)
    _by_host: dict[str, tuple[dict[str, list[int]], list[int]]] = field(default_factory=dict)
    source: str = ""
    # Where rules came from, for errors: a chain's first line (iptables-save groups a chain's
    # rules), or every rule's line when a paste was put together from pieces.
    first_line: dict[str, int] = field(default_factory=dict)
    line_numbers: dict[str, list[int]] = field(default_factory=dict)

    def rules(self, chain: str) -> list[Rule]:
        return [self.rule(chain, i) for i in range(len(self.lines.get(chain, ())))]

    def rule(self, chain: str, index: int) -> Rule:
        cache = self._parsed.get(chain)
        if cache is None:
            cache = self._parsed[chain] = [None] * len(self.lines[chain])
        got = cache[index]
        if got is None:
            try:
                got = cache[index] = parse_rule(self.name, self.lines[chain][index])
            except ClusterIPError as e:
                raise ClusterIPError(f"{self.where(chain, index)}: {e}") from None
        return got

    def where(self, chain: str, index: int) -> str:
        """`file:line` of a rule, as far as it is known."""
        numbers = self.line_numbers.get(chain)
        if numbers is not None and index < len(numbers):
            line: int | None = numbers[index]
        else:
            first = self.first_line.get(chain)
            line = first + index if first is not None else None
        where = self.source or "dump"
        return f"{where}:{line}" if line else f"{where}: table {self.name} chain {chain}"

    def count(self, chain: str) -> int:
        return len(self.lines.get(chain, ()))

    def destinations(self, chain: str) -> list[str | None]:
        """Each rule's leading `-d CIDR`, read without tokenising the rule.

        iptables-save prints -s/-d first, so a rule whose destination cannot match is skipped
        unparsed: that is what keeps a trace through a 10,000-rule KUBE-SERVICES cheap.
        """
        hints = self._hints.get(chain)
        if hints is None:
            hints = []
            for line in self.lines.get(chain, ()):
                parts = line.split(" ", 4)
                hints.append(parts[3] if len(parts) > 4 and parts[2] == "-d" else None)
            self._hints[chain] = hints
        return hints

    def next_candidate(self, chain: str, index: int, dst: str) -> int:
        """The first rule from `index` on whose leading -d can match `dst` (count() if none).

        What stepping through destinations() with in_cidr gives, from an index built once
        per long chain: host routes (compared as text, as in_cidr does) by host, and the
        rules without a -d or with a wider one, still asked in order. A trace to the last
        of 10,000 services then jumps to its rule instead of stepping over the others.
        """
        hints = self.destinations(chain)
        if len(hints) - index < 64:  # a short walk: no index worth building
            return next((i for i in range(index, len(hints))
                         if self._can_match(chain, i, hints[i], dst)), len(hints))
        by_host = self._by_host.get(chain)
        if by_host is None:
            hosts: dict[str, list[int]] = {}
            others: list[int] = []
            for i, hint in enumerate(hints):
                host, _, bits = hint.partition("/") if hint is not None else ("", "", "-")
                if bits in ("32", "128", ""):
                    hosts.setdefault(host, []).append(i)
                else:
                    others.append(i)
            by_host = self._by_host[chain] = (hosts, others)
        hosts, others = by_host
        exact = hosts.get(dst, ())
        k = bisect_left(exact, index)
        found = exact[k] if k < len(exact) else len(hints)
        j = bisect_left(others, index)
        while j < len(others) and others[j] < found:
            if self._can_match(chain, others[j], hints[others[j]], dst):
                return others[j]
            j += 1
        return found

    def _can_match(self, chain: str, index: int, hint: str | None, dst: str) -> bool:
        try:
            return hint is None or in_cidr(dst, hint)
        except ValueError:
            self.rule(chain, index)  # raises ClusterIPError naming the file, line and value
            raise

    def has_chain(self, chain: str) -> bool:
        return chain in self.policies or chain in self.lines


@dataclass
class Ruleset:
    """One family's iptables state, as one `iptables-save` printed it."""

    family: int
    tables: dict[str, Table]
    backend: str | None = None  # "nf_tables" or "legacy" when the header says
    source: str = ""
    # What a partial paste made us assume (inferred tables, kube-proxy's standard hooks…):
    # each becomes a warning finding on every trace through this ruleset.
    assumptions: list[str] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)

    def rules(self, table: str, chain: str) -> list[Rule]:
        t = self.tables.get(table)
        return t.rules(chain) if t else []

    def chains(self, table: str) -> list[str]:
        t = self.tables.get(table)
        return list(t.policies) if t else []

    def forget(self, table: str, prefixes: tuple[str, ...]) -> None:
        """Drop parsed rules of chains with these prefixes: a full read of a 50,000-endpoint
        node then holds one service's rules at a time, not all of them."""
        t = self.tables.get(table)
        if t is not None:
            for chain in [c for c in t._parsed if c.startswith(prefixes)]:
                del t._parsed[chain]

    def rule_count(self) -> int:
        # dict.values: the row count, without converting a listing's rows (iptables.listing)
        return sum(len(v) for t in self.tables.values() for v in dict.values(t.lines))


_HEADER = re.compile(r"^# Generated by (ip6?tables)-save v[\d.]+(?: \((nf_tables|legacy)\))?")


def looks_like_iptables(text: str) -> bool:
    head = text[:4096]
    return bool(re.search(r"^\*(filter|nat|mangle|raw|security)\s*$", head, re.M)) or (
        "-A " in head and ":" in head and "COMMIT" in text[-4096:])


def parse_iptables_save(text: str, source: str = "", family: int | None = None) -> Ruleset:
    """Parse a whole dump; raises ClusterIPError on truncated or foreign content."""
    where = source or "dump"
    tables: dict[str, Table] = {}
    current: Table | None = None
    backend = None
    saw_family = family
    prefix, bucket = "\0", []  # the chain of the previous rule: iptables-save groups by chain
    for lineno, raw in enumerate(text.splitlines(), 1):
        if raw.startswith(prefix):
            bucket.append(raw)
            continue
        line = raw.strip()
        if not line:
            continue
        c = line[0]
        if c == "-" or c == "[":
            if current is None:
                raise ClusterIPError(f"{where}:{lineno}: rule outside a *table section")
            if c == "[":  # -c counters: "[pkts:bytes] -A CHAIN …"
                line = line.split("] ", 1)[1] if "] " in line else ""
            parts = line.split(" ", 2)
            if parts[0] != "-A" or len(parts) < 2:
                raise ClusterIPError(f"{where}:{lineno}: unreadable line {raw[:60]!r}")
            bucket = current.lines.setdefault(parts[1], [])
            if not bucket:
                current.first_line[parts[1]] = lineno
            bucket.append(line)
            prefix = f"-A {parts[1]} " if line == raw else "\0"
            if saw_family is None and (" -s " in line or " -d " in line):
                addr = line.split(" -d " if " -d " in line else " -s ", 1)[1].split(" ", 1)[0]
                saw_family = 6 if ":" in addr else 4
        elif c == ":":
            parts = line[1:].split()
            if not parts:
                raise ClusterIPError(f"{where}:{lineno}: empty chain declaration")
            current_table = current
            if current_table is None:
                raise ClusterIPError(f"{where}:{lineno}: chain outside a *table section")
            current_table.policies[parts[0]] = parts[1] if len(parts) > 1 else "-"
        elif c == "*":
            prefix = "\0"
            current = Table(line[1:].strip(), source=where)
            if current.name in tables:  # several dumps in one file: iptables.shapes splits them
                raise ClusterIPError(f"{where}:{lineno}: a second *{current.name} table")
            tables[current.name] = current
        elif line == "COMMIT":
            current, prefix = None, "\0"
        elif c == "#":
            m = _HEADER.match(line)
            if m:
                backend = m.group(2) or backend
                if saw_family is None:
                    saw_family = 6 if m.group(1) == "ip6tables" else None
        else:
            raise ClusterIPError(
                f"{where}:{lineno}: not iptables-save output: {raw[:60]!r}")
    if current is not None:
        raise ClusterIPError(
            f"{where}: truncated: table *{current.name} has no COMMIT")
    if not tables:
        raise ClusterIPError(f"{where}: no iptables tables found")
    return Ruleset(saw_family or 4, tables, backend, source)
