"""`trace SERVICE --all-nodes` against a fake API server of 200 nodes: requests, time, memory.

The fake (tests/fakeapi.py, tests/fleetfake.py) answers as a real kube-apiserver does; its
kubelet answers each debug pod with the dump kube-proxy would have written on that node:
every 10th node stale (its rules still DNAT to an endpoint the API dropped), some whose pods
never start (rejected for memory, deadline passed, image pull failing), one with a
70-character name. The CLI runs as its own process, as a user runs it:

    python bench/bench_fleet.py              # 200 nodes, --parallel 20
    python bench/bench_fleet.py -n 1000 --parallel 50

It checks every node's row, then reports the API requests (by kind), the wall time per
node, and the CLI's peak RSS beside a one-node trace's: the fleet keeps one dump in memory
at a time, so its peak should stay near the one-node figure whatever N is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from fakeapi import FakeCluster  # noqa: E402
from fleetfake import LONG, node_names, populate  # noqa: E402
from machine import machine  # noqa: E402

# The CLI as a user runs it, reporting its own peak RSS on stderr as it exits.
WRAP = ("import atexit, resource, runpy, sys\n"
        "atexit.register(lambda: sys.stderr.write('MAXRSS %d\\n' % "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
        "sys.argv = ['kubectl-clusterip', *sys.argv[1:]]\n"
        "runpy.run_module('kubectl_clusterip', run_name='__main__')\n")


def cli(kubeconfig: Path, *args: str) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run the CLI; its wall time and peak RSS (KiB)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", WRAP, *args], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    secs = time.monotonic() - t0
    rss = int(next(x for x in p.stderr.splitlines() if x.startswith("MAXRSS ")).split()[1])
    return p, secs, rss


def kind(method: str, path: str, query: dict) -> str:
    if path.endswith("/log"):
        return "GET pods/log"
    if method == "GET" and "/pods/clusterip-debug-" in path:
        return "GET debug pod (per-pod poll)"
    if method == "DELETE" and "/pods/clusterip-debug-" in path:
        return "DELETE debug pod"
    if method == "GET" and path.endswith("/pods") and "clusterip.kubectl.dev/run" in \
            query.get("labelSelector", ""):
        return "LIST debug pods by label (poll)"
    return f"{method} {path.rsplit('/', 1)[-1]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--nodes", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=20)
    a = ap.parse_args()
    names = node_names(a.nodes)
    stale = {n for i, n in enumerate(names) if i % 10 == 3}
    never = {n: ("rejected", "deadline", "imagepull")[i % 3]
             for i, n in enumerate(n for j, n in enumerate(names) if j % 25 == 7)}
    print(machine())
    with tempfile.TemporaryDirectory() as tmp, FakeCluster() as fc:
        kubeconfig = fc.write_kubeconfig(Path(tmp) / "kubeconfig")
        populate(fc, a.nodes, stale, never)
        one, one_s, one_rss = cli(kubeconfig, "trace", "web", "--node", names[0], "-o", "json")
        assert one.returncode in (0, 1), one.stderr  # 1: no CoreDNS in the fake
        fc.requests.clear()
        made = len(fc.created)
        r, secs, rss = cli(kubeconfig, "trace", "web", "--all-nodes", "--parallel",
                           str(a.parallel), "-o", "json")
        assert r.returncode == 1, r.stderr
        rows = {i["node"]: i for i in json.loads(r.stdout)["items"]}
        assert sorted(rows) == sorted(names), "a node has no row"
        for name, row in rows.items():
            want = "failed" if name in never else "broken" if name in stale else "ok"
            assert row["verdict"] == want, (name, row)
            if name in stale:
                assert [f["code"] for f in row["drift"]] == ["StaleEndpointRules"], row
        assert rows[LONG]["verdict"] == "ok" and len(LONG) == 70
        assert fc.pods_left() == [] and len(fc.deleted) == len(fc.created) == made + a.nodes
        kinds = Counter(kind(m, p, q) for m, p, q in fc.requests)
        total = sum(kinds.values())
        print(f"{a.nodes} nodes, --parallel {a.parallel}: every row right ({len(stale)} "
              f"stale, {len(never)} never started, 1 with a {len(LONG)}-character name); "
              "no pod left")
        polls = kinds["LIST debug pods by label (poll)"]
        per_node = sum(v for k, v in kinds.items() if k.startswith(("POST", "DELETE"))
                       or k == "GET pods/log")
        print(f"API requests: {total} = {total - per_node - polls} once + {per_node} per "
              f"node (create, log, delete: {per_node / a.nodes:.2f} per node; a pod that never "
              f"ran has no log) + {polls} polls (one list each, for all the live pods)")
        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {v:6d}  {k}")
        print(f"wall time: {secs:.1f} s for {a.nodes} nodes = {1000 * secs / a.nodes:.0f} ms "
              f"per node (one-node trace: {one_s:.1f} s, mostly start-up)")
        print(f"peak RSS of the CLI: {rss / 1024:.0f} MiB ({one_rss / 1024:.0f} MiB for one "
              "node)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
