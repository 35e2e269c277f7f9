"""kube-proxy's IPVS mode as a dataplane: one per IP family, from three dumps of one node.

`ipvsadm-save -n` (or `ipvsadm -Ln`) says which real servers a virtual service has; the
node's `iptables-save` / `ip6tables-save` says when the request is masqueraded; `ipset
save` (or `ipset list`) holds the sets those rules match on. Without the ipsets the set
matches stay undecided (and say so); without an iptables dump only IPVS is walked.

IPVS knows no Service names and kube-proxy writes no comments into the sets, so a service
port is named by its address (`-/-:10.96.0.10:53`: unknown namespace and name, the address
as the port name) unless an ipset member carries a comment, or the API objects name it
(the engine resolves `NAMESPACE/NAME` through the Service object when it has one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_clusterip.findings import finding
from kubectl_clusterip.iptables.dataplane import IptablesDataplane
from kubectl_clusterip.iptables.parse import Ruleset
from kubectl_clusterip.iptables.shapes import read_rulesets
from kubectl_clusterip.ipvs.ipset import IpSet, parse_ipset
from kubectl_clusterip.ipvs.parse import IpvsTable, VirtualService, parse_ipvsadm
from kubectl_clusterip.ipvs.walk import IpvsWalker, describe_scheduler, shares
from kubectl_clusterip.model import (
    Finding,
    Node,
    Packet,
    Path,
    ServicePort,
    Trace,
    join_host_port,
    select_service,
)
from kubectl_clusterip.trace import assemble


def cluster_ip_set(family: int) -> str:
    """kube-proxy names the IPv6 copies KUBE-6-… (ipvs/ipset.go `NewIPSet`)."""
    return "KUBE-CLUSTER-IP" if family == 4 else "KUBE-6-CLUSTER-IP"


def unnamed_port(ip: str, port: int) -> str:
    """A svcPortName for a virtual service nothing names: `-/-:<ip>:<port>`."""
    return f"-/-:{join_host_port(ip, port)}"


@dataclass
class IpvsDataplane:
    ruleset: Ruleset  # this family's iptables rules (empty when no dump was given)
    table: IpvsTable  # the whole IPVS table; this dataplane serves its own family
    ipsets: dict[str, IpSet] = field(default_factory=dict)
    fam: int = 4
    sources: tuple[str, ...] = ()
    mode: str = "ipvs"
    _services: list[ServicePort] | None = field(default=None, repr=False)

    @property
    def family(self) -> int:
        return self.fam

    @property
    def source(self) -> str:
        return ", ".join(self.sources)

    def has_kube_proxy(self) -> bool:
        if self.table.of_family(self.fam):
            return True
        nat = self.ruleset.table("nat")
        return bool(nat and nat.has_chain("KUBE-SERVICES"))

    def cluster_cidrs(self) -> list[str]:
        """The local-traffic detector's CIDR, from the `! -s CIDR … -j KUBE-MARK-MASQ` rule."""
        return IptablesDataplane(self.ruleset).cluster_cidrs()

    # -- one request --------------------------------------------------------------------------

    def walk(self, packet: Packet, node: Node | None = None) -> list[Path]:
        walker = IpvsWalker(ruleset=self.ruleset, node=node or Node(),
                            remote_cidrs=tuple(self.cluster_cidrs()), ipsets=self.ipsets,
                            table=self.table)
        return walker.walk(packet)

    def trace(self, packet: Packet, node: Node | None = None) -> Trace:
        paths = self.walk(packet, node)
        vs = self.table.lookup(packet.protocol, packet.dst_ip, packet.dst_port)
        capture = next((s for p in paths for s in p.steps if s.table == "ipvs"), None)
        # Only a real name goes in `service`; an address-named port would just repeat --to.
        name = self.port_name(vs) if vs is not None else None
        if vs is not None and name == unnamed_port(vs.ip, vs.port):
            name = None
        trace = assemble(packet, self.mode, paths, name, capture)
        if vs is not None:
            self._explain(trace, vs, paths)
        if not self.ipsets and any(p.undecided for p in paths):
            trace.notes.append("no `ipset save` output given: the rules' --match-set matches "
                               "could not be decided")
        trace.findings.extend(
            finding("PasteAssumption", note, "", "run `ipvsadm -Ln` on the node and give all "
                    "of its output")
            for note in self.table.notes)
        return trace

    def _explain(self, trace: Trace, vs: VirtualService, paths: list[Path]) -> None:
        """Say what IPVS did in its own terms where the generic findings speak iptables."""
        target = f"{trace.packet.dst_ip}:{trace.packet.dst_port}/{trace.packet.protocol}"
        svc = trace.service or target
        picks, exact = shares(vs)
        trace.extra["ipvs"] = {
            "virtualService": vs.key, "scheduler": vs.scheduler,
            "schedulerFlags": list(vs.sched_flags), "persistentSeconds": vs.persistent,
            "sharesExact": exact, "evidence": vs.line}
        for c in trace.candidates:
            rs = next((r for r in vs.real_servers if (r.ip, r.port) == (c.ip, c.port)), None)
            if rs is not None:
                c.extra.update({"weight": rs.weight, "forward": rs.forward})
            if c.masquerade and "masqueradeRule" not in c.extra:
                rule = next((s.rule for s in reversed(c.steps)
                             if s.effect.startswith("MASQUERADE")), None)
                if rule:
                    c.extra["masqueradeRule"] = rule
        found: list[Finding] = []
        for f in trace.findings:
            if trace.verdict == "reject" and f.code == "DroppedByRule" and _ipvs_rejected(paths):
                why = ("has no real servers" if not vs.real_servers else
                       "has only real servers with weight 0 (draining)")
                found.append(finding(
                    "NoEndpointsReject", f"IPVS virtual service {vs.key} for {svc} {why}: the "
                    "kernel answers ICMP port unreachable (connection refused)", vs.line,
                    "check the Service's EndpointSlices (ready endpoints?) and kube-proxy's log"))
            elif f.code == "SessionAffinity":
                f.message = (f"{svc} is persistent for {vs.persistent}s (sessionAffinity "
                             f"ClientIP): the first connection from {trace.packet.src_ip} is "
                             f"scheduled by {vs.scheduler}, later ones follow the persistence "
                             "template to the same real server")
                found.append(f)
            else:
                found.append(f)
        if picks and not exact:
            possible = ", ".join(rs.endpoint for rs, _ in picks)
            found.append(finding(
                "IpvsSchedulerState", f"{vs.key} uses {describe_scheduler(vs.scheduler)}: which "
                f"real server gets this connection depends on live kernel state; possible: "
                f"{possible} (shares shown are nominal, by weight)", vs.line,
                "`ipvsadm -Ln` shows the connection counts; `ipvsadm -Lnc` the connections"))
        draining = [rs for rs in vs.real_servers if rs.weight <= 0]
        if draining and picks:
            found.append(finding(
                "IpvsDrainingRealServer", f"{', '.join(rs.endpoint for rs in draining)} "
                f"{'has' if len(draining) == 1 else 'have'} weight 0 in {vs.key}: terminating "
                "endpoint(s) kept until their connections drain; no new connections go there",
                "; ".join(rs.line for rs in draining)))
        trace.findings = found

    # -- the services view --------------------------------------------------------------------

    def port_name(self, vs: VirtualService) -> str:
        """An ipset member's comment when one names it, else the address."""
        s = self.ipsets.get(cluster_ip_set(vs.family))
        if s is not None:
            member = f"{vs.ip},{vs.protocol}:{vs.port}"
            comment = dict(s.comments).get(member)
            if comment and "/" in comment:
                return comment
        return unnamed_port(vs.ip, vs.port)

    def services(self, service: str | None = None) -> list[ServicePort]:
        """Every ClusterIP service port (or those of one `namespace/name`)."""
        if self._services is None:
            self._services = self._read_services()
        return self._services if service is None else select_service(self._services, service)

    def _read_services(self) -> list[ServicePort]:
        cluster = self.ipsets.get(cluster_ip_set(self.fam))
        out = []
        for vs in self.table.of_family(self.fam):
            if vs.fwmark is not None or vs.protocol not in ("tcp", "udp", "sctp"):
                continue
            if cluster is not None and cluster.test(
                    ["dst", "dst"], vs.ip, vs.ip, 0, vs.port, vs.protocol) is not True:
                continue  # a NodePort / externalIP / LB virtual service, not a ClusterIP
            picks, _exact = shares(vs)
            share = {(rs.ip, rs.port): p for rs, p in picks}
            eps = [(rs.ip, rs.port, share.get((rs.ip, rs.port), 0.0)) for rs in vs.real_servers]
            out.append(ServicePort(self.port_name(vs), vs.protocol, vs.ip, vs.port, eps,
                                   "ok" if picks else "no-endpoints", vs.persistent, vs.key,
                                   self.fam))
        return sorted(out, key=lambda s: (s.name, s.protocol, s.port or 0))


def _ipvs_rejected(paths: list[Path]) -> bool:
    return any(p.verdict == "reject" and p.steps and p.steps[-1].table == "ipvs" for p in paths)


def build(ipvs_dumps: list[tuple[str, str]], iptables_dumps: list[tuple[str, str]],
          ipset_dumps: list[tuple[str, str]]) -> list[IpvsDataplane]:
    """One dataplane per family that has virtual services or iptables rules on this node."""
    table = IpvsTable([], ", ".join(s for s, _ in ipvs_dumps))
    for source, text in ipvs_dumps:
        part = parse_ipvsadm(text, source)
        table.services.extend(part.services)
        table.notes.extend(f"{source}: {note}" for note in part.notes)
    sets: dict[str, IpSet] = {}
    for source, text in ipset_dumps:
        sets.update(parse_ipset(text, source))
    rulesets = {rs.family: rs for rs in read_rulesets(iptables_dumps)}
    families = sorted(set(rulesets) | {vs.family for vs in table.services})
    out = []
    for fam in families:
        ruleset = rulesets.get(fam) or Ruleset(fam, {}, source="")
        srcs = tuple(s for s, _ in ipvs_dumps) + ((ruleset.source,) if ruleset.source else ())
        srcs += tuple(s for s, _ in ipset_dumps)
        out.append(IpvsDataplane(ruleset, table, sets, fam, srcs))
    return out
