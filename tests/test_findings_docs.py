"""docs/findings.md is the public contract: every code, with its severity and step."""

from __future__ import annotations

import re
from pathlib import Path

from kubectl_clusterip.findings import CODES, STEPS, FindingError, finding, ordered

DOC = Path(__file__).parent.parent / "docs" / "findings.md"
ORIGINAL = ("NoServiceRule", "NoEndpointsReject", "NoLocalEndpointsDrop", "DroppedByRule",
            "PartialDispatch", "UndecidedMatch", "Hairpin", "SessionAffinity")


def documented() -> dict[str, tuple[str, str]]:
    """code -> (severity, step) from the tables: the step is the section the row is in."""
    out, step = {}, ""
    for line in DOC.read_text().splitlines():
        m = re.match(r"### Step \d: (\w+)", line)
        if m:
            step = {"Service": "service", "kube": "rules", "DNS": "dns", "DNAT": "dnat",
                    "forwarding": "forward", "reply": "reply"}[m.group(1)]
        m = re.match(r"\| `(\w+)` \| (error|warning|info)", line)
        if m:
            out[m.group(1)] = (m.group(2), step)
    return out


def test_every_code_is_documented_with_its_severity_and_step():
    assert documented() == CODES


def test_original_codes_are_kept():
    assert set(ORIGINAL) <= set(CODES)


def test_steps_and_order():
    assert all(step in STEPS for _, step in CODES.values())
    found = [finding("Hairpin", "h"), finding("NoEndpointsReject", "r"),
             finding("TopologyHintsIgnored", "t"), finding("SelectorMatchesNoPods", "s")]
    assert [f.code for f in ordered(found)] == ["SelectorMatchesNoPods", "NoEndpointsReject",
                                               "TopologyHintsIgnored", "Hairpin"]


def test_finding_error_is_one_line():
    e = FindingError(finding("ServiceNotFound", "service a/b not found", "ev", "next-cmd"))
    assert str(e) == "ServiceNotFound: service a/b not found (ev); next: next-cmd"
