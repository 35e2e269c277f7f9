"""Walk one packet through an iptables ruleset the way netfilter does.

The first packet of a connection visits raw, mangle, nat (DNAT), then filter, then nat
POSTROUTING (SNAT). `statistic random` splits the walk: each branch carries its exact
probability, so the endpoints' overall odds come out of the rules themselves rather than
from an assumption about kube-proxy. A match the walker cannot decide from the dump is
assumed not to match, and the assumption is returned as a note.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from kubectl_clusterip.branch import Branch, canonical, in_cidr
from kubectl_clusterip.iptables.parse import BUILTIN_CHAINS, Match, Option, Rule, Ruleset
from kubectl_clusterip.model import ClusterIPError, Node, Packet, Path, Step, join_host_port

MAX_RULES_PER_WALK = 200_000
MAX_DEPTH = 64
# Live branches of one walk: kube-proxy splits once per service (one branch per endpoint,
# 5,000 endpoints at most in practice); nested statistic chains multiply.
MAX_BRANCHES = 100_000
_KUBE_PROXY_CHAINS = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")
_PROTO_NUMBERS = {"tcp": "6", "udp": "17", "sctp": "132", "icmp": "1", "ipv6-icmp": "58"}


@dataclass
class _Outcome:
    verdict: str  # accept | drop | reject (for this table's traversal)
    state: Branch


class IpsetMembership(Protocol):
    """One ipset as `-m set --match-set NAME FLAGS` asks it (ipvs.parse.IpSet is one)."""

    def test(self, flags: list[str], src: str, dst: str, sport: int, dport: int,
             protocol: str) -> bool | str: ...  # a str says why it cannot be decided


@dataclass
class Walker:
    ruleset: Ruleset
    node: Node = field(default_factory=Node)
    recent: dict[str, set[str]] = field(default_factory=dict)  # xt_recent lists: name -> IPs
    # Addresses known not to be the node's even when its addresses are unknown: Service IPs
    # (iptables mode binds none) and the pod network (a pod IP is never a node address).
    remote_ips: frozenset[str] = frozenset()
    remote_cidrs: tuple[str, ...] = ()
    record_steps: bool = True  # off when only the outcome matters (the `rules` view)
    # ipset name -> members (`ipset save`, IPVS mode): decides --match-set, else undecided.
    ipsets: dict[str, IpsetMembership] = field(default_factory=dict)

    def is_local(self, ip: str) -> bool | None:
        local = self.node.is_local(ip)
        if local is None and (ip in self.remote_ips
                              or any(in_cidr(ip, c) for c in self.remote_cidrs)):
            return False
        return local

    # -- public -----------------------------------------------------------------------------

    def walk(self, packet: Packet) -> list[Path]:
        """All paths the first packet of this connection can take, with their probabilities."""
        packet = canonical(packet)
        start = Branch.start(packet)
        self._packet = packet
        pre = ("raw", "mangle", "nat") if not packet.from_host else ("raw", "mangle", "nat",
                                                                      "filter", "security")
        hook = "OUTPUT" if packet.from_host else "PREROUTING"
        paths: list[Path] = []
        for st, verdict in self._hook(hook, pre, [start]):
            if verdict != "accept":
                paths.append(st.to_path(verdict))
                continue
            for st2, verdict2 in self._after_routing(st):
                paths.append(st2.to_path(verdict2))
        return paths

    def walk_chain(self, table: str, chain: str, packet: Packet) -> list[tuple[Branch, str]]:
        """Walk from one chain only (used to read a service's dispatch chain on its own)."""
        self._packet = packet = canonical(packet)
        start = Branch.start(packet)
        return [(o.state, o.verdict) for o in self._traverse(table, chain, start)]

    # -- hooks ------------------------------------------------------------------------------

    def _after_routing(self, st: Branch) -> list[tuple[Branch, str]]:
        local = self.is_local(st.dst)
        if self._packet.from_host:
            tables_after: tuple[str, ...] = ()
        elif local:
            return self._hook("INPUT", ("mangle", "filter", "security", "nat"), [st])
        else:
            if local is None:
                st = st.note(f"assumed {st.dst} is not an address of this node "
                                    "(give the node's addresses to decide)")
            tables_after = ("mangle", "filter", "security")
        out: list[tuple[Branch, str]] = []
        states = self._hook("FORWARD", tables_after, [st]) if tables_after else [(st, "accept")]
        for s, v in states:
            if v != "accept":
                out.append((s, v))
                continue
            out.extend(self._hook("POSTROUTING", ("mangle", "nat"), [s]))
        return out

    def _hook(self, hook: str, tables: tuple[str, ...],
              states: list[Branch]) -> list[tuple[Branch, str]]:
        results: list[tuple[Branch, str]] = []
        todo = [(s, 0) for s in states]
        while todo:
            st, ti = todo.pop()
            if ti == len(tables):
                results.append((st, "accept"))
                continue
            table = tables[ti]
            t = self.ruleset.table(table)
            if t is None or hook not in BUILTIN_CHAINS.get(table, ()):
                todo.append((st, ti + 1))
                continue
            if table == "nat" and st.dnat is not None and hook in ("PREROUTING", "OUTPUT"):
                todo.append((st, ti + 1))
                continue
            for o in self._traverse(table, hook, st):
                if o.verdict == "accept":
                    todo.append((o.state, ti + 1))
                else:
                    results.append((o.state, o.verdict))
        results.reverse()
        return results

    # -- chain traversal --------------------------------------------------------------------

    def _traverse(self, table: str, chain: str, st: Branch) -> list[_Outcome]:
        t = self.ruleset.table(table)
        policy = (t.policies.get(chain, "ACCEPT") if t else "ACCEPT")
        out: list[_Outcome] = []
        # A frame is (chain, next rule index); a chain entered by goto is (chain, index, True):
        # when it ends, the frame it replaced ends too (it is kept only for loop detection).
        todo: list[tuple[Branch, tuple[tuple, ...]]] = [(st, ((chain, 0),))]
        budget = MAX_RULES_PER_WALK
        while todo:
            if len(todo) + len(out) > MAX_BRANCHES:
                raise ClusterIPError(
                    f"{self.ruleset.source or 'dump'}: {table} {chain}: more than {MAX_BRANCHES} "
                    "ways through the rules (statistic fan-out); kube-proxy never writes that "
                    "many, so the dump was edited by hand")
            st, stack = todo.pop()
            frame = stack[-1]
            name, idx = frame[0], frame[1]
            count = t.count(name) if t else 0
            if t is not None:  # rules whose -d cannot match are skipped unparsed
                idx = t.next_candidate(name, idx, st.dst)
            if idx >= count:
                stack = _leave(stack)
                if not stack:
                    out.append(_Outcome("drop" if policy == "DROP" else "accept", st))
                else:
                    todo.append((st, stack))
                continue
            budget -= 1
            if budget <= 0:
                out.append(_Outcome("accept", st.note(
                    f"stopped after {MAX_RULES_PER_WALK} rules in {table} {chain}")))
                continue
            assert t is not None
            rule = t.rule(name, idx)
            stack = (*stack[:-1], (name, idx + 1, *frame[2:]))
            p, notes = self._matches(rule, st)
            if p == 0.0:
                if notes:
                    st = st._replace(undecided=st.undecided + tuple(notes))
                todo.append((st, stack))
                continue
            hit = st if p == 1.0 else st._replace(probability=st.probability * p)
            if p < 1.0:
                todo.append((st._replace(probability=st.probability * (1 - p)), stack))
            self._apply(rule, hit, stack, todo, out)
        out.reverse()
        return out

    def _apply(self, rule: Rule, st: Branch, stack: tuple[tuple[str, int], ...],
               todo: list, out: list[_Outcome]) -> None:
        target = rule.target
        table = rule.table
        if target is None:
            todo.append((st, stack))
            return
        t = self.ruleset.table(table)
        if t is not None and t.has_chain(target) and target not in BUILTIN_CHAINS.get(table, ()):
            if any(f[0] == target for f in stack):
                path = " -> ".join([*(f[0] for f in stack), target])
                raise ClusterIPError(
                    f"{t.where(rule.chain, stack[-1][1] - 1)}: {table} chain {rule.chain} "
                    f"{'goes' if rule.goto else 'jumps'} back into {target} ({path}): the "
                    "kernel refuses rule loops, so this dump was edited by hand")
            if len(stack) >= MAX_DEPTH:
                out.append(_Outcome("accept", st.note(f"jump depth over {MAX_DEPTH}")))
                return
            st = self._step(st, rule, f"{'goto' if rule.goto else 'jump'} {target}")
            todo.append((st, (*stack, (target, 0, True) if rule.goto else (target, 0))))
            return
        if target == "ACCEPT":
            out.append(_Outcome("accept", self._step(st, rule, "accept")))
        elif target in ("DROP", "REJECT"):
            out.append(_Outcome(target.lower(), self._step(st, rule, target.lower())))
        elif target == "RETURN":
            st = self._step(st, rule, "return")
            stack = _leave(stack)
            if not stack:
                out.append(_Outcome("accept", st))
            else:
                todo.append((st, stack))
        elif target == "MARK":
            todo.append((self._mark(rule, st), stack))
        elif target == "DNAT":
            to = rule.target_option("--to-destination")
            ip, port = _split_host_port(to.value if to else "", st.dport)
            st = st._replace(dst=ip, dport=port, dnat=(ip, port))
            effect = f"DNAT to {join_host_port(ip, port)}"
            out.append(_Outcome("accept", self._step(st, rule, effect)))
        elif target in ("MASQUERADE", "SNAT"):
            rf = rule.target_option("--random-fully") is not None
            if target == "SNAT":
                to = rule.target_option("--to-source")
                snat = to.value.split(":")[0] if to else None
            else:
                snat = self.node.source_toward(st.dst)
            st = st._replace(masquerade=True, random_fully=rf, snat=snat)
            out.append(_Outcome("accept", self._step(
                st, rule, f"{target} to {snat or 'the node address toward ' + st.dst}")))
        elif target == "REDIRECT":
            st = st._replace(dnat=(st.dst, st.dport))
            out.append(_Outcome("accept", self._step(st, rule, "REDIRECT to the node itself")))
        elif target in ("LOG", "NFLOG", "TRACE", "CT", "NOTRACK", "CONNMARK", "CHECKSUM",
                        "TCPMSS", "CLASSIFY", "DSCP", "TOS", "AUDIT"):
            todo.append((st, stack))
        elif target.startswith(_KUBE_PROXY_CHAINS):
            # Only a partial paste lacks a chain kube-proxy jumps to (the kernel refuses a
            # jump to a missing chain): what happens in it is unknown, so this branch ends.
            out.append(_Outcome("accept", self._step(st, rule, f"jump {target}").note(
                f"{table} {rule.chain}: chain {target} is not in the dump; the walk of this "
                "branch stops there")))
        else:
            todo.append((st.note(f"{table} {rule.chain}: target {target} is not modelled; "
                                    "assumed it lets the packet continue"), stack))

    # -- matches ----------------------------------------------------------------------------

    def _matches(self, rule: Rule, st: Branch) -> tuple[float, list[str]]:
        """Probability that the rule matches (1, 0 or a statistic's p) and any assumptions."""
        p = 1.0
        notes: list[str] = []
        for m in rule.matches:
            r = self._match(m, st, rule)
            if isinstance(r, str):
                notes.append(f"{rule.table} {rule.chain}: {r}; assumed no match: {rule.text}")
                return 0.0, notes
            if r == 0.0:
                return 0.0, notes
            p *= r
        return p, notes

    def _match(self, m: Match, st: Branch, rule: Rule) -> float | str:
        """1.0 / 0.0 / a probability, or a string saying why it cannot be decided."""
        pkt = self._packet
        for o in m.options:
            ok = self._option(m.module, o, st, pkt, rule)
            if isinstance(ok, str):
                return ok
            if isinstance(ok, float):
                if o.negated:
                    return "a negated statistic match"
                return ok
            if ok == o.negated:
                return 0.0
        return 1.0

    def _option(self, module: str, o: Option, st: Branch, pkt: Packet,
                rule: Rule) -> bool | float | str:
        n, v = o.name, o.value
        if module == "":
            if n == "-s":
                return in_cidr(st.src, v)
            if n == "-d":
                return in_cidr(st.dst, v)
            if n == "-p":
                return v in ("all", "0") or v.lower() == pkt.protocol or v == _PROTO_NUMBERS.get(
                    pkt.protocol)
            if n in ("-i", "-o"):
                return f"cannot tell the interface for {n} {v}"
            if n == "-f":
                return False
        if module in ("tcp", "udp", "sctp", "udplite"):
            if n in ("--dport", "--destination-port"):
                return _port_in(st.dport, v)
            if n in ("--sport", "--source-port"):
                return _port_in(st.sport, v)
            if n == "--syn":
                return True
            if n == "--tcp-flags":
                mask, comp = (set(x.split(",")) for x in o.values[:2])
                have = {"SYN"} & (mask if "ALL" not in mask else {"SYN"})
                want = comp - {"NONE"}
                return have == want if "ALL" not in comp else False
        if module == "multiport":
            ports = v.split(",")
            if n in ("--dports", "--destination-ports"):
                return any(_port_in(st.dport, x) for x in ports)
            if n in ("--sports", "--source-ports"):
                return any(_port_in(st.sport, x) for x in ports)
            if n == "--ports":
                return any(_port_in(st.dport, x) or _port_in(st.sport, x) for x in ports)
        if module == "comment" or module == "nfacct" or module == "limit":
            return True
        if module == "mark" and n == "--mark":
            value, _, mask = v.partition("/")
            return (st.mark & (int(mask, 0) if mask else 0xFFFFFFFF)) == int(value, 0)
        if module in ("conntrack", "state") and n in ("--ctstate", "--state"):
            states = {"NEW"} | ({"DNAT"} if st.dnat else set())
            return bool(states & set(v.split(",")))
        if module == "conntrack" and n in ("--ctorigdst", "--ctorigsrc"):
            return in_cidr(pkt.dst_ip if n == "--ctorigdst" else pkt.src_ip, v)
        if module == "conntrack" and n in ("--ctorigdstport", "--ctorigsrcport"):
            return _port_in(pkt.dst_port if n == "--ctorigdstport" else pkt.src_port, v)
        if module == "addrtype" and n in ("--dst-type", "--src-type"):
            ip = st.dst if n == "--dst-type" else st.src
            return self._addrtype(ip, v.split(","))
        if module == "addrtype" and n in ("--limit-iface-in", "--limit-iface-out"):
            return True
        if module == "statistic":
            if n == "--mode":
                return True if v == "random" else "statistic --mode nth depends on packet counts"
            if n == "--probability":
                return float(v)
            return True
        if module == "recent":
            if n in ("--rcheck", "--update"):
                name = (rule.option("recent", "--name") or Option("--name", ("DEFAULT",))).value
                seen = self.recent.get(name)
                return bool(seen) and st.src in seen
            if n == "--set":
                return True
            if n == "--remove":
                return False
            return True
        if module == "set" and n == "--match-set":
            ipset = self.ipsets.get(v)
            if ipset is None:
                return f"ipset {v} membership is not in the dump"
            flags = o.values[1].split(",") if len(o.values) > 1 else []
            return ipset.test(flags, st.src, st.dst, st.sport, st.dport, pkt.protocol)
        if module in ("icmp", "icmp6"):
            return False
        if module == "pkttype":
            return v == "unicast"
        return f"match -m {module} {n} {v}".rstrip() + " is not modelled"

    def _addrtype(self, ip: str, types: list[str]) -> bool | str:
        addr = ipaddress.ip_address(ip)
        for t in types:
            if t == "LOCAL":
                local = self.is_local(ip)
                if local is None:
                    return f"cannot tell whether {ip} is an address of this node"
                if local:
                    return True
            elif t == "UNICAST" and not addr.is_multicast:
                return True
            elif t == "MULTICAST" and addr.is_multicast:
                return True
            elif t in ("BROADCAST", "ANYCAST", "BLACKHOLE", "UNREACHABLE", "PROHIBIT",
                       "THROW", "NAT", "XRESOLVE", "UNSPEC") and t != "LOCAL":
                continue
        return False

    # -- effects ----------------------------------------------------------------------------

    def _mark(self, rule: Rule, st: Branch) -> Branch:
        mark = st.mark
        for o in rule.target_options:
            value, _, mask = o.value.partition("/")
            val = int(value, 0)
            if o.name == "--set-xmark":
                m = int(mask, 0) if mask else 0xFFFFFFFF
                mark = (mark & ~m & 0xFFFFFFFF) ^ val
            elif o.name == "--set-mark":
                m = int(mask, 0) if mask else 0xFFFFFFFF
                mark = (mark & ~m & 0xFFFFFFFF) | val
            elif o.name == "--or-mark":
                mark |= val
            elif o.name == "--and-mark":
                mark &= val
            elif o.name == "--xor-mark":
                mark ^= val
        return self._step(st, rule, f"mark {mark:#x}")._replace(mark=mark)

    def _step(self, st: Branch, rule: Rule, effect: str) -> Branch:
        if not self.record_steps:
            return st._replace(sticky=True) if not st.sticky and rule.option(
                "recent", "--set") is not None else st
        return st._replace(steps=(*st.steps, Step(rule.table, rule.chain, rule.text, effect)),
                       sticky=st.sticky or (rule.option("recent", "--set") is not None))


def _leave(stack: tuple[tuple, ...]) -> tuple[tuple, ...]:
    """The stack once the top chain ends (or RETURNs): a goto frame takes the frame it
    replaced with it, as the kernel returns to the chain that jumped, not the one that went."""
    while stack:
        top, stack = stack[-1], stack[:-1]
        if len(top) < 3:
            break
    return stack


def _port_in(port: int, spec: str) -> bool:
    lo, sep, hi = spec.partition(":")
    if sep:
        return int(lo or 0) <= port <= int(hi or 65535)
    return port == int(spec)


def _split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """`10.0.0.1:80`, `[fd00::1]:80`, `10.0.0.1`, or a range `a-b:p-q` (first of each)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    host = host.split("-")[0]
    return host, int(port.split("-")[0]) if port else default_port

