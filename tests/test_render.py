"""The six-step report: each finding sits under the step it breaks; pods, nodes, the CNI and
DNS show where the snapshot knows them; the last line is the summary."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import snapshots as S

from kubectl_clusterip.engine import Request, node_context, run_trace
from kubectl_clusterip.render import trace_report


def report(case: str, **kw) -> list[str]:
    snap = S.load(case)
    req = Request(target="shop/web", **kw)
    (t,) = run_trace(snap, req)
    return trace_report(t, node_context(snap, S.NODE, ())).splitlines()


def step_block(lines: list[str], n: int) -> list[str]:
    """The lines of step n, up to the next step (or the blank line after step 6)."""
    start = next(i for i, x in enumerate(lines) if x.startswith(f"{n}. "))
    end = next((i for i, x in enumerate(lines[start + 1:], start + 1)
                if x[:2] in {f"{k}." for k in range(n + 1, 7)} or not x.strip()), len(lines))
    return lines[start:end]


def test_healthy_report_shows_pods_nodes_cni_and_dns():
    lines = report("healthy")
    text = "\n".join(lines)
    assert "Client pod shop/client (10.244.1.20) on node kind-worker" in text
    assert step_block(lines, 3)[0].startswith("3. DNS        web.shop -> web.shop.svc.cluster"
                                              ".local A 10.96.120.7")
    dnat = "\n".join(step_block(lines, 4))
    assert "shop/web-1" in dnat and "kind-worker2" in dnat and "ready" in dnat
    fwd = "\n".join(step_block(lines, 5))
    assert "10.244.1.5:8080: same node (kind-worker)" in fwd
    assert "10.244.2.7:8080: cross-node to kind-worker2, carried by kindnet" in fwd
    assert lines[-1].startswith("OK:")
    assert "ERROR" not in text and "WARNING" not in text


def test_findings_sit_beside_the_step_they_break():
    lines = report("no-endpoints")
    assert any("ERROR NoReadyPods" in x for x in step_block(lines, 1))
    assert any("ERROR NoEndpointsReject" in x for x in step_block(lines, 4))
    assert any(x.strip().startswith("evidence: -A KUBE-SERVICES") for x in step_block(lines, 4))
    assert lines[-1].startswith("BROKEN at step 1 (service): NoReadyPods")


def test_drift_is_shown_at_the_rules_step():
    lines = report("stale-rules")
    block = "\n".join(step_block(lines, 2))
    assert "ERROR StaleEndpointRules" in block and "ERROR MissingEndpointRules" in block
    assert "(not in the API)" in "\n".join(step_block(lines, 4))
    assert lines[-1].startswith("BROKEN at step 2 (rules)")


def test_hairpin_at_the_reply_step():
    lines = report("healthy", source_ip=S.WEB1)
    block = "\n".join(step_block(lines, 6))
    assert "INFO Hairpin" in block and "masqueraded by:" in block
