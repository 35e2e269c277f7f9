"""Turn a walker's paths into one Trace: candidates, shared steps, reply path and findings.

Mode-independent: iptables, nftables and IPVS walkers all return `Path`s, and this is where
their answers become the same report.
"""

from __future__ import annotations

from kubectl_clusterip.conntrack import reverse_path
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Candidate, Packet, Path, Step, Trace

EPS = 1e-9
# kube-proxy's (and kubelet's) own filter chains: a DROP/REJECT there keeps its meaning (its
# service REJECT, KUBE-FIREWALL, KUBE-FORWARD INVALID); any other after DNAT is someone else's.
KUBE_PROXY_CHAINS = frozenset({"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS",
                               "KUBE-FORWARD", "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL",
                               "KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY"})
_KUBE_PROXY_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-",
                        "KUBE-XLB-", "KUBE-MARK-")


def dropped_after_dnat(p: Path) -> dict | None:
    """Where a DNAT'd path was dropped by a rule outside kube-proxy's chains (a NetworkPolicy
    agent's or a firewall's), as `droppedBy` data; None for any other path."""
    if p.verdict not in ("drop", "reject") or p.dnat is None or not p.steps:
        return None
    last = p.steps[-1]
    if last.effect.rsplit("; ", 1)[-1] not in ("drop", "reject"):  # nft: "counter; drop"
        # No rule ended it: a base chain's policy did (kube-proxy never sets one).
        base = last.chain if last.chain in ("INPUT", "FORWARD", "OUTPUT") else \
            f"a base chain's policy ({last.chain} last)"
        return {"table": last.table, "chain": base, "verdict": p.verdict,
                "rule": f"policy {p.verdict.upper()} after: {last.rule}"}
    if "kube-proxy" in last.table or last.chain in KUBE_PROXY_CHAINS \
            or last.chain.startswith(_KUBE_PROXY_PREFIXES):
        return None
    return {"table": last.table, "chain": last.chain, "rule": last.rule, "verdict": p.verdict}


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
    # A path DNAT'd as kube-proxy programmed it and then dropped by someone else's rule is
    # still one of kube-proxy's candidates (drift compares DNAT targets); it carries why.
    blocked = {id(p): d for p in paths if (d := dropped_after_dnat(p)) is not None}
    dnat_paths = [p for p in paths if p.dnat and (p.verdict == "dnat" or id(p) in blocked)]
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
        if id(p) in blocked:
            by = c.extra.setdefault("droppedBy", {**blocked[id(p)], "probability": 0.0})
            by["probability"] = round(by["probability"] + p.probability, 10)
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
    dropped = dropped_finding(svc, trace.candidates)
    if dropped is not None:
        out.append(dropped)
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


def dropped_finding(svc: str, candidates: list[Candidate]):
    """DNAT'd as programmed, then dropped at forwarding by a rule that is not kube-proxy's:
    an error when no candidate gets through, a warning when some do."""
    hit = [c for c in candidates if c.extra.get("droppedBy")]
    if not hit:
        return None
    lost = sum(c.extra["droppedBy"]["probability"] for c in hit)
    rules = {(b["table"], b["chain"]): b["rule"] for b in (c.extra["droppedBy"] for c in hit)}
    where = "; ".join(f"{t} {ch}" for t, ch in rules)
    verbs = {c.extra["droppedBy"]["verdict"] for c in hit}
    verb = "rejected" if verbs == {"reject"} else "dropped"
    f = finding("DroppedAfterDnat",
                f"{svc}: kube-proxy DNATs to {', '.join(c.endpoint for c in hit)} as "
                f"programmed, then the packet is {verb} by {where}, a rule outside "
                f"kube-proxy's chains (NetworkPolicy agent or firewall): "
                f"{lost * 100:.1f}% of new connections fail",
                " | ".join(rules.values()),
                "find who owns " + ", ".join(sorted({ch for _, ch in rules}))
                + " (the CNI's NetworkPolicy agent, a host firewall): "
                  "kubectl get networkpolicy -A")
    if lost < sum(c.probability for c in candidates) - EPS:
        f.severity = "warning"  # some candidates get through
    return f


def _ns(svc: str) -> str:
    return svc.split("/", 1)[0] if "/" in svc else "default"


def _name(svc: str) -> str:
    return svc.split("/", 1)[-1].split(":", 1)[0]
