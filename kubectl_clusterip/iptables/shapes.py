"""Every shape iptables rules get pasted in, read into one Ruleset per IP family.

`iptables-save` output takes the fast path (parse.parse_iptables_save). Anything else, or a
save with noise around it, is cleaned (kubectl_clusterip.paste) and read by shape:

* `iptables -S` / `iptables -t nat -S` / `ip6tables -S`: `-P`/`-N`/`-A` lines, no table
  header. The table is the `-t` of the command when the paste shows it; else the policies a
  section starts with name it (nat has PREROUTING..POSTROUTING, filter INPUT/FORWARD/OUTPUT);
  else each rule is put where kube-proxy writes such a rule (`infer_table`).
* `iptables -L -n [-v] [-x] [--line-numbers]`: converted row by row (iptables.listing).
* Fragments (`iptables-save | grep my-service`): rules whose table and hooks are missing.
  kube-proxy's standard hooks and masquerade chains are assumed where a fragment needs them.

Files given separately (filter in one, nat in another) are merged per family. Everything
assumed is recorded in `Ruleset.assumptions`, and every trace reports it as a finding.
"""

from __future__ import annotations

import re

from kubectl_clusterip import paste
from kubectl_clusterip.iptables.listing import (
    CHAIN,
    ListingError,
    ListingLines,
    header_columns,
    rule_spec,
)
from kubectl_clusterip.iptables.parse import (
    BUILTIN_CHAINS,
    Ruleset,
    Table,
    looks_like_iptables,
    parse_iptables_save,
)
from kubectl_clusterip.model import ClusterIPError

_TABLE_FLAG = re.compile(r"(?:^|\s)(?:-t\s*|--table[= ])(\w+)")
_SAVE_START = ("-A ", ":", "*", "COMMIT", "#", "[")
_SPEC_START = ("-A ", "-P ", "-N ", "-I ", ":", "*", "COMMIT", "#", "[")
NAT_CHAINS = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-",
              "KUBE-MARK-MASQ", "KUBE-MARK-DROP", "KUBE-POSTROUTING", "PREROUTING",
              "POSTROUTING")
NAT_TARGETS = ("DNAT", "SNAT", "MASQUERADE", "REDIRECT", *NAT_CHAINS[:8])
FILTER_CHAINS = ("KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-EXTERNAL-SERVICES",
                 "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "INPUT", "FORWARD")
FILTER_TARGETS = ("REJECT", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-EXTERNAL-SERVICES",
                  "KUBE-PROXY-FIREWALL")
# kube-proxy's own rules, for fragments that refer to them without holding them.
PORTALS = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
STANDARD = {
    ("nat", "PREROUTING"): [f"-A PREROUTING {PORTALS}"],
    ("nat", "OUTPUT"): [f"-A OUTPUT {PORTALS}"],
    ("nat", "KUBE-MARK-MASQ"): ["-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"],
    ("nat", "POSTROUTING"): ['-A POSTROUTING -m comment --comment "kubernetes postrouting '
                             'rules" -j KUBE-POSTROUTING'],
    ("nat", "KUBE-POSTROUTING"): [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE"],
    ("filter", "FORWARD"): [f"-A FORWARD -m conntrack --ctstate NEW {PORTALS}"],
    ("filter", "OUTPUT"): [f"-A OUTPUT -m conntrack --ctstate NEW {PORTALS}"],
}
HINT = ("paste the output of `iptables-save` (and `ip6tables-save`) from the node, or "
        "`iptables -t nat -S` and `iptables -S`")


_PASTE = re.compile(r"^(?:-[APN] [^-\s]|Chain \S+ \((?:policy \w+|\d+ references?)|:KUBE-\S+ - \[)",
                    re.M)


def looks_like_iptables_paste(head: str) -> bool:
    """`iptables -S`, `iptables -L` or grep'd iptables-save lines (ipvsadm-save's `-A -t`
    is not one)."""
    return bool(_PASTE.search(head))


def read_rulesets(dumps: list[tuple[str, str]]) -> list[Ruleset]:
    """One Ruleset per IP family from all of a node's iptables dumps, whatever their shape."""
    parts: list[Ruleset] = []
    for source, text in dumps:
        if looks_like_iptables(text):
            try:
                parts.append(parse_iptables_save(text, source))
                continue
            except ClusterIPError:
                pass  # noise around it, or several dumps: read_paste sorts them out
        parts.extend(read_paste(text, source))
    return [assume_kube_proxy(rs) for rs in merge(parts)]


# Pastes this large whose first and last lines show no prompt or fence are read as they
# are: one line-by-line cleaning pass would cost more than reading the rules.
CLEAN_ALWAYS_BELOW = 1 << 20


def read_paste(text: str, source: str) -> list[Ruleset]:
    """The rulesets in a paste that is not plain iptables-save output."""
    out: list[Ruleset] = []
    noisy = len(text) < CLEAN_ALWAYS_BELOW or paste.looks_noisy(text)
    for seg in paste.clean(text) if noisy else [paste.Segment(text, raw=text)]:
        family = 6 if seg.command and "ip6tables" in seg.command else None
        table = _command_table(seg.command)
        found: list[Ruleset] = []
        if _has_line(seg.text, "Chain "):
            found.extend(_read_listing(seg.text.splitlines(), source, family, table))
        elif _has_line(seg.text, "*"):
            for piece in _split_saves(seg.lines()):
                found.append(parse_iptables_save(piece, source, family))
        elif any(_has_line(seg.text, w) for w in ("-A ", "-P ", "-N ")):
            found.extend(_read_spec(seg.lines(), source, family, table))
        if seg.elided:
            where = ", ".join(str(n) for n in seg.elided[:5])
            for rs in found:
                rs.assumptions.append(f"{source}: lines were elided (`...` at line {where}): "
                                      "rules there are unknown to the trace")
        out.extend(found)
    if not out:
        n, line = paste.first_line(text, lambda ln: paste.prompt_command(ln) is not None)
        raise ClusterIPError(f"{source}:{n}: no iptables rules in {line!r}: {HINT}")
    return out


def _has_line(text: str, start: str) -> bool:
    """A line starts with `start` (a substring search: a regex would cost more on 30 MB)."""
    return text.startswith(start) or f"\n{start}" in text


def _command_table(command: str | None) -> str | None:
    """`-t nat` of the command the paste shows; `iptables -S`/`-L` alone lists filter."""
    if not command or "tables" not in command:
        return None
    m = _TABLE_FLAG.search(command)
    if m:
        return m.group(1)
    return None if "-save" in command else "filter"


def _split_saves(lines: list[str]) -> list[str]:
    """Concatenated iptables-save outputs, each padded to keep its line numbers."""
    lines = paste.join_wrapped(lines, lambda ln: ln.startswith(_SAVE_START))
    pieces: list[str] = []
    start, seen = 0, set()
    for i, ln in enumerate(lines):
        name = ln[1:].strip() if ln.startswith("*") else None
        new_header = ln.startswith("# Generated by") and seen
        if (name is not None and name in seen) or new_header:
            pieces.append("\n" * start + "\n".join(lines[start:i]))
            start, seen = i, set()
        if name is not None:
            seen.add(name)
    pieces.append("\n" * start + "\n".join(lines[start:]))
    return [p for p in pieces if p.strip()]


def infer_table(chain: str, line: str) -> str:
    """The table kube-proxy writes such a rule in (for `-S` output and fragments)."""
    target = line.rsplit(" -j ", 1)[-1].split(" ", 1)[0] if " -j " in line else ""
    if target == "KUBE-SERVICES":
        return "filter" if chain in ("INPUT", "FORWARD") or "--ctstate NEW" in line else "nat"
    if chain == "KUBE-SERVICES" or chain == "KUBE-NODEPORTS":
        return "filter" if target in ("REJECT", "DROP", "ACCEPT") else "nat"
    if target.startswith(NAT_TARGETS) or chain.startswith(NAT_CHAINS):
        return "nat"
    if target.startswith(FILTER_TARGETS) or chain.startswith(FILTER_CHAINS):
        return "filter"
    return "filter"  # iptables' own default table


def _table_of_policies(chains: set[str]) -> str | None:
    for name in ("mangle", "nat", "filter", "raw"):
        if set(BUILTIN_CHAINS[name]) == chains:
            return name
    return None


def _family(lines: list[str], given: int | None) -> int:
    """4 or 6 from the command or the first address; 0 when nothing tells (merge decides)."""
    if given:
        return given
    for ln in lines:
        for flag in (" -d ", " -s "):
            if flag in ln:
                addr = ln.split(flag, 1)[1].split(" ", 1)[0]
                return 6 if ":" in addr else 4
    return 0


def _read_spec(lines: list[str], source: str, family: int | None,
               table: str | None) -> list[Ruleset]:
    """`iptables -S` output, several tables' worth, or grep'd iptables-save rules."""
    if not all(ln.startswith(_SPEC_START) for ln in lines if ln):
        lines = paste.join_wrapped(lines, lambda ln: ln.startswith(_SPEC_START))
    # A second table's -S output pasted after the first starts again with -P lines.
    bounds, after_rules = [0], False
    for i, ln in enumerate(lines):
        if ln[:3] == "-P ":
            if after_rules:
                bounds.append(i)
                after_rules = False
        elif not after_rules and ln[:1] == "-":
            after_rules = True
    bounds.append(len(lines))
    return [rs for lo, hi in zip(bounds, bounds[1:])
            if (rs := _spec_section(lines, lo, hi, source, family, table)) is not None]


def _spec_section(lines: list[str], lo: int, hi: int, source: str, family: int | None,
                  table: str | None) -> Ruleset | None:
    policies: dict[str, str] = {}
    declared: list[str] = []
    for ln in lines[lo:hi]:
        if ln[:3] == "-P ":
            words = ln.split()
            if len(words) > 2:
                policies[words[1]] = words[2]
    fixed = table or _table_of_policies(set(policies))
    tables: dict[str, Table] = {}
    inferred: dict[str, int] = {}
    current: Table | None = None
    prefix, bucket, numbers = "\0", [], []
    for i in range(lo, hi):
        ln = lines[i]
        if ln.startswith(prefix):  # the next rule of the same chain: -S groups by chain
            bucket.append(ln)
            numbers.append(i + 1)
            continue
        c = ln[:1]
        if not ln or c == "#" or c == "*" or ln == "COMMIT" or ln[:3] == "-P ":
            continue
        if c == ":" or ln[:3] == "-N ":
            declared.append(ln[1:].split()[0] if c == ":" else ln.split()[1])
            continue
        if c == "[":  # -c counters
            ln = ln.split("] ", 1)[1] if "] " in ln else ln
        words = ln.split(" ", 2)
        if words[0] not in ("-A", "-I") or len(words) < 2:
            raise ClusterIPError(f"{source}:{i + 1}: not an iptables rule: "
                                 f"{paste.shorten(ln)!r}: {HINT}")
        if words[0] == "-I":
            ln = "-A " + ln[3:]
        chain = words[1]
        name = fixed or infer_table(chain, ln)
        if not fixed:
            inferred[name] = inferred.get(name, 0) + 1
        if current is None or current.name != name:
            current = tables.get(name) or tables.setdefault(name, Table(name, source=source))
        bucket = current.lines.setdefault(chain, [])
        numbers = current.line_numbers.setdefault(chain, [])
        bucket.append(ln)
        numbers.append(i + 1)
        prefix = f"-A {chain} " if fixed and ln is lines[i] else "\0"
    if not tables and not policies and not declared:
        return None
    if fixed:
        tables.setdefault(fixed, Table(fixed, source=source)).policies.update(policies)
    for chain in declared:
        home = fixed or next((name for name, t in tables.items() if chain in t.lines),
                             infer_table(chain, ""))
        tables.setdefault(home, Table(home, source=source)).policies.setdefault(chain, "-")
    rs = Ruleset(_family(lines[lo:hi], family), tables, source=source)
    if inferred:
        counts = ", ".join(f"{k} {v} rule{'s' * (v != 1)}" for k, v in sorted(inferred.items()))
        rs.assumptions.append(
            f"{source}: the rules carry no table (`iptables -S` without `-t`, or a grep): "
            f"each was put where kube-proxy writes it ({counts})")
    elif table is None and fixed:
        rs.assumptions.append(f"{source}: table {fixed} inferred from the chain policies "
                              f"({', '.join(sorted(policies))})")
    return rs


def _read_listing(lines: list[str], source: str, family: int | None,
                  table: str | None) -> list[Ruleset]:
    """`iptables -L -n` output (any of -v, -x, --line-numbers), one table or several.

    Each section's rows are grouped by chain here and converted to rule specs when a chain
    is first read (listing.ListingLines); only a section whose table must be inferred rule
    by rule is converted at once."""
    sections: list[dict] = []
    chain: str | None = None
    columns: list[str] | None = None
    rows: list[str] | None = None
    last: list[str] = []  # the current chain's rows, also after a blank line
    numbers: list[int] | None = None  # explicit line numbers, once a chain's rows have a gap
    header, header_cols = "", None
    policies: dict[str, str] = {}
    for n, ln in enumerate(lines, 1):
        if rows is not None and ln and (ln[0] != "C" or ln[:6] != "Chain "):
            rows.append(ln)  # the common line: a row of the current chain
            if numbers is not None:
                numbers.append(n)
            continue
        if not ln or ln[:6] == "Chain ":
            m = CHAIN.match(ln) if ln else None
            if m is None:
                rows = None  # a blank line ends the chain's rows (or a blanked prompt, …)
                continue
            chain, policy = m.group(1, 2)
            # iptables -L prints a table's built-in chains first: a built-in chain after a
            # user chain, or a chain seen before, starts the next table's listing.
            if not sections or chain in policies or (policy and "-" in policies.values()):
                sections.append({"policies": {}, "rows": {}, "first": {}, "columns": {},
                                 "numbers": {}})
                policies = sections[-1]["policies"]
            policies[chain] = policy or "-"
            rows = columns = numbers = None
            continue
        if chain is None:
            raise ClusterIPError(f"{source}:{n}: not iptables -L output: "
                                 f"{paste.shorten(ln.strip())!r}: {HINT}")
        sec = sections[-1]
        if columns is None:
            if ln != header:
                header, header_cols = ln, header_columns(ln)
            columns = header_cols
            if columns is None:
                raise ClusterIPError(f"{source}:{n}: a rule before the column header of "
                                     f"chain {chain}: {paste.shorten(ln.strip())!r}")
            sec["columns"][chain] = columns
            sec["first"][chain] = n + 1
            rows = last = sec["rows"][chain] = []
            continue
        # A row after a gap in its chain (an elision, a blanked prompt): number every row.
        if numbers is None:
            first = sec["first"][chain]
            numbers = sec["numbers"][chain] = list(range(first, first + len(last)))
        rows = last
        rows.append(ln)
        numbers.append(n)
    out = []
    for sec in sections:
        builtins = {c for c, p in sec["policies"].items() if p != "-"}
        fixed = table if len(sections) == 1 and table else _table_of_policies(builtins)
        fam = family or _listing_family(sec["rows"])
        cols = sec["columns"]
        tables: dict[str, Table] = {}
        if fixed:
            t = tables[fixed] = Table(fixed, source=source, first_line=sec["first"],
                                      line_numbers=sec["numbers"])
            t.lines = ListingLines(cols, fam, source, sec["first"], sec["numbers"])
            for c, chain_rows in sec["rows"].items():
                if chain_rows:
                    dict.__setitem__(t.lines, c, chain_rows)
            t.policies.update(sec["policies"])
        else:
            for c, chain_rows in sec["rows"].items():
                first = sec["first"][c]
                at = sec["numbers"].get(c) or range(first, first + len(chain_rows))
                for n, row in zip(at, chain_rows):
                    try:
                        spec = rule_spec(c, row, cols[c], fam)
                    except ListingError as e:
                        raise ClusterIPError(f"{source}:{n}: {e}") from None
                    name = infer_table(c, spec)
                    t = tables.get(name) or tables.setdefault(name, Table(name, source=source))
                    t.lines.setdefault(c, []).append(spec)
                    t.line_numbers.setdefault(c, []).append(n)
            for c, policy in sec["policies"].items():
                home = next((name for name, tb in tables.items() if c in tb.lines),
                            infer_table(c, ""))
                tables.setdefault(home, Table(home, source=source)).policies[c] = policy
        rs = Ruleset(fam, tables, source=source)
        if fixed and not table:
            rs.assumptions.append(f"{source}: table {fixed} inferred from its built-in chains "
                                  f"({', '.join(sorted(builtins))})")
        elif not fixed and sec["rows"]:
            rs.assumptions.append(f"{source}: the listing names no table: each rule was put "
                                  "where kube-proxy writes it")
        out.append(rs)
    return out


def _listing_family(rows: dict[str, list[str]]) -> int:
    """IPv6 when an address column holds one (`::/0` is printed for any address)."""
    seen = 0
    for chain_rows in rows.values():
        for row in chain_rows:
            if "::" in row or " fd" in row or "/128" in row:
                return 6 if any(":" in w and _V6.match(w) for w in row.split()[:12]) else 4
            seen += 1
            if seen > 200:
                return 4
    return 4


_V6 = re.compile(r"^!?[0-9a-fA-F]*:[0-9a-fA-F:]*:[0-9a-fA-F:.]*(?:/\d+)?$")


def merge(parts: list[Ruleset]) -> list[Ruleset]:
    """One ruleset per family: tables from several files (or pieces of one) side by side."""
    by_family: dict[int, Ruleset] = {}
    known = {rs.family for rs in parts if rs.family}
    for rs in parts:
        if not rs.family:  # e.g. `ip6tables -S` of a table without addresses: join the rest
            rs.family = next(iter(known)) if len(known) == 1 else 4
            if len(known) != 1:
                rs.assumptions.append(f"{rs.source}: no address says which IP family its "
                                      "rules are for: read as IPv4")
    for rs in parts:
        have = by_family.get(rs.family)
        if have is None:
            by_family[rs.family] = rs
            continue
        have.source = ", ".join(dict.fromkeys([*have.source.split(", "), rs.source]))
        have.backend = have.backend or rs.backend
        have.assumptions.extend(a for a in rs.assumptions if a not in have.assumptions)
        for name, t in rs.tables.items():
            into = have.tables.get(name)
            if into is None:
                have.tables[name] = t
                continue
            if _complete(into) and _complete(t) and any(into.lines.get(c) for c in t.lines):
                raise ClusterIPError(f"{t.source}: table {name} (IPv{rs.family}) was already "
                                     f"given in {into.source}: give each table once")
            _merge_table(into, t)
    return sorted(by_family.values(), key=lambda r: r.family)


def _merge_table(into: Table, t: Table) -> None:
    for chain, policy in t.policies.items():
        if into.policies.get(chain, "-") == "-":
            into.policies[chain] = policy
    for chain, lines in t.lines.items():
        have = into.lines.setdefault(chain, [])
        numbers = into.line_numbers.setdefault(chain, [0] * len(have))
        new = [i for i, ln in enumerate(lines) if ln not in set(have)]
        have.extend(lines[i] for i in new)
        theirs = t.line_numbers.get(chain)
        numbers.extend(theirs[i] if theirs and i < len(theirs) else 0 for i in new)
    into._parsed.clear()
    into._hints.clear()


def _complete(t: Table) -> bool:
    """A table pasted whole: at least one of its built-in chains is declared."""
    return any(c in t.policies for c in BUILTIN_CHAINS.get(t.name, ()))


def _holds(t: Table | None, chain: str) -> bool:
    return t is not None and (chain in t.policies or bool(t.lines.get(chain)))


def _refers(t: Table, target: str) -> bool:
    needle = f"-j {target}"
    return any(needle in ln for lines in t.lines.values() for ln in lines)


def assume_kube_proxy(rs: Ruleset) -> Ruleset:
    """Give a fragment kube-proxy's standard hooks and masquerade chains where it refers to
    them without holding them; each assumption is recorded, none is silent."""
    nat, flt = rs.tables.get("nat"), rs.tables.get("filter")
    added: list[str] = []

    def add(t: Table, chain: str) -> None:
        rules = STANDARD[(t.name, chain)]
        t.lines.setdefault(chain, []).extend(rules)
        t.line_numbers.setdefault(chain, []).extend(0 for _ in rules)
        t._parsed.pop(chain, None)
        t._hints.pop(chain, None)
        added.append(f"{t.name} {chain}")

    if nat is not None and not _complete(nat):
        if _holds(nat, "KUBE-SERVICES"):
            for hook in ("PREROUTING", "OUTPUT"):
                if not nat.lines.get(hook):
                    add(nat, hook)
        if _refers(nat, "KUBE-MARK-MASQ"):
            for chain in ("KUBE-MARK-MASQ", "KUBE-POSTROUTING", "POSTROUTING"):
                if not nat.lines.get(chain):
                    add(nat, chain)
    if flt is not None and not _complete(flt) and _holds(flt, "KUBE-SERVICES"):
        for hook in ("FORWARD", "OUTPUT"):
            if not flt.lines.get(hook):
                add(flt, hook)
    for what in added:
        rs.assumptions.append(f"{rs.source}: the paste has no {what} rules: assumed kube-proxy's "
                              f"standard ones ({STANDARD[tuple(what.split())][0][3:]})"
                              if len(STANDARD[tuple(what.split())]) == 1 else
                              f"{rs.source}: the paste has no {what} rules: assumed "
                              "kube-proxy's standard masquerade chain")
    for t in (nat, flt):
        if t is not None and not _complete(t):
            missing = sorted({ln.rsplit(" -j ", 1)[1].split(" ", 1)[0]
                              for lines in t.lines.values() for ln in lines if " -j KUBE-" in ln}
                             - set(t.lines) - set(t.policies))
            if missing:
                shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more"
                                                 if len(missing) > 4 else "")
                rs.assumptions.append(f"{rs.source}: {t.name} chains the rules jump to are not "
                                      f"in the paste ({shown}): the walk cannot follow them")
    return rs
