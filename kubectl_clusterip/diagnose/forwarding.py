"""Step 5 (forwarding): what stands between the DNAT and the endpoint pod — NetworkPolicy,
the node's own netfilter and routing state — gathered for `assemble`."""

from __future__ import annotations

from kubectl_clusterip.diagnose.cluster import Cluster
from kubectl_clusterip.diagnose.node import node_findings
from kubectl_clusterip.diagnose.policy import dns_policy, policy_findings
from kubectl_clusterip.model import Finding, Trace


def forwarding(cl: Cluster, trace: Trace) -> tuple[list[Finding], list[str], dict]:
    """Findings of the forwarding step (and the DNS policy check), notes on what could not
    be checked, and the node's facts as data (`nodeFacts` in the JSON)."""
    notes: list[str] = []
    why = cl.snap.meta.get("networkPolicyNotChecked")
    if why:
        notes.append(f"NetworkPolicy not checked: {why}")
    found = policy_findings(cl, trace)
    d = dns_policy(cl, trace)
    if d is not None:
        found.append(d)
    node_found, node_notes, facts = node_findings(cl, trace)
    return found + node_found, notes + node_notes, facts
