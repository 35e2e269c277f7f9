"""kube-proxy's iptables mode as a dataplane: the services it programs and one request's path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kubectl_clusterip.findings import finding
from kubectl_clusterip.iptables.parse import Rule, Ruleset, parse_iptables_save, parse_rule
from kubectl_clusterip.iptables.walk import Walker
from kubectl_clusterip.model import (
    Node,
    Packet,
    Path,
    ServicePort,
    Step,
    Trace,
    select_service,
)
from kubectl_clusterip.trace import assemble

# Comment suffixes kube-proxy puts on the rules that capture a service's traffic.
CAPTURE_SUFFIXES = (" cluster IP", " external IP", " loadbalancer IP")
_PROBE_SOURCE = {4: "192.0.2.1", 6: "2001:db8::1"}  # documentation ranges: never endpoints


def service_name_from_comment(comment: str) -> str:
    """The svcPortName in a capture or REJECT comment; old releases left a trailing ':'."""
    for suffix in (*CAPTURE_SUFFIXES, " has no endpoints", " has no local endpoints"):
        if comment.endswith(suffix):
            comment = comment[: -len(suffix)]
            break
    return comment[:-1] if comment.endswith(":") else comment


def _host(cidr: str) -> str:
    return cidr.split("/", 1)[0]


@dataclass
class IptablesDataplane:
    ruleset: Ruleset
    mode: str = "iptables"
    _services: list[ServicePort] | None = field(default=None, repr=False)
    # The node's xt_recent lists (session affinity): affinity chain -> client IPs it pins.
    recent: dict[str, set[str]] = field(default_factory=dict)
    # service_ips() and cluster_cidrs() read a whole KUBE-SERVICES: once per dump, not per trace
    _memo: dict[str, object] = field(default_factory=dict, repr=False)

    @classmethod
    def from_text(cls, text: str, source: str = "") -> IptablesDataplane:
        return cls(parse_iptables_save(text, source))

    @property
    def family(self) -> int:
        return self.ruleset.family

    @property
    def source(self) -> str:
        return self.ruleset.source

    def has_kube_proxy(self) -> bool:
        """kube-proxy's chains in nat, or (a filter-only paste) its REJECT/DROP rules."""
        nat = self.ruleset.table("nat")
        if nat and (nat.has_chain("KUBE-SERVICES") or any(
                c.startswith("KUBE-SVC-") for c in nat.policies)):
            return True
        flt = self.ruleset.table("filter")
        return bool(flt and any(" endpoints\"" in ln for ln in flt.lines.get("KUBE-SERVICES", ())))

    def walk(self, packet: Packet, node: Node | None = None,
             recent: dict[str, set[str]] | None = None) -> list[Path]:
        walker = Walker(self.ruleset, node or Node(),
                        self.recent if recent is None else recent, self.service_ips(),
                        tuple(self.cluster_cidrs()))
        return walker.walk(packet)

    def service_ips(self) -> frozenset[str]:
        """Every address a KUBE-SERVICES rule names: Service IPs, never the node's own."""
        if "ips" in self._memo:
            return self._memo["ips"]  # type: ignore[return-value]
        ips = set()
        for name in ("nat", "filter"):
            table = self.ruleset.table(name)
            if table is not None:
                ips.update(_host(d) for d in table.destinations("KUBE-SERVICES") if d)
        self._memo["ips"] = frozen = frozenset(ips)
        return frozen

    def trace(self, packet: Packet, node: Node | None = None,
              recent: dict[str, set[str]] | None = None) -> Trace:
        paths = self.walk(packet, node, recent)
        step = _capture_step(paths)
        name = service_name_from_comment(parse_rule(step.table, step.rule).comment or "") \
            if step else None
        trace = assemble(packet, self.mode, paths, name, step)
        trace.findings[:0] = [finding("PasteAssumption", a) for a in self.ruleset.assumptions]
        if trace.verdict == "no-match":
            why = unreached(self.ruleset, paths, packet)
            cut = step is not None and any("is not in the dump" in n for n in trace.notes)
            if why is not None or cut:
                # Not "nothing captures it": the chains were never reached, or a partial
                # paste lacks the chains the capture rule leads to (a PasteAssumption says,
                # and goes first: it is why no endpoint is known).
                trace.findings = sorted(
                    (f for f in trace.findings if f.code != "NoServiceRule"),
                    key=lambda f: not (cut and "not in the paste" in f.message))
            if why is not None:
                trace.findings.append(why)
        pinned = [s for c in trace.candidates for s in c.steps if "--rcheck" in s.rule]
        if pinned and len(trace.candidates) == 1:
            for f in trace.findings:
                if f.code == "SessionAffinity":
                    f.message = (f"{trace.service or packet.dst_ip} has ClientIP session "
                                 f"affinity and the node's affinity list already holds "
                                 f"{packet.src_ip}: its connections stick to "
                                 f"{trace.candidates[0].endpoint} until the timeout")
                    f.evidence = pinned[0].rule
        return trace

    def cluster_cidrs(self) -> list[str]:
        """The pod CIDRs kube-proxy's masquerade rules exempt (its local-traffic detector).

        Read from the first service chain that has one, without parsing the rest; old
        kube-proxy put the rule in KUBE-SERVICES itself, so that is the last place looked.
        """
        if "cidrs" not in self._memo:
            self._memo["cidrs"] = self._cluster_cidrs()
        return list(self._memo["cidrs"])  # type: ignore[call-overload]

    def _cluster_cidrs(self) -> list[str]:
        nat = self.ruleset.table("nat")
        if nat is None:
            return []
        chains = [c for c in nat.lines if c.startswith(("KUBE-SVC-", "KUBE-SVL-"))]
        for chain in [*chains, "KUBE-SERVICES"]:
            cidrs: list[str] = []
            for i, line in enumerate(nat.lines.get(chain, ())):
                if " ! -s " not in line or "KUBE-MARK-MASQ" not in line:
                    continue
                o = nat.rule(chain, i).option("", "-s")
                if o and o.negated and o.value not in cidrs:
                    cidrs.append(o.value)
            if cidrs:
                return cidrs
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
        found: dict[tuple[str, str, str, int], ServicePort] = {}
        for r in self._kube_services("nat", service):
            comment = r.comment or ""
            if not comment.endswith(" cluster IP") or r.target == "KUBE-MARK-MASQ":
                continue
            sp = self._capture(r, service_name_from_comment(comment))
            if sp is not None:
                found[(sp.name, sp.protocol, sp.cluster_ip or "", sp.port or 0)] = sp
            self.ruleset.forget("nat", ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-"))
        for r in self._kube_services("filter", service):
            comment = r.comment or ""
            if not comment.endswith("endpoints") or r.target not in ("REJECT", "DROP"):
                continue
            name = service_name_from_comment(comment)
            d, p, dport = r.option("", "-d"), r.option("", "-p"), _dport(r)
            if d is None or p is None or dport is None:
                continue
            key = (name, p.value, _host(d.value), dport)
            status = "no-local-endpoints" if "local" in comment else "no-endpoints"
            if key in found:
                found[key].status = status
            else:
                found[key] = ServicePort(name, p.value, _host(d.value), dport, [], status,
                                         family=self.family)
        return sorted(found.values(), key=lambda s: (s.name, s.protocol, s.port or 0))

    def _kube_services(self, table: str, service: str | None) -> list[Rule]:
        """KUBE-SERVICES rules, only those whose comment can name `service` when one is asked."""
        t = self.ruleset.table(table)
        if t is None:
            return []
        lines = t.lines.get("KUBE-SERVICES", [])
        quoted = f'"{service}'
        return [t.rule("KUBE-SERVICES", i) for i, line in enumerate(lines)
                if service is None or quoted in line]

    def _capture(self, r: Rule, name: str) -> ServicePort | None:
        d, p, dport = r.option("", "-d"), r.option("", "-p"), _dport(r)
        if d is None or p is None or dport is None or r.target is None:
            return None
        cip = _host(d.value)
        probe = Packet(_PROBE_SOURCE[self.family], cip, dport, p.value)
        walker = Walker(self.ruleset, record_steps=False)
        shares: dict[tuple[str, int], float] = {}
        missing = 0.0
        for st, _verdict in walker.walk_chain("nat", r.target, probe):
            if st.dnat:
                shares[st.dnat] = shares.get(st.dnat, 0.0) + st.probability
            else:
                missing += st.probability
        affinity = None
        for rule in self.ruleset.rules("nat", r.target):
            o = rule.option("recent", "--seconds")
            if o and rule.option("recent", "--rcheck"):
                affinity = int(o.value)
                break
        endpoints = [(ip, port, pr) for (ip, port), pr in sorted(shares.items())]
        status = "ok" if missing < 1e-9 else ("no-endpoints" if not shares else "partial")
        return ServicePort(name, p.value, cip, dport, endpoints, status, affinity, r.target,
                           self.family)


def unreached(ruleset: Ruleset, paths: list[Path], packet: Packet):
    """Why a request that no rule claimed never met kube-proxy's chains, when it did not:
    the dump has no nat table, or nothing in the hook jumps into KUBE-SERVICES (flushed
    base-chain jumps, kube-proxy's own test output), or a rule before the jump ends the walk.
    None when the walk did go through KUBE-SERVICES (then no rule there captures it)."""
    if any(s.effect == "jump KUBE-SERVICES" and s.table == "nat" for p in paths for s in p.steps):
        return None
    nat = ruleset.table("nat")
    hook = "OUTPUT" if packet.from_host else "PREROUTING"
    if nat is None:
        if not IptablesDataplane(ruleset).has_kube_proxy():
            return None
        return finding("KubeProxyChainsUnreachable",
                       f"{ruleset.source} holds no nat table, where kube-proxy DNATs Service "
                       "traffic: only its filter rules are there, so nothing says where "
                       f"{packet.dst_ip}:{packet.dst_port} goes",
                       hint="also paste `iptables -t nat -S` (or the whole `iptables-save`)")
    if not nat.has_chain("KUBE-SERVICES"):
        return None
    jumps = [ln for ln in nat.lines.get(hook, ()) if ln.endswith(" -j KUBE-SERVICES")
             or " -j KUBE-SERVICES " in ln]
    if not jumps:
        return finding("KubeProxyChainsUnreachable",
                       f"the packet never reaches kube-proxy's chains: nat {hook} has no rule "
                       "jumping to KUBE-SERVICES (kube-proxy's base-chain jumps were flushed, "
                       "e.g. by a firewall reload, or the dump was taken before kube-proxy "
                       "installed them)", "; ".join(nat.lines.get(hook, ())[:3]),
                       "restart kube-proxy on the node so it re-adds its jumps; check what "
                       "flushes nat " + hook)
    last = next((p.steps[-1] for p in paths if p.steps), None)
    return finding("KubeProxyChainsUnreachable",
                   f"the packet never reaches kube-proxy's chains: nat {hook} jumps to "
                   "KUBE-SERVICES, but " + (f"{last.table} {last.chain} ends the walk first"
                                            if last else "that rule does not match it"),
                   last.rule if last else jumps[0])


def parse_xt_recent(text: str) -> dict[str, set[str]]:
    """`grep -H '' /proc/net/xt_recent/*` -> the client IPs each affinity list remembers."""
    lists: dict[str, set[str]] = {}
    for m in re.finditer(r"^/proc/net/xt_recent/([^:\s]+):src=(\S+)", text, re.M):
        lists.setdefault(m.group(1), set()).add(m.group(2))
    return lists


def _dport(r: Rule) -> int | None:
    for module in ("tcp", "udp", "sctp"):
        o = r.option(module, "--dport")
        if o is not None:
            return int(o.value)
    return None


def _capture_step(paths: list[Path]) -> Step | None:
    """The first kube-proxy rule that claimed the packet for a service, by its comment."""
    for p in paths:
        for step in p.steps:
            if step.chain not in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"):
                continue
            if step.effect == "jump KUBE-MARK-MASQ":
                continue  # old kube-proxy marked for masquerade in KUBE-SERVICES itself
            comment = parse_rule(step.table, step.rule).comment
            if comment and (comment.endswith(CAPTURE_SUFFIXES) or "endpoints" in comment
                            or step.chain == "KUBE-NODEPORTS"):
                return step
    return None
