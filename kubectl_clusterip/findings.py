"""Finding codes: a public contract (docs/findings.md lists them); add codes, never rename."""

from __future__ import annotations

from kubectl_clusterip.model import Finding, Trace

# code -> (severity, the step of the path it breaks)
CODES: dict[str, tuple[str, str]] = {
    "NoServiceRule": ("error", "rules"),
    "NoEndpointsReject": ("error", "dnat"),
    "NoLocalEndpointsDrop": ("error", "dnat"),
    "DroppedByRule": ("error", "rules"),
    "PartialDispatch": ("error", "dnat"),
    "UndecidedMatch": ("warning", "rules"),
    "Hairpin": ("info", "reply"),
    "SessionAffinity": ("info", "dnat"),
}


def finding(code: str, message: str, evidence: str = "", hint: str = "") -> Finding:
    severity, step = CODES[code]
    return Finding(severity, code, message, evidence, step, hint)


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def summary(trace: Trace) -> str:
    """One line: healthy, or the first broken step."""
    errors = [f for f in trace.findings if f.severity == "error"]
    if errors:
        return f"BROKEN at step '{errors[0].step}': {errors[0].message}"
    warnings = [f for f in trace.findings if f.severity == "warning"]
    if warnings:
        return f"OK with {len(warnings)} warning(s): {warnings[0].message}"
    return "OK: the request reaches an endpoint and the reply returns through conntrack"
