"""kube-proxy's nftables mode as a dataplane: the services it programs and one request's path.

One nft ruleset may hold `table ip kube-proxy` and `table ip6 kube-proxy` (dual-stack):
each becomes its own dataplane. Other tables (iptables-nft's `table ip nat` with KUBE-*
chains, a CNI's tables) are not kube-proxy's nftables mode and are never read as such.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import (
    ClusterIPError,
    Node,
    Packet,
    Path,
    ServicePort,
    Step,
    Trace,
    select_service,
)
from kubectl_clusterip.nftables.parse import parse_ruleset
from kubectl_clusterip.nftables.ruleset import Chain, Rule, Ruleset, Table, gc_paused
from kubectl_clusterip.nftables.walk import Walker
from kubectl_clusterip.trace import assemble

TABLE = "kube-proxy"
FAMILIES = {"ip": 4, "ip6": 6}
_PROBE_SOURCE = {4: "192.0.2.1", 6: "2001:db8::1"}  # documentation ranges: never endpoints
_CAPTURE_CHAINS = ("services", "service-endpoints-check", "nodeport-endpoints-check")
_POLICY_PREFIXES = ("service-", "local-")
_CHAIN_NAME = re.compile(r"^(service|local|external|firewall|endpoint|affinity)-[A-Z2-7]{8}-"
                         r"([^/]+)/([^/]+)/([a-z]+)/([^_/]*)")
_ELEMENT_COMMENT = re.compile(r"\[([^\]]+)\]")


def svc_port_name_from_chain(chain: str) -> tuple[str, str] | None:
    """(svcPortName, protocol) from a per-service chain name: `service-HASH-ns/name/tcp/port`."""
    m = _CHAIN_NAME.match(chain)
    if m is None:
        return None
    ns, name, proto, port = m.group(2), m.group(3), m.group(4), m.group(5)
    return (f"{ns}/{name}:{port}" if port else f"{ns}/{name}"), proto


def iptables_nft_tables(rs: Ruleset) -> list[str]:
    """Tables that hold iptables-nft's kube-proxy chains (iptables mode seen through nft)."""
    return [t.label for t in rs.tables.values()
            if any(c.startswith(("KUBE-SERVICES", "KUBE-SVC-")) for c in t.chains)]


@dataclass
class NftablesDataplane:
    ruleset: Ruleset
    table: Table | None
    family_number: int = 4
    mode: str = "nftables"
    _services: list[ServicePort] | None = field(default=None, repr=False)

    @classmethod
    def from_text(cls, text: str, source: str = "") -> list[NftablesDataplane]:
        """One dataplane per kube-proxy table in the dump (JSON or text)."""
        return from_ruleset(parse_ruleset(text, source))

    @property
    def family(self) -> int:
        return self.family_number

    @property
    def source(self) -> str:
        return self.ruleset.source

    def has_kube_proxy(self) -> bool:
        t = self.table
        return bool(t and ("services" in t.chains or "service-ips" in t.sets))

    # -- tracing ----------------------------------------------------------------------------

    def walker(self, node: Node | None = None,
               affinity: dict[str, set[str]] | None = None) -> Walker:
        if self.table is None:
            raise ClusterIPError(f"{self.source}: no kube-proxy nftables table")
        return Walker(self.table, node or Node(), affinity or {}, self.service_ips(),
                      tuple(self.cluster_cidrs()))

    def walk(self, packet: Packet, node: Node | None = None,
             affinity: dict[str, set[str]] | None = None) -> list[Path]:
        return self.walker(node, affinity).walk(packet)

    def trace(self, packet: Packet, node: Node | None = None,
              affinity: dict[str, set[str]] | None = None) -> Trace:
        """`affinity` adds clients to affinity sets beyond what the dump holds."""
        paths = self.walk(packet, node, affinity)
        step = capture_step(paths)
        name = service_from_step(step) if step else None
        trace = assemble(packet, self.mode, paths, name, step)
        _explain_no_endpoints(trace, step, paths)
        _masquerade_evidence(trace)
        _paste_notes(trace, self.ruleset, self.source)
        return trace

    def service_ips(self) -> frozenset[str]:
        """ClusterIPs and the other Service addresses: never the node's own in this mode."""
        t = self.table
        if t is None:
            return frozenset()
        ips: set[str] = set()
        s = t.sets.get("cluster-ips")
        if s is not None:
            ips.update(str(e.key) for e in s.elements if isinstance(e.key, str))
        return frozenset(ips)

    def cluster_cidrs(self) -> list[str]:
        """The pod CIDR(s) the masquerade rule exempts (`ip saddr != <cidr>`), first found."""
        t = self.table
        if t is None:
            return []
        names = ["services"] + [n for n in t.chains if n.startswith(_POLICY_PREFIXES)
                                and "/" in n]
        for name in names:
            for rule in (t.chains[name].rules if name in t.chains else ()):
                cidr = _masquerade_exemption(rule.expr)
                if cidr:
                    return [cidr]
        return []

    # -- the services view ------------------------------------------------------------------

    def services(self, service: str | None = None) -> list[ServicePort]:
        """Every service port (or those of one `namespace/name`) with its endpoints' odds."""
        if service is not None:
            return select_service(self._read_services(service), service)
        if self._services is None:
            self._services = self._read_services()
        return self._services

    def _read_services(self, service: str | None = None) -> list[ServicePort]:
        with gc_paused():  # tens of thousands of chains' rules are parsed and dropped again
            return self._walk_services(service)

    def _walk_services(self, service: str | None) -> list[ServicePort]:
        t = self.table
        if t is None:
            return []
        found: dict[tuple[str, str, str, int], ServicePort] = {}
        cluster_ips = self.service_ips()
        walker = Walker(t, Node(), {}, cluster_ips, (), record_steps=False)
        svc_map = t.sets.get("service-ips")
        for e in svc_map.elements if svc_map is not None else []:
            key, verdict = e.key, e.value
            if not (isinstance(key, tuple) and len(key) == 3 and isinstance(verdict, dict)):
                continue
            target = (verdict.get("goto") or verdict.get("jump") or {}).get("target", "")
            if not target.startswith(_POLICY_PREFIXES):
                continue  # external-… (externalIP / LB) and firewall-… chains
            ip, proto, port = str(key[0]), str(key[1]), int(key[2])
            parsed = svc_port_name_from_chain(target)
            name = parsed[0] if parsed else target
            if service is not None and not name.startswith(service):
                continue
            sp = self._dispatch(walker, target, name, ip, proto, port)
            found[(name, proto, ip, port)] = sp
            for chain in (target, *walker.entered):  # keep memory flat over 50,000 chains
                if "/" in chain and chain in t.chains:
                    t.chains[chain].forget()
            walker.entered.clear()
        no_eps = t.sets.get("no-endpoint-services")
        for e in no_eps.elements if no_eps is not None else []:
            key = e.key
            if not (isinstance(key, tuple) and len(key) == 3):
                continue
            ip, proto, port = str(key[0]), str(key[1]), int(key[2])
            if cluster_ips and ip not in cluster_ips:
                continue  # an external or LB address of the service
            name = e.comment or f"{ip}:{port}/{proto}"
            status = "no-local-endpoints" if _verdict_name(e.value) == "drop" \
                else "no-endpoints"
            k = (name, proto, ip, port)
            if k in found:
                found[k].status = status
            else:
                found[k] = ServicePort(name, proto, ip, port, [], status, family=self.family)
        return sorted(found.values(), key=lambda s: (s.name, s.protocol, s.port or 0))

    def _dispatch(self, walker: Walker, chain: str, name: str, ip: str, proto: str,
                  port: int) -> ServicePort:
        probe = Packet(_PROBE_SOURCE[self.family], ip, port, proto)
        shares: dict[tuple[str, int], float] = {}
        missing = 0.0
        for st, _verdict in walker.walk_chain(chain, probe):
            if st.dnat:
                shares[st.dnat] = shares.get(st.dnat, 0.0) + st.probability
            else:
                missing += st.probability
        affinity = None
        assert self.table is not None
        dispatch = self.table.chains.get(chain)  # missing in a partial dump
        for rule in dispatch.rules if dispatch is not None else ():
            for stmt in rule.expr:
                right = stmt.get("match", {}).get("right") if "match" in stmt else None
                if isinstance(right, str) and right.startswith("@affinity-"):
                    s = self.table.sets.get(right[1:])
                    if s is not None and s.timeout is not None:
                        affinity = s.timeout
            if affinity is not None:
                break
        endpoints = [(eip, eport, p) for (eip, eport), p in sorted(shares.items())]
        status = "ok" if missing < 1e-9 else ("no-endpoints" if not shares else "partial")
        return ServicePort(name, proto, ip, port, endpoints, status, affinity, chain,
                           self.family)


# --------------------------------------------------------------------------- helpers


def from_ruleset(rs: Ruleset) -> list[NftablesDataplane]:
    out = [NftablesDataplane(rs, _with_hooks(rs, t), FAMILIES[t.family])
           for t in rs.tables.values() if t.name == TABLE and t.family in FAMILIES]
    if not out:
        out = [NftablesDataplane(rs, None)]
    return sorted(out, key=lambda d: d.family)


def _with_hooks(rs: Ruleset, t: Table) -> Table:
    """A pasted fragment of the table without any base chain still dispatches through
    `services`: assume kube-proxy's own hooks (nat prerouting and output at dstnat jump to
    services) and say so, rather than trace nothing."""
    if "services" not in t.chains or any(ch.is_base for ch in t.chains.values()):
        return t
    for name, hook in (("nat-prerouting", "prerouting"), ("nat-output", "output")):
        ch = t.chains.setdefault(name, Chain(t.family, t.name, name, source=rs.source))
        ch.type, ch.hook, ch.priority = "nat", hook, -100
        ch._rules = [Rule(t.family, t.name, name, None, None, [{"jump": {"target": "services"}}])]
    rs.notes.append(f"the paste has no base chain of {t.label} (no `type nat hook …` line): "
                    "assumed kube-proxy's nat-prerouting and nat-output, which jump to services")
    return t


def capture_step(paths: list[Path]) -> Step | None:
    """The verdict-map lookup that claimed the request (a service, or its no-endpoints entry)."""
    for p in paths:
        for step in p.steps:
            if step.chain in _CAPTURE_CHAINS and " vmap " in step.rule and step.effect:
                return step
    return None


def service_from_step(step: Step) -> str | None:
    m = _ELEMENT_COMMENT.search(step.effect)
    if m:
        return m.group(1)
    target = step.effect.split(" ", 2)[1] if step.effect.startswith(("goto ", "jump ")) else ""
    parsed = svc_port_name_from_chain(target)
    return parsed[0] if parsed else None


def _explain_no_endpoints(trace: Trace, step: Step | None, paths: list[Path]) -> None:
    """nftables says "no endpoints" with a map element, not a rule comment: name the cause."""
    if step is None or step.chain not in ("service-endpoints-check", "nodeport-endpoints-check"):
        return
    svc = trace.service or f"{trace.packet.dst_ip}:{trace.packet.dst_port}"
    evidence = f"{step.rule} -> {step.effect}"
    if trace.verdict == "reject":
        new = finding("NoEndpointsReject",
                      f"{svc} has no ready endpoints: the node rejects the connection", evidence,
                      f"kubectl get endpointslices -n {svc.split('/')[0]} -l "
                      f"kubernetes.io/service-name={svc.split('/')[-1].split(':')[0]} -o wide")
    elif trace.verdict == "drop":
        new = finding("NoLocalEndpointsDrop",
                      f"{svc} has internalTrafficPolicy Local and no endpoint on this node: the "
                      "node drops the packet", evidence,
                      "run a ready endpoint on this node, or set internalTrafficPolicy: Cluster")
    else:
        return
    trace.findings = [new] + [f for f in trace.findings if f.code != "DroppedByRule"]


def masquerade_step(steps: list[Step]) -> Step | None:
    """The rule that decided to masquerade this path.

    The jump into the marking chain when there is one; the rule itself when it marks inline
    (v1.36 marks in `services`, after an unrelated `jump services`); the masquerade rule
    when nothing marked (v1.36's hairpin set).
    """
    for i, st in enumerate(steps):
        if st.effect.startswith("mark ") and "0x4000" in st.effect:
            prev = steps[i - 1] if i else None
            unconditional = st.rule.startswith(("meta mark set", "mark set"))
            if unconditional and prev is not None and prev.effect in (f"jump {st.chain}",
                                                                       f"goto {st.chain}"):
                return prev
            return st
    return next((st for st in steps if "masquerade" in st.effect), None)


def _masquerade_evidence(trace: Trace) -> None:
    for c in trace.candidates:
        if not c.masquerade:
            continue
        old = c.extra.get("masqueradeRule")
        step = masquerade_step(c.steps)
        if step is None or step.rule == old:
            continue
        c.extra["masqueradeRule"] = step.rule
        for f in trace.findings:
            if f.code == "Hairpin" and f.evidence == (old or ""):
                f.evidence = step.rule


def _paste_notes(trace: Trace, rs: Ruleset, source: str) -> None:
    """What a cut or elided paste lacks, one finding each; with no rule found, the missing
    part may hold it, so "no rule captures" would claim more than the paste shows."""
    if not rs.notes:
        return
    if trace.verdict == "no-match":
        trace.findings = [f for f in trace.findings if f.code != "NoServiceRule"]
    trace.findings.extend(
        finding("PasteAssumption", f"{source or 'the nft listing'}: {note}; the trace follows "
                "the complete part only", "", "run `nft list ruleset` on the node and give "
                "all of its output")
        for note in rs.notes)


def _masquerade_exemption(expr: list) -> str | None:
    """`ip saddr != <cidr>` in a rule that marks for masquerade (jump or inline mark)."""
    cidr = None
    marks = False
    for stmt in expr:
        m = stmt.get("match")
        if m and m.get("op") == "!=" and m.get("left") in (
                {"payload": {"protocol": "ip", "field": "saddr"}},
                {"payload": {"protocol": "ip6", "field": "saddr"}}):
            r = m.get("right")
            if isinstance(r, dict) and "prefix" in r:
                cidr = f"{r['prefix']['addr']}/{r['prefix']['len']}"
        if stmt.get("jump", {}).get("target") == "mark-for-masquerade" or "mangle" in stmt:
            marks = True
    return cidr if marks else None


def _verdict_name(v: object) -> str:
    if isinstance(v, dict) and v:
        return next(iter(v))
    return str(v)


def build(dumps: list[tuple[str, str]], all_dumps: dict) -> list[NftablesDataplane]:
    """dumps.BUILDERS entry: every kube-proxy table of every nft dump given."""
    out: list[NftablesDataplane] = []
    for source, text in dumps:
        rs = parse_ruleset(text, source)
        dps = from_ruleset(rs)
        if not dps[0].has_kube_proxy() and "iptables" not in all_dumps:
            xt = iptables_nft_tables(rs)
            if xt:
                raise ClusterIPError(
                    f"{source}: no kube-proxy nftables table; {', '.join(xt)} hold iptables-nft "
                    "KUBE-* chains, so kube-proxy runs in iptables mode here: give "
                    "`iptables-save` output instead")
        out.extend(dps)
    return out
