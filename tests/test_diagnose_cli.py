"""`trace --snapshot DIR`: findings in `-o json`, the summary, and the exit-code contract
(0 healthy, 1 an error-level finding, 2 no trace could be made) from on-disk snapshots."""

from __future__ import annotations

import json
import os
import sys

from click.testing import CliRunner

sys.path.insert(0, os.path.dirname(__file__))

import snapshots as S

from kubectl_clusterip.cli import main
from kubectl_clusterip.snapshot import write_snapshot


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_healthy_json_exit_zero():
    r = run("trace", "shop/web", "--snapshot", str(S.DATA / "healthy"), "-o", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["summary"].startswith("OK:")
    assert doc["findings"] == []
    assert doc["clientNode"] == S.NODE and doc["cni"].startswith("kindnet")
    assert {d["pod"] for d in doc["dnat"]} == {"web-1", "web-2"}
    for key in ("request", "proxyMode", "verdict", "dnat", "masquerade", "reverse", "steps",
                "findings"):  # the stable contract is still there
        assert key in doc


def test_broken_json_lists_findings_with_evidence_and_exit_one():
    r = run("trace", "shop/web", "--snapshot", str(S.DATA / "stale-rules"), "-o", "json")
    assert r.exit_code == 1
    doc = json.loads(r.output)
    first = doc["findings"][0]
    assert first["code"] == "StaleEndpointRules" and first["step"] == "rules"
    assert first["severity"] == "error" and "DNAT --to-destination 10.244.1.6:8080" in \
        first["evidence"] and "kube-proxy" in first["hint"]
    assert doc["summary"].startswith("BROKEN at step 2 (rules)")


def test_warning_only_exits_zero(tmp_path):
    snap = S.without_cilium_outputs(S.load("cilium"))
    write_snapshot(snap, str(tmp_path / "snap"))
    r = run("trace", "shop/web", "--snapshot", str(tmp_path / "snap"))
    assert r.exit_code == 0 and "KubeProxyReplaced" in r.output


def test_service_not_found_is_one_line_exit_two():
    r = run("trace", "shop/wbe", "--snapshot", str(S.DATA / "healthy"))
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: ServiceNotFound: service shop/wbe not found; did you mean shop/web? "
        "(Services in namespace shop: web); next: kubectl clusterip trace shop/web"]
    assert "Traceback" not in r.output
