"""--all-nodes against a fake API server of many nodes (tests/fleetfake.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fakeapi import FakeCluster
from fleetfake import LONG, node_names, populate

from kubectl_clusterip.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster(tmp_path):
    with FakeCluster() as fc:
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        yield fc


def run(tmp_path: Path, *args: str):
    env = {"KUBECONFIG": str(tmp_path / "kubeconfig")}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_every_node_gets_its_row(cluster, tmp_path):
    names = node_names(12)
    stale = {names[3], names[7]}
    never = {names[5]: "rejected", names[9]: "deadline"}
    populate(cluster, 12, stale, never)
    r = run(tmp_path, "trace", "web", "--all-nodes", "--parallel", "4", "-o", "json")
    assert r.exit_code == 1, r.stderr
    doc = json.loads(r.stdout)
    rows = {i["node"]: i for i in doc["items"]}
    assert sorted(rows) == sorted(names)
    for name, row in rows.items():
        if name in stale:
            assert row["verdict"] == "broken"
            assert [f["code"] for f in row["drift"]] == ["StaleEndpointRules"]
            assert row["endpoints"]["programmed"] == 3 and row["endpoints"]["expected"] == 2
        elif name in never:
            assert row["verdict"] == "failed"
            why = "OutOfmemory" if never[name] == "rejected" else "DeadlineExceeded"
            assert why in row["reason"] and "400" not in row["reason"]
        else:
            assert row["verdict"] == "ok", row
            assert row["endpoints"] == {"programmed": 2, "expected": 2, "ports": [
                {"service": "default/web:http", "family": "IPv4",
                 "programmed": ["10.244.1.5:8080", "10.244.2.6:8080"],
                 "expected": ["10.244.1.5:8080", "10.244.2.6:8080"]}]}
    assert doc["summary"].startswith("4 of 12 nodes differ: ")
    assert cluster.pods_left() == [] and len(cluster.created) == 12
    assert len(cluster.deleted) == 12
    # at most --parallel pods at once, as the server saw them
    alive, peak = 0, 0
    for m, p, _ in cluster.requests:
        if p.endswith("/pods") and m == "POST":
            alive += 1
        elif m == "DELETE":
            alive -= 1
        peak = max(peak, alive)
    assert peak == 4
    # one list per poll round for all the pods, never a GET per pod
    assert not [p for m, p, _ in cluster.requests
                if m == "GET" and "/pods/clusterip-debug-" in p and not p.endswith("/log")]


def test_table_and_summary(cluster, tmp_path):
    names = node_names(5)
    populate(cluster, 5, {names[2]}, {})
    r = run(tmp_path, "trace", "default/web", "--all-nodes")
    assert r.exit_code == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NODE", "MODE", "VERDICT", "ENDPOINTS", "DRIFT", "NODE", "FACTS"]
    stale = next(x for x in lines if x.startswith(names[2]))
    assert stale.split()[1:5] == ["iptables", "broken", "3/2", "StaleEndpointRules"]
    assert lines[-1] == f"1 of 5 nodes differ: {names[2]} (StaleEndpointRules)"
    assert r.stderr == ""  # not a terminal: no progress


def test_nodes_selector_and_all_healthy_exit_0(cluster, tmp_path):
    populate(cluster, 4, set(), {})
    r = run(tmp_path, "trace", "web", "--nodes", "kubernetes.io/hostname=node-001", "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "all 1 nodes agree: ok"
    assert [c["spec"]["nodeName"] for c in cluster.created] == ["node-001"]
    r = run(tmp_path, "trace", "web", "--nodes", "nope=1")
    assert r.exit_code == 2 and "no node matches --nodes nope=1" in r.stderr


def test_rules_and_capture_all_nodes(cluster, tmp_path):
    names = node_names(4)
    populate(cluster, 4, {names[1]}, {names[2]: "rejected"})
    r = run(tmp_path, "rules", "default/web", "--all-nodes", "-o", "json")
    assert r.exit_code == 1, r.stderr
    rows = {i["node"]: i for i in json.loads(r.stdout)["items"]}
    assert rows[names[0]]["differs"] == [] and rows[names[0]]["endpoints"] == 2
    assert rows[names[1]]["differs"] == ["default/web:http: 3 endpoints, most nodes 2"]
    assert "OutOfmemory" in rows[names[2]]["reason"]
    snap = tmp_path / "snap"
    r = run(tmp_path, "capture", "web", "--all-nodes", "-o", str(snap))
    assert r.exit_code == 0, r.stderr
    assert f"warning: node {names[2]} not captured: debug pod did not run: OutOfmemory" \
        in r.stderr
    assert sorted(p.name for p in (snap / "nodes").iterdir()) == sorted(
        n for n in names if n != names[2])
    meta = yaml.safe_load((snap / "snapshot.yaml").read_text())
    assert "OutOfmemory" in meta["nodeFailures"][names[2]]
    replay = run(tmp_path, "trace", "web", "--snapshot", str(snap), "--node", names[1])
    assert replay.exit_code == 1 and "StaleEndpointRules" in replay.stdout
    assert cluster.pods_left() == []


def test_usage_errors_start_nothing(cluster, tmp_path):
    populate(cluster, 3, set(), {})
    for extra in (["--node", "node-000"], ["--snapshot", str(tmp_path)], ["--via",
                                                                          "kube-proxy"]):
        r = run(tmp_path, "trace", "web", "--all-nodes", *extra)
        assert r.exit_code == 2 and r.stderr.startswith("error: "), r.stderr
    assert not cluster.created


def test_a_refused_create_stops_the_fleet_without_deleting(cluster, tmp_path):
    from fakeapi import namespace
    populate(cluster, 3, set(), {})
    cluster.add(namespace("kube-system", enforce="baseline"))
    r = run(tmp_path, "trace", "web", "--all-nodes")
    assert r.exit_code == 2 and "Pod Security level 'baseline'" in r.stderr
    assert not [m for m, _, _ in cluster.requests if m == "DELETE"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_mid_fleet_leaves_no_pod(cluster, tmp_path, sig):
    """A real process and a real signal while 5 pods wait: every pod made is deleted."""
    populate(cluster, 30, set(), {n: "pending" for n in node_names(30)[10:]})
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kubectl_clusterip", "trace", "web",
                             "--all-nodes", "--parallel", "5", "--pod-timeout", "60"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        while len(cluster.created) < 15 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(cluster.created) >= 15, "the fleet never reached the pending nodes"
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "error: interrupted; nothing was left in the cluster" in err
    assert cluster.pods_left() == [] and len(cluster.deleted) == len(cluster.created) >= 15


def test_long_node_name_row(cluster, tmp_path):
    populate(cluster, 3, set(), {})
    r = run(tmp_path, "trace", "web", "--all-nodes", "-o", "json")
    rows = {i["node"]: i for i in json.loads(r.stdout)["items"]}
    assert len(LONG) == 70 and rows[LONG]["verdict"] == "ok"
