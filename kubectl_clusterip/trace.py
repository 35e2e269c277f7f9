"""Turn a walker's paths into one Trace: candidates, shared steps, reply path and findings.

Mode-independent: iptables, nftables and IPVS walkers all return `Path`s, and this is where
their answers become the same report.
"""

from __future__ import annotations

from kubectl_clusterip.conntrack import reverse_path
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Candidate, Packet, Path, Step, Trace

EPS = 1e-9


def _common_prefix(lists: list[list[Step]]) -> int:
    if not lists:
        return 0
    n = min(len(x) for x in lists)
    for i in range(n):
        first = lists[0][i]
        if any(x[i] != first for x in lists[1:]):
            return i
    return n


def masquerade_rule(steps: list[Step]) -> Step | None:
    """The rule that decided to masquerade: the jump into the marking chain, or the mark itself."""
    for i, s in enumerate(steps):
        if s.effect.startswith("mark ") and "0x4000" in s.rule + s.effect:
            prev = steps[i - 1] if i else None
            return prev if prev and prev.effect.startswith(("jump", "goto")) else s
    return None


def assemble(packet: Packet, mode: str, paths: list[Path], service: str | None = None,
             capture: Step | None = None) -> Trace:
    """`capture` is the rule that claimed the request for a service (mode-specific to find)."""
    mass: dict[str, float] = {}
    for p in paths:
        mass[p.verdict] = mass.get(p.verdict, 0.0) + p.probability
    dnat_paths = [p for p in paths if p.verdict == "dnat" and p.dnat]
    if dnat_paths:
        verdict = "dnat"
    else:
        verdict = max(mass, key=lambda v: mass[v]) if mass else "no-match"
        if verdict == "accept":
            verdict = "no-match"

    prefix = _common_prefix([p.steps for p in paths])
    shared = paths[0].steps[:prefix] if paths else []
    by_endpoint: dict[tuple[str, int], Candidate] = {}
    for p in dnat_paths:
        assert p.dnat is not None
        c = by_endpoint.get(p.dnat)
        if c is None:
            c = Candidate(p.dnat[0], p.dnat[1], 0.0, p.masquerade, p.snat_ip, p.random_fully,
                          list(p.steps), p.sticky)
            dnat_step = next((s for s in p.steps if s.effect.startswith("DNAT")), None)
            if dnat_step is not None:
                c.extra["dnatChain"] = dnat_step.chain
            rule = masquerade_rule(p.steps)
            if rule is not None:
                c.extra["masqueradeRule"] = rule.rule
            by_endpoint[p.dnat] = c
        c.probability += p.probability
        c.masquerade = c.masquerade or p.masquerade
    candidates = sorted(by_endpoint.values(), key=lambda c: (c.ip, c.port))

    trace = Trace(packet, mode, verdict, candidates, list(shared), service=service)
    if capture is not None and capture in shared:
        trace.capture = shared[: shared.index(capture) + 1]
    trace.notes = sorted({n for p in paths for n in p.notes})
    trace.reverse = reverse_path(packet, candidates)
    trace.findings = _findings(packet, trace, paths, mass)
    return trace


def _findings(packet: Packet, trace: Trace, paths: list[Path], mass: dict[str, float]) -> list:
    out = []
    target = f"{packet.dst_ip}:{packet.dst_port}/{packet.protocol}"
    svc = trace.service or target
    last = {v: next((p.steps[-1] for p in paths if p.verdict == v and p.steps), None)
            for v in mass}
    if trace.verdict == "reject":
        rule = last.get("reject")
        if rule and "has no endpoints" in rule.rule:
            out.append(finding("NoEndpointsReject",
                               f"{svc} has no ready endpoints: the node rejects the connection",
                               rule.rule, "kubectl get endpointslices -l kubernetes.io/service-"
                               f"name={_name(svc)} -n {_ns(svc)} -o wide"))
        else:
            out.append(finding("DroppedByRule", f"a rule in {rule.table} {rule.chain} rejects "
                               f"{target}" if rule else f"{target} is rejected",
                               rule.rule if rule else ""))
    elif trace.verdict == "drop":
        rule = last.get("drop")
        if rule and "has no local endpoints" in rule.rule:
            out.append(finding("NoLocalEndpointsDrop",
                               f"{svc} has internalTrafficPolicy Local and no endpoint on this "
                               "node: the node drops the packet", rule.rule,
                               "run a ready endpoint on this node, or set "
                               "internalTrafficPolicy: Cluster"))
        else:
            out.append(finding("DroppedByRule", f"a rule drops {target}"
                               + (f" in {rule.table} {rule.chain}" if rule else ""),
                               rule.rule if rule else ""))
    elif trace.verdict == "no-match":
        out.append(finding("NoServiceRule",
                           f"no kube-proxy rule on this node captures {target}: the packet "
                           "leaves un-NATed and nothing answers at the ClusterIP",
                           hint="check the address, port and protocol against `kubectl get svc`; "
                                "if they are right, kube-proxy is not programming this node"))
    dnat_mass = sum(c.probability for c in trace.candidates)
    if trace.verdict == "dnat" and dnat_mass < 1 - EPS:
        out.append(finding("PartialDispatch",
                           f"{(1 - dnat_mass) * 100:.1f}% of new connections to {svc} are not "
                           "DNAT'd to any endpoint", "; ".join(
                               sorted(v for v in mass if v != "dnat"))))
    for c in trace.candidates:
        if c.ip == packet.src_ip:
            out.append(finding("Hairpin", f"the client {packet.src_ip} is endpoint {c.endpoint}: "
                               "the request is masqueraded so the reply comes back through "
                               "the node (hairpin)", c.extra.get("masqueradeRule", "")))
    if any(c.sticky for c in trace.candidates):
        out.append(finding("SessionAffinity",
                           f"{svc} has ClientIP session affinity: the first connection from "
                           f"{packet.src_ip} picks an endpoint at random, later ones stick to it "
                           "until the affinity timeout"))
    for note in sorted({u for p in paths for u in p.undecided}):
        out.append(finding("UndecidedMatch", note,
                           hint="give the node's addresses (--node-ip) or a snapshot"))
    return out


def _ns(svc: str) -> str:
    return svc.split("/", 1)[0] if "/" in svc else "default"


def _name(svc: str) -> str:
    return svc.split("/", 1)[-1].split(":", 1)[0]
