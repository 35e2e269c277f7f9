"""Finding codes: a public contract (docs/findings.md lists them); add codes, never rename."""

from __future__ import annotations

from kubectl_clusterip.model import ClusterIPError, Finding, Trace

# The six steps of one request (design notes), in the order the report prints them.
STEPS = ("service", "rules", "dns", "dnat", "forward", "reply")
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

# code -> (severity, the step of the path it breaks)
CODES: dict[str, tuple[str, str]] = {
    # from the walk of the node's rules (trace.py)
    "NoServiceRule": ("error", "rules"),
    "NoEndpointsReject": ("error", "dnat"),
    "NoLocalEndpointsDrop": ("error", "dnat"),
    "DroppedByRule": ("error", "rules"),
    "PartialDispatch": ("error", "dnat"),
    "DroppedAfterDnat": ("error", "forward"),  # warning when some candidates get through
    "UndecidedMatch": ("warning", "rules"),
    # from reading a partial paste (iptables/shapes.py)
    "PasteAssumption": ("warning", "rules"),
    "KubeProxyChainsUnreachable": ("error", "rules"),
    "Hairpin": ("info", "reply"),
    "SessionAffinity": ("info", "dnat"),
    # from the API objects and the expectation (diagnose/)
    "ServiceNotFound": ("error", "service"),
    "PortMismatch": ("error", "service"),
    "SelectorMatchesNoPods": ("error", "service"),
    "NoReadyPods": ("error", "service"),
    "NamedPortNotFound": ("error", "service"),
    "NoKubeProxy": ("error", "rules"),
    "KubeProxyReplaced": ("warning", "rules"),
    "ProxyModeMismatch": ("warning", "rules"),
    "ServiceNotProgrammed": ("error", "rules"),
    "MissingEndpointRules": ("error", "rules"),
    "StaleEndpointRules": ("error", "rules"),
    "DnsNotResolved": ("error", "dns"),
    "DnsWrongAddress": ("error", "dns"),
    "NoCoreDNSReady": ("error", "dns"),
    "TopologyFiltered": ("info", "dnat"),
    "TopologyHintsIgnored": ("warning", "dnat"),
    "StaleConntrack": ("error", "dnat"),
    # NetworkPolicy (diagnose/policy.py)
    "NetworkPolicyDeniesIngress": ("error", "forward"),
    "NetworkPolicyDeniesEgress": ("error", "forward"),
    "NetworkPolicyAllows": ("info", "forward"),
    "NetworkPolicyNotEnforced": ("warning", "forward"),
    "NetworkPolicyDeniesDns": ("error", "dns"),
    # the node's own state (diagnose/node.py)
    "ConntrackTableFull": ("error", "forward"),
    "ConntrackTableNearlyFull": ("warning", "forward"),
    "ConntrackDrops": ("warning", "forward"),
    "IpForwardDisabled": ("error", "forward"),
    "BridgeNfCallIptablesOff": ("error", "forward"),
    "KubeProxySyncStale": ("warning", "rules"),
    "PodCidrRouteMissing": ("error", "forward"),
    "PodCidrRouteUnexpectedDevice": ("warning", "forward"),
    # IPVS mode (ipvs/dataplane.py)
    "IpvsSchedulerState": ("info", "dnat"),
    "IpvsDrainingRealServer": ("info", "dnat"),
    # Cilium's kube-proxy replacement (cilium/findings.py, cilium/drift.py)
    "CiliumServiceNotInBpfMap": ("error", "rules"),
    "CiliumBackendMissing": ("error", "rules"),
    "CiliumBackendDrift": ("error", "rules"),
    "CiliumNoBackend": ("error", "dnat"),
    "CiliumBackendQuarantined": ("warning", "dnat"),
    "CiliumBackendExcluded": ("info", "dnat"),
    "CiliumBackendStuck": ("warning", "dnat"),
    "CiliumSocketLBBypassed": ("info", "dnat"),
    "CiliumStaleConntrack": ("error", "reply"),
    # from the probe: what real connections did (probe/judge.py)
    "ClientDnsDiffers": ("error", "dns"),
    "ProbeNotNated": ("error", "dnat"),
    "UnpredictedEndpoint": ("error", "dnat"),
    "StaleEndpointLive": ("error", "dnat"),
    "ImplausibleSplit": ("warning", "dnat"),
    "SplitUntested": ("info", "dnat"),
    "ProbeDnatUnseen": ("warning", "dnat"),
    "EndpointRefuses": ("error", "forward"),
    "EndpointTimesOut": ("error", "forward"),
    "EndpointUnreachable": ("error", "forward"),
    "EndpointResets": ("error", "forward"),
    "DirectPathFails": ("warning", "forward"),
    "ServicePathFails": ("error", "reply"),
}


class FindingError(ClusterIPError):
    """No trace can be made, and a finding says why (the CLI prints it and exits 2)."""

    def __init__(self, found: Finding):
        self.finding = found
        text = f"{found.code}: {found.message}"
        if found.evidence:
            text += f" ({found.evidence})"
        if found.hint:
            text += f"; next: {found.hint}"
        super().__init__(text)


def finding(code: str, message: str, evidence: str = "", hint: str = "") -> Finding:
    severity, step = CODES[code]
    return Finding(severity, code, message, evidence, step, hint)


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def step_number(step: str) -> int:
    """1..6 for the six steps; 7 for a finding not tied to one."""
    return STEPS.index(step) + 1 if step in STEPS else len(STEPS) + 1


def ordered(findings: list[Finding]) -> list[Finding]:
    """Path order, then severity: the first error is the earliest broken step (the cause)."""
    return sorted(findings, key=lambda f: (step_number(f.step),
                                           SEVERITY_ORDER.get(f.severity, 3)))


def summary(trace: Trace) -> str:
    """One line: healthy, or the first broken step."""
    errors = [f for f in ordered(trace.findings) if f.severity == "error"]
    if errors:
        f = errors[0]
        return f"BROKEN at step {step_number(f.step)} ({f.step}): {f.code}: {f.message}"
    warnings = [f for f in ordered(trace.findings) if f.severity == "warning"]
    cilium = trace.proxy_mode == "cilium"
    if trace.verdict != "dnat":
        why = f": {warnings[0].message}" if warnings else ""
        who = "no Cilium frontend" if cilium else "no kube-proxy rule"
        return f"NOT TRACED: {who} handles this request{why}"
    if warnings:
        return f"OK with {len(warnings)} warning(s): {warnings[0].message}"
    if cilium:
        return ("OK: Cilium sends the request to a backend and reverses the translation for "
                "the reply")
    return "OK: the request reaches an endpoint and the reply returns through conntrack"
