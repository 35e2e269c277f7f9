"""What the benchmarks share: whole-process timings and the machine they were taken on.

The issue's targets are ratios between whole processes (start-up and imports included), taken
in one run: absolute times on a shared machine swing by a factor of several from minute to
minute, so each case runs in rounds, interleaved with its baseline, and the median counts.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The console script's code, so a case is exactly what `kubectl clusterip ARGS` runs; the
# process reports its own peak RSS (VmHWM: ru_maxrss would carry the parent's across exec).
CLI = ("import atexit, os\n"
       "def _rss():\n"
       "    with open('/proc/self/status') as f, open(os.environ['BENCH_RSS'], 'w') as out:\n"
       "        out.write(next(l.split()[1] for l in f if l.startswith('VmHWM')))\n"
       "atexit.register(_rss)\n"
       "from kubectl_clusterip.launch import main\n"
       "main()\n")


def cli(*args: str) -> list[str]:
    """The command line of `kubectl clusterip ARGS` with this checkout's package."""
    return [sys.executable, "-c", CLI, *args]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run_rounds(cases: dict[str, list[str]], rounds: int, ok_codes: tuple[int, ...] = (0, 1)
               ) -> dict[str, dict]:
    """Median wall-clock seconds (and our peak RSS, MB) of each case over interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    rss: dict[str, float] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        env["BENCH_RSS"] = rss_file = os.path.join(tmp, "rss")
        for _ in range(rounds):
            for name, cmd in cases.items():
                if os.path.exists(rss_file):
                    os.unlink(rss_file)
                t = time.perf_counter()
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
                times[name].append(time.perf_counter() - t)
                if r.returncode not in ok_codes:
                    raise SystemExit(f"{name}: exit {r.returncode}: {r.stderr[-2000:]}")
                if os.path.exists(rss_file):
                    rss[name] = max(rss.get(name, 0.0), int(Path(rss_file).read_text()) / 1024)
    return {name: {"seconds": statistics.median(ts), "runs": ts, "rss_mb": rss.get(name)}
            for name, ts in times.items()}


def report(results: dict[str, dict], base: str, targets: dict[str, tuple[str, float]]
           ) -> bool:
    """A table of medians and ratios to `base`, then PASS/FAIL per target (case: base, max)."""
    ok = True
    print(f"  {'case':24} {'median s':>9} {'x ' + base:>18} {'peak RSS MB':>12}")
    for name, r in results.items():
        rss = f"{r['rss_mb']:12.0f}" if r["rss_mb"] else f"{'-':>12}"
        print(f"  {name:24} {r['seconds']:9.3f} "
              f"{r['seconds'] / results[base]['seconds']:18.2f} {rss}")
    for name, (against, limit) in targets.items():
        ratio = results[name]["seconds"] / results[against]["seconds"]
        passed = ratio <= limit
        ok = ok and passed
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {ratio:.2f}x {against} "
              f"(target at most {limit:g}x)")
    return ok


def agree(dataplanes: list) -> tuple[int, list[str]]:
    """Every service port's endpoints and odds as `rules` reads them (its chains walked in
    full) against a trace to its ClusterIP (the fast path): ports checked, disagreements."""
    from kubectl_clusterip.model import Packet

    checked, wrong = 0, []
    for dp in dataplanes:
        for sp in dp.services():
            checked += 1
            t = dp.trace(Packet("10.244.1.99", sp.cluster_ip or "", sp.port or 0, sp.protocol))
            got = sorted((c.endpoint, round(c.probability, 9)) for c in t.candidates)
            want = sorted((f"{ip}:{port}", round(p, 9)) for ip, port, p in sp.endpoints)
            if got != want:
                wrong.append(f"{sp.name}: trace {got} != rules {want}")
    return checked, wrong


def check_exact(dataplanes: list) -> bool:
    t0 = time.perf_counter()
    checked, wrong = agree(dataplanes)
    ok = not wrong and checked > 0
    print(f"  {'PASS' if ok else 'FAIL'}  exact: {checked} service ports, trace (fast path) "
          f"== rules (full walk) on every one ({len(wrong)} differ; "
          f"{time.perf_counter() - t0:.0f} s)")
    for w in wrong[:5]:
        print(f"    {w}")
    return ok


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or "?")
    load = " ".join(_lines("/proc/loadavg")[:1]).split()[:3]
    return (f"machine: {cpu}, {os.cpu_count()} CPUs, load {' '.join(load) or '?'}; "
            f"{platform.system()} {platform.release()}; Python {sys.version.split()[0]}")


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


