"""Benchmark the iptables engine on a 10,000-service / 50,000-endpoint node.

    python3 bench/bench_iptables.py [--services 10000] [--endpoints 5] [--keep DIR]
                                    [--shapes] [--reuse DIR]

Generates kube-proxy's rules for the objects (kubectl_clusterip.iptables.expected), and when
run as root loads them into a throwaway network namespace and benchmarks the kernel's own
iptables-save output (otherwise kube-proxy's input form). Each measurement runs in a fresh
subprocess so its peak RSS is its own. Figures are reported as ratios to Python's time to
read and split the same file, since absolute times on a shared machine are noisy.

With --shapes the kernel also prints the rules as `iptables -t nat -L -n -v` + `iptables -L -n
-v` and as `iptables -t nat -S` + `iptables -S`, and reading each (and a trace through it) is
measured against reading the iptables-save (target: a listing within 2x). The kernel takes
minutes to list 60,000 chains; --keep DIR keeps every dump and --reuse DIR reads them back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TARGETS = {"trace_s": 1.0, "trace_vs_split": 3.0, "rules_s": 5.0, "rss_mb": 300,
           "shape_vs_save": 2.0}
# --shapes: file name -> the command that prints it
SHAPES = {"nat-L.txt": ["iptables", "-t", "nat", "-L", "-n", "-v"],
          "filter-L.txt": ["iptables", "-L", "-n", "-v"],
          "nat-S.txt": ["iptables", "-t", "nat", "-S"],
          "filter-S.txt": ["iptables", "-S"]}

MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
what, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if what == "read_splitlines":
    n = len(open(path).read().splitlines())
elif what == "read_split_words":
    n = sum(len(line.split()) for line in open(path).read().splitlines())
elif what in ("parse_listing", "parse_spec", "trace_listing"):
    from kubectl_clusterip.iptables.dataplane import IptablesDataplane
    from kubectl_clusterip.iptables.shapes import read_rulesets
    from kubectl_clusterip.model import Packet
    (rs,) = read_rulesets([(p, open(p).read()) for p in path.split(",")])
    n = rs.rule_count()
    if what == "trace_listing":
        t = IptablesDataplane(rs).trace(Packet("10.244.1.99", sys.argv[4], 80))
        assert t.verdict == "dnat", t.verdict
        n = len(t.candidates)
else:
    from kubectl_clusterip.iptables.dataplane import IptablesDataplane
    from kubectl_clusterip.model import Packet
    dp = IptablesDataplane.from_text(open(path).read(), path)
    if what == "parse":
        n = dp.ruleset.rule_count()
    elif what == "trace":
        t = dp.trace(Packet("10.244.1.99", sys.argv[4], 80))
        assert t.verdict == "dnat", t.verdict
        n = len(t.candidates)
    elif what == "rules":
        n = sum(len(sp.endpoints) for sp in dp.services())
elapsed = time.perf_counter() - t0
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork+exec.
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": elapsed, "rss_mb": rss, "n": n}))
"""


def generate(services: int, endpoints: int) -> str:
    from kube_objects import endpoint_slice, rules_for, service

    svcs, slices = [], []
    for i in range(services):
        name = f"svc-{i:05d}"
        ip = f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        svcs.append(service(name, ip, [("http", 80, "tcp", 8080)], namespace=f"ns-{i % 50}"))
        eps = [(f"10.{244 + (i * endpoints + j) // 65536}.{((i * endpoints + j) // 256) % 256}."
                f"{(i * endpoints + j) % 256}", f"node-{j}") for j in range(endpoints)]
        slices.append(endpoint_slice(name, eps, [("http", 8080, "tcp")],
                                     namespace=f"ns-{i % 50}"))
    return rules_for(svcs, slices, "node-0", cluster_cidr="10.244.0.0/14")


def kernel_form(text: str, shapes: bool = False) -> list[str] | None:
    """Load into a namespace and read back what iptables-save prints (and, with `shapes`,
    the SHAPES listings), when we can."""
    from netlab import kernel_round_trip

    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        return None
    return kernel_round_trip(text, ["iptables-restore"], ["iptables-save"],
                             *(SHAPES.values() if shapes else ()))


def measure(what: str, path: str, vip: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, what, path, str(ROOT), vip],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=5, help="per service")
    ap.add_argument("--keep", help="write the dumps into this directory")
    ap.add_argument("--shapes", action="store_true",
                    help="also measure iptables -L / -S output (the kernel lists slowly)")
    ap.add_argument("--reuse", help="read the dumps --keep wrote instead of generating them")
    args = ap.parse_args()

    gen = load = 0.0
    workdir = args.reuse or args.keep or tempfile.mkdtemp(prefix="kc-bench-")
    path = os.path.join(workdir, "iptables-save.txt")
    if args.reuse:
        text, form = Path(path).read_text(), f"iptables-save from {args.reuse}"
    else:
        t0 = time.perf_counter()
        text = generate(args.services, args.endpoints)
        gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        dumps = kernel_form(text, args.shapes)
        form = "iptables-save (kernel)" if dumps else "kube-proxy input (not root)"
        text = dumps[0] if dumps else text
        load = time.perf_counter() - t0
        Path(path).write_text(text)
        for name, dumped in zip(SHAPES, (dumps or [])[1:]):
            Path(workdir, name).write_text(dumped)
    vip = f"10.{96 + (args.services - 1) // 65536}.{((args.services - 1) // 256) % 256}." \
          f"{(args.services - 1) % 256}"  # the last service: worst case for KUBE-SERVICES

    results = {w: measure(w, path, vip) for w in
               ("read_splitlines", "read_split_words", "parse", "trace", "rules")}
    listing = ",".join(os.path.join(workdir, n) for n in ("nat-L.txt", "filter-L.txt"))
    spec = ",".join(os.path.join(workdir, n) for n in ("nat-S.txt", "filter-S.txt"))
    if os.path.exists(listing.split(",")[0]) and (args.shapes or args.reuse):
        results["parse_listing"] = measure("parse_listing", listing, vip)
        results["trace_listing"] = measure("trace_listing", listing, vip)
        results["parse_spec"] = measure("parse_spec", spec, vip)
    base = results["read_splitlines"]["seconds"]
    words = results["read_split_words"]["seconds"]
    print(f"dump: {args.services} services x {args.endpoints} endpoints, {form}, "
          f"{len(text.splitlines())} lines, {len(text) / 1e6:.1f} MB "
          f"(generated in {gen:.1f} s, kernel round trip {load:.1f} s)")
    print(f"{'measurement':18} {'seconds':>8} {'x read+splitlines':>18} {'x read+split words':>19}"
          f" {'peak RSS MB':>12}")
    for name, r in results.items():
        print(f"{name:18} {r['seconds']:8.3f} {r['seconds'] / base:18.2f} "
              f"{r['seconds'] / words:19.2f} {r['rss_mb']:12.0f}")
    trace, rules = results["trace"], results["rules"]
    checks = {
        f"trace under {TARGETS['trace_s']} s": trace["seconds"] < TARGETS["trace_s"],
        f"trace within {TARGETS['trace_vs_split']}x of read+split words":
            trace["seconds"] / words <= TARGETS["trace_vs_split"],
        f"rules under {TARGETS['rules_s']} s": rules["seconds"] < TARGETS["rules_s"],
        f"peak RSS under {TARGETS['rss_mb']} MB":
            max(r["rss_mb"] for r in results.values()) < TARGETS["rss_mb"],
    }
    for shape in ("parse_listing", "parse_spec"):
        if shape in results:
            ratio = results[shape]["seconds"] / results["parse"]["seconds"]
            checks[f"{shape} within {TARGETS['shape_vs_save']}x of parse ({ratio:.2f}x)"] = \
                ratio <= TARGETS["shape_vs_save"]
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if not args.keep and not args.reuse:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
