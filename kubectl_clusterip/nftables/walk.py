"""Walk one packet through kube-proxy's nftables table the way the kernel does.

Base chains run per hook in priority order (prerouting: filter -110, then nat -100 DNAT;
then the routing decision; forward or input; postrouting nat 100 masquerade; a host
process starts at output). Verdict maps and `numgen random mod N` split the walk: every
branch carries its exact probability (the number of numgen indices that lead to it over
N), so each endpoint's odds come out of the rules themselves. A match the walker cannot
decide from the dump is assumed not to match and the assumption is put on the path's
`undecided` list, never silently taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kubectl_clusterip.branch import Branch, canonical, in_cidr
from kubectl_clusterip.model import ClusterIPError, Node, Packet, Path, Step, join_host_port
from kubectl_clusterip.nftables.ruleset import Chain, NftSet, Rule, Table
from kubectl_clusterip.nftables.values import value_matches

MAX_RULES_PER_WALK = 200_000
MAX_DEPTH = 64
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp"}


class _Undecided(str):
    """Why a value cannot be known from the dump (e.g. an interface name)."""


class _Absent:
    """A header the packet does not have (`tcp dport` on a UDP packet): no match either way."""


ABSENT = _Absent()


_Action = Any  # None (next rule) | ("jump"|"goto", chain) | "return" | "accept" | "drop" | …


@dataclass
class Walker:
    table: Table
    node: Node = field(default_factory=Node)
    affinity: dict[str, set[str]] = field(default_factory=dict)  # extra set members by name
    # Known not to be the node's own even when its addresses are unknown: Service IPs (never
    # bound in nftables mode) and the pod network.
    remote_ips: frozenset[str] = frozenset()
    remote_cidrs: tuple[str, ...] = ()
    record_steps: bool = True  # False when only the outcome matters (the services view)

    def __post_init__(self) -> None:
        self.label = self.table.label
        self.entered: set[str] = set()  # chains jumped to, so a caller can forget them
        self._packet = Packet("0.0.0.0", "0.0.0.0", 0)
        self._family = 4
        self._hooks: dict[str, list[Chain]] = {}
        for ch in self.table.chains.values():
            if ch.is_base:
                self._hooks.setdefault(ch.hook or "", []).append(ch)
        for chains in self._hooks.values():
            chains.sort(key=lambda c: (c.priority or 0))

    # -- public -----------------------------------------------------------------------------

    def walk(self, packet: Packet) -> list[Path]:
        """All paths the first packet of this connection can take, with their probabilities."""
        packet = canonical(packet)
        self._packet, self._family = packet, packet.family
        start = Branch.start(packet)
        paths: list[Path] = []
        first = "output" if packet.from_host else "prerouting"
        for st, verdict in self._hook(first, [start]):
            if verdict != "accept":
                paths.append(st.to_path(verdict))
                continue
            for st2, verdict2 in self._after_routing(st):
                paths.append(st2.to_path(verdict2))
        return paths

    def walk_chain(self, chain: str, packet: Packet) -> list[tuple[Branch, str]]:
        """Walk from one regular chain only (a service's dispatch chain, for `services`)."""
        packet = canonical(packet)
        self._packet, self._family = packet, packet.family
        start = Branch.start(packet)
        ch = self.table.chains.get(chain)
        if ch is None:
            return [(start, "accept")]
        return self._traverse(ch, start)

    # -- hooks ------------------------------------------------------------------------------

    def _after_routing(self, st: Branch) -> list[tuple[Branch, str]]:
        if self._packet.from_host:
            return self._hook("postrouting", [st])
        local = self.is_local(st.dst)
        if local:
            return self._hook("input", [st])
        if local is None:
            st = st.note(f"assumed {st.dst} is not an address of this node (give the node's "
                           "addresses to decide)")
        out: list[tuple[Branch, str]] = []
        for s, v in self._hook("forward", [st]):
            out.extend([(s, v)] if v != "accept" else self._hook("postrouting", [s]))
        return out

    def _hook(self, hook: str, states: list[Branch]) -> list[tuple[Branch, str]]:
        """Every base chain of the hook in priority order; accept passes to the next one."""
        chains = self._hooks.get(hook, [])
        results: list[tuple[Branch, str]] = []
        todo = [(s, 0) for s in states]
        while todo:
            st, ci = todo.pop()
            if ci == len(chains):
                results.append((st, "accept"))
                continue
            ch = chains[ci]
            if ch.type == "nat" and self._nat_done(hook, st):
                todo.append((st, ci + 1))
                continue
            for s, v in self._traverse(ch, st):
                if v == "accept":
                    todo.append((s, ci + 1))
                else:
                    results.append((s, v))
        results.reverse()
        return results

    @staticmethod
    def _nat_done(hook: str, st: Branch) -> bool:
        """Once a connection has its NAT binding, later nat chains of the hook are skipped."""
        if hook in ("prerouting", "output"):
            return st.dnat is not None
        if hook in ("postrouting", "input"):
            return st.masquerade
        return False

    # -- chains -----------------------------------------------------------------------------

    def _traverse(self, chain: Chain, st: Branch) -> list[tuple[Branch, str]]:
        out: list[tuple[Branch, str]] = []
        # A frame is (chain, next rule, chains this frame left by goto): all of them are on
        # the way to the current rule, so reaching one again is a loop.
        todo: list[tuple[Branch, tuple[tuple[str, int, tuple[str, ...]], ...]]] = [
            (st, ((chain.name, 0, ()),))]
        budget = MAX_RULES_PER_WALK
        chains = self.table.chains
        while todo:
            st, stack = todo.pop()
            name, idx, via = stack[-1]
            ch = chains.get(name)
            rules = ch.rules if ch is not None else []
            if idx >= len(rules):
                stack = stack[:-1]
                if stack:
                    todo.append((st, stack))
                else:
                    out.append((st, "drop" if chain.policy == "drop" else "accept"))
                continue
            budget -= 1
            if budget <= 0:
                out.append((st.note(f"stopped after {MAX_RULES_PER_WALK} rules in "
                                      f"{self.label} {chain.name}"), "accept"))
                continue
            rule = rules[idx]
            stack = (*stack[:-1], (name, idx + 1, via))
            for s, action in self._exec(rule, st):
                if action is None or action == "continue":
                    todo.append((s, stack))
                elif isinstance(action, tuple):
                    verb, target = action
                    if target not in chains:
                        todo.append((s.note(f"{self.label} {name}: {verb} to missing chain "
                                              f"{target}; assumed it continues"), stack))
                    elif len(stack) >= MAX_DEPTH:
                        out.append((s.note(f"jump depth over {MAX_DEPTH}"), "accept"))
                    else:
                        _refuse_loop(chain, stack, verb, target)
                        base = stack[:-1] if verb == "goto" else stack
                        frame = (target, 0, (*via, name) if verb == "goto" else ())
                        todo.append((s, (*base, frame)))
                        self.entered.add(target)
                elif action == "return":
                    if len(stack) > 1:
                        todo.append((s, stack[:-1]))
                    else:
                        out.append((s, "drop" if chain.policy == "drop" else "accept"))
                else:
                    out.append((s, action))
        out.reverse()
        return out

    # -- one rule ---------------------------------------------------------------------------

    def _exec(self, rule: Rule, st: Branch) -> list[tuple[Branch, _Action]]:
        """The branches a rule sends the packet on, with what each does next."""
        return list(self._run(rule, rule.expr, 0, st, ()))

    def _run(self, rule: Rule, expr: list, i: int, st: Branch,
             effects: tuple[str, ...]) -> Iterator[tuple[Branch, _Action]]:
        while i < len(expr):
            (kind, v), = expr[i].items()
            i += 1
            if kind == "match":
                ok = self._match(v, st)
                if ok is True:
                    continue
                if isinstance(ok, _Undecided):
                    st = _undecide(st, f"{self.label} {rule.chain}: {ok}; assumed no match: "
                                       f"{rule.text}")
                yield self._done(rule, st, effects), None
                return
            if kind == "vmap":
                yield from self._vmap(rule, v, st, effects)
                return
            if kind in ("jump", "goto"):
                target = v["target"]
                yield self._done(rule, st, (*effects, f"{kind} {target}")), (kind, target)
                return
            if kind in ("accept", "drop", "return", "continue"):
                yield self._done(rule, st, (*effects, kind)), kind
                return
            if kind == "reject":
                yield self._done(rule, st, (*effects, "reject")), "reject"
                return
            if kind == "mangle":
                key = v["key"]
                if isinstance(key, dict) and "meta" in key and key["meta"]["key"] == "mark":
                    val = self._value(v["value"], st)
                    if isinstance(val, int):
                        st = st._replace(mark=val & 0xFFFFFFFF)
                        effects = (*effects, f"mark {st.mark:#x}")
                        continue
                st = st.note(f"{self.label} {rule.chain}: '{rule.text}' sets something not "
                               "modelled; assumed it changes nothing that matters")
                continue
            if kind == "masquerade":
                flags = (v or {}).get("flags") or ()
                flags = (flags,) if isinstance(flags, str) else tuple(flags)
                snat = self.node.source_toward(st.dst)
                st = st._replace(masquerade=True, random_fully="fully-random" in flags,
                             snat=snat)
                eff = f"masquerade to {snat or 'the node address toward ' + st.dst}"
                yield self._done(rule, st, (*effects, eff)), "accept"
                return
            if kind == "snat":
                addr = v.get("addr")
                snat = addr if isinstance(addr, str) else None
                st = st._replace(masquerade=True, snat=snat)
                yield self._done(rule, st, (*effects, f"SNAT to {snat}")), "accept"
                return
            if kind == "dnat":
                yield from self._dnat(rule, v, st, effects)
                return
            if kind == "set":
                name = str(v.get("set", "")).lstrip("@")
                if name.startswith("affinity-"):
                    st = st._replace(sticky=True)
                effects = (*effects, f"{v.get('op')} @{name} with {st.src}")
                continue
            if kind in ("counter", "log", "notrack"):
                continue
            if kind == "limit":
                st = st.note(f"{self.label} {rule.chain}: assumed under the limit: "
                               f"{rule.text}")
                continue
            reason = (f"{self.label} {rule.chain}: cannot read the rule '{rule.text}'"
                      if kind == "unparsed" else
                      f"{self.label} {rule.chain}: statement '{kind}' is not modelled")
            st = _undecide(st, f"{reason}; assumed no match")
            yield self._done(rule, st, effects), None
            return
        yield self._done(rule, st, effects), None

    def _done(self, rule: Rule, st: Branch, effects: tuple[str, ...]) -> Branch:
        if not effects or not self.record_steps:
            return st
        step = Step(self.label, rule.chain, _rule_text(rule), "; ".join(effects))
        return st._replace(steps=(*st.steps, step))

    def _vmap(self, rule: Rule, v: dict, st: Branch,
              effects: tuple[str, ...]) -> Iterator[tuple[Branch, _Action]]:
        found = self._lookups(v["key"], v["data"], st)
        if isinstance(found, (_Undecided, _Absent)):
            if isinstance(found, _Undecided):
                st = _undecide(st, f"{self.label} {rule.chain}: {found}; assumed no match: "
                                   f"{rule.text}")
            yield self._done(rule, st, effects), None
            return
        hits, miss, n, unknown = found
        for why in unknown:
            st = _undecide(st, f"{self.label} {rule.chain}: {why}; assumed no match: "
                               f"{rule.text}")
        groups: dict[str, tuple[int, Any, str]] = {}
        for count, verdict, comment in hits:
            text = _verdict_text(verdict)
            c, _, _ = groups.get(text, (0, verdict, comment or ""))
            groups[text] = (c + count, verdict, comment or "")
        for text, (count, verdict, comment) in groups.items():
            b = st if count == n else st._replace(probability=st.probability * count / n)
            eff = text + (f" [{comment}]" if comment else "")
            if n > 1:
                eff += f" ({count} of {n} numgen values)"
            yield self._done(rule, b, (*effects, eff)), _verdict_action(verdict)
        if miss > 0:
            b = st if miss == n else st._replace(probability=st.probability * miss / n)
            yield self._done(rule, b, effects), None

    def _dnat(self, rule: Rule, v: dict, st: Branch,
              effects: tuple[str, ...]) -> Iterator[tuple[Branch, _Action]]:
        addr = v.get("addr")
        if isinstance(addr, dict) and "map" in addr:
            found = self._lookups(addr["map"]["key"], addr["map"]["data"], st)
            if isinstance(found, (_Undecided, _Absent)):
                st = _undecide(st, f"{self.label} {rule.chain}: cannot pick the DNAT target; "
                                   f"assumed no match: {rule.text}")
                yield self._done(rule, st, effects), None
                return
            hits, miss, n, _ = found
            targets: dict[tuple[str, int], int] = {}
            for count, data, _ in hits:
                parts = tuple(data["concat"]) if isinstance(data, dict) and "concat" in data \
                    else data if isinstance(data, tuple) else (data,)
                ip = str(parts[0])
                port = int(parts[1]) if len(parts) > 1 else int(v.get("port") or st.dport)
                targets[(ip, port)] = targets.get((ip, port), 0) + count
            for (ip, port), count in targets.items():
                b = st._replace(probability=st.probability * count / n, dst=ip, dport=port,
                                dnat=(ip, port))
                eff = f"DNAT to {join_host_port(ip, port)}"
                if n > 1:
                    eff += f" ({count} of {n} numgen values)"
                yield self._done(rule, b, (*effects, eff)), "accept"
            if miss > 0:
                yield st._replace(probability=st.probability * miss / n), "drop"
            return
        ip = str(addr) if addr is not None else st.dst
        port = int(v["port"]) if v.get("port") is not None else st.dport
        st = st._replace(dst=ip, dport=port, dnat=(ip, port))
        yield self._done(rule, st, (*effects, f"DNAT to {join_host_port(ip, port)}")), "accept"

    def _lookups(self, key: Any, data: Any, st: Branch
                 ) -> tuple[list[tuple[int, Any, str | None]], int, int, list[str]] | \
            _Undecided | _Absent:
        """A map lookup as (hits: (count, data, comment), misses, out of n, notes).

        One key gives one outcome of n = 1. `numgen random mod N` gives every index with
        odds 1/N: counted per map element (how many indices its key covers), so a huge N
        costs no more than the map has elements.
        """
        if isinstance(key, dict) and "numgen" in key:
            ng = key["numgen"]
            if ng["mode"] != "random":
                return _Undecided(f"numgen {ng['mode']} depends on packet counts")
            n, lo = ng["mod"], ng.get("offset", 0)
            elements = self._map_elements(data)
            if isinstance(elements, _Undecided):
                return elements
            hits = []
            for k, value, comment in elements:
                count = _covered(k, lo, lo + n - 1)
                if count:
                    hits.append((count, value, comment))
            cut = _cut_short(self.table.sets[data[1:]]) if isinstance(data, str) else None
            return hits, n - sum(c for c, _, _ in hits), n, [str(cut)] if cut else []
        v = self._value(key, st)
        if isinstance(v, (_Undecided, _Absent)):
            return v
        found = self._map_lookup(data, v)
        if isinstance(found, _Undecided):
            return [], 1, 1, [str(found)]
        if found is None:
            return [], 1, 1, []
        return [(1, found[0], found[1])], 0, 1, []

    # -- matches and values -----------------------------------------------------------------

    def _match(self, m: dict, st: Branch) -> bool | _Undecided:
        left = self._value(m["left"], st)
        if isinstance(left, _Undecided):
            return left
        if left is ABSENT:
            return False
        if isinstance(left, list):
            return _Undecided("a numgen value compared outside a map is not modelled")
        op = m.get("op", "==")
        right = m["right"]
        if isinstance(right, str) and right.startswith("@"):
            hit = self._set_has(right[1:], left)
            if isinstance(hit, _Undecided):
                return hit
            return hit if op in ("==", "in") else not hit
        if op == "in" or (isinstance(left, frozenset)):
            have = left if isinstance(left, frozenset) else frozenset((left,))
            want = frozenset(right if isinstance(right, list) else [right])
            hit = bool(have & want)
            return hit if op in ("==", "in") else not hit
        if isinstance(right, dict) and "set" in right and isinstance(right["set"], str):
            right = right["set"]
            return self._match({"op": op, "left": m["left"], "right": right}, st)
        if op in ("==", "!="):
            hit = value_matches(left, right)
            return hit if op == "==" else not hit
        if isinstance(left, int) and isinstance(right, int):
            return {"<": left < right, ">": left > right, "<=": left <= right,
                    ">=": left >= right}.get(op, False)
        return _Undecided(f"comparison {op} on {left!r} is not modelled")

    def _set_has(self, name: str, value: Any) -> bool | _Undecided:
        s = self.table.sets.get(name)
        extra = self.affinity.get(name)
        if extra and value in extra:
            return True
        if s is None:
            return _Undecided(f"set @{name} is not in the dump")
        if s.lookup(value) is not None:
            return True
        return _cut_short(s) or False

    def _map_lookup(self, data: Any, key: Any) -> tuple[Any, str | None] | _Undecided | None:
        """(data, element comment) for a key in a named (`@name`) or anonymous map, or None."""
        if isinstance(data, str):
            s = self.table.sets.get(data[1:])
            if s is None:
                return _Undecided(f"map {data} is not in the dump")
            e = s.lookup(key)
            return (e.value, e.comment) if e is not None else _cut_short(s)
        for k, value in data["set"]:
            comment = None
            if isinstance(k, dict) and "elem" in k:
                comment, k = k["elem"].get("comment"), k["elem"]["val"]
            if value_matches(key, k):
                return value, comment
        return None

    def _map_elements(self, data: Any) -> list[tuple[Any, Any, str | None]] | _Undecided:
        """(key, data, comment) of every element of a named or anonymous map."""
        if isinstance(data, str):
            s = self.table.sets.get(data[1:])
            if s is None:
                return _Undecided(f"map {data} is not in the dump")
            return [(e.key, e.value, e.comment) for e in s.elements]
        out = []
        for k, value in data["set"]:
            comment = None
            if isinstance(k, dict) and "elem" in k:
                comment, k = k["elem"].get("comment"), k["elem"]["val"]
            out.append((k, value, comment))
        return out

    def _value(self, e: Any, st: Branch) -> Any:
        if not isinstance(e, dict):
            return e
        (kind, v), = e.items()
        pkt = self._packet
        if kind == "payload":
            proto, fld = v.get("protocol"), v.get("field")
            if proto in ("ip", "ip6"):
                fam = 4 if proto == "ip" else 6
                if self._family != fam:
                    return ABSENT
                if fld == "saddr":
                    return st.src
                if fld == "daddr":
                    return st.dst
                if fld in ("protocol", "nexthdr"):
                    return pkt.protocol
            elif proto in ("tcp", "udp", "sctp", "th"):
                if proto != "th" and proto != pkt.protocol:
                    return ABSENT
                if fld == "dport":
                    return st.dport
                if fld == "sport":
                    return st.sport
            return _Undecided(f"header field {proto} {fld} is not modelled")
        if kind == "meta":
            key = v.get("key")
            if key == "l4proto":
                return pkt.protocol
            if key == "mark":
                return st.mark
            if key == "nfproto":
                return "ipv4" if self._family == 4 else "ipv6"
            return _Undecided(f"cannot tell meta {key} (e.g. interfaces) from the dump")
        if kind == "ct":
            key = v.get("key")
            if key == "state":
                return frozenset(("new",))
            if key == "status":
                flags = {"dnat"} if st.dnat else set()
                if st.masquerade:
                    flags.add("snat")
                return frozenset(flags)
            if key == "mark":
                return 0
            return _Undecided(f"ct {key} is not modelled")
        if kind == "fib":
            flags = v.get("flags") or []
            flags = [flags] if isinstance(flags, str) else flags
            if v.get("result") != "type" or len(flags) != 1:
                return _Undecided(f"fib {' . '.join(flags)} {v.get('result')} is not modelled")
            ip = st.src if flags[0] == "saddr" else st.dst
            if flags[0] == "saddr" and pkt.from_host and ip == pkt.src_ip:
                return "local"
            local = self.is_local(ip)
            if local is None:
                return _Undecided(f"cannot tell whether {ip} is an address of this node")
            return "local" if local else "unicast"
        if kind == "concat":
            parts = [self._value(x, st) for x in v]
            for p in parts:
                if isinstance(p, (_Undecided, _Absent)):
                    return p
            return tuple(parts)
        if kind in ("&", "|", "^", "<<", ">>"):
            a, b = self._value(v[0], st), self._value(v[1], st)
            if not (isinstance(a, int) and isinstance(b, int)):
                return a if isinstance(a, (_Undecided, _Absent)) else _Undecided(
                    f"bitwise {kind} on {a!r}")
            return {"&": a & b, "|": a | b, "^": a ^ b, "<<": a << b, ">>": a >> b}[kind]
        if kind == "numgen":
            return _Undecided("numgen outside a map is not modelled")
        return e

    def is_local(self, ip: str) -> bool | None:
        local = self.node.is_local(ip)
        if local is None and (ip in self.remote_ips
                              or any(in_cidr(ip, c) for c in self.remote_cidrs)):
            return False
        return local

def _refuse_loop(start: Chain, stack: tuple, verb: str, target: str) -> None:
    """The kernel refuses a ruleset whose jumps and gotos loop: one in a dump was made by hand."""
    for name, _, via in stack:
        if name == target or target in via:
            break
    else:
        return
    way = [c for name, _, via in stack for c in (*via, name)]
    if target in way:
        loop = " → ".join([*way[way.index(target):], target])
        raise ClusterIPError(
            f"{start.source or 'nft ruleset'}: {start.family} {start.table}: {verb} loop "
            f"{loop}: the kernel refuses rulesets that loop, so this dump was edited by hand")


def _undecide(st: Branch, why: str) -> Branch:
    return st._replace(undecided=(*st.undecided, why))


def _rule_text(rule: Rule) -> str:
    return rule.text + (f" # handle {rule.handle}" if rule.handle is not None else "")


def _cut_short(s: NftSet) -> _Undecided | None:
    """A miss in a set the paste shows only part of proves nothing."""
    if not s.incomplete:
        return None
    return _Undecided(f"{s.kind} {s.name} is cut short in the paste: the key may be among "
                      "its missing elements")


def _covered(key: Any, lo: int, hi: int) -> int:
    """How many of the numgen values lo..hi a map key (a number or a range) covers."""
    if isinstance(key, dict) and "range" in key:
        a, b = key["range"]
    else:
        a = b = key
    if type(a) is not int or type(b) is not int:
        return 0
    return max(0, min(b, hi) - max(a, lo) + 1)


def _verdict_text(verdict: Any) -> str:
    if isinstance(verdict, dict):
        (kind, v), = verdict.items()
        if kind in ("jump", "goto"):
            return f"{kind} {v['target']}"
        return kind
    return str(verdict)


def _verdict_action(verdict: Any) -> _Action:
    if isinstance(verdict, dict):
        (kind, v), = verdict.items()
        if kind in ("jump", "goto"):
            return (kind, v["target"])
        return kind
    return str(verdict)
