"""Benchmark the nftables engine on a 10,000-service / 50,000-endpoint node.

    python3 bench/bench_nftables.py [--services 10000] [--endpoints 5] [--keep DIR]

Generates kube-proxy's nftables transaction for the objects
(kubectl_clusterip.nftables.expected); as root it loads it into a throwaway network
namespace and benchmarks the kernel's own `nft -j list ruleset` and `nft list ruleset`
output (elsewhere it stops: the dump formats are the kernel's to define). Each measurement
runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Times are also given as
ratios to Python's bare json.load (JSON) or read+split (text) of the same file, since
absolute times on a shared machine are noisy.
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
sys.path.insert(0, str(ROOT / "tests"))  # netlab: the kernel round trip

TARGETS = {"trace_s": 1.0, "trace_vs_baseline": 3.0, "rules_s": 5.0, "rss_mb": 300}

MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
what, path, vip = sys.argv[1], sys.argv[2], sys.argv[4]
t0 = time.perf_counter()
if what == "json_load":
    with open(path) as f:
        n = len(json.load(f)["nftables"])
elif what == "read_split":
    with open(path) as f:
        n = sum(len(line.split()) for line in f.read().splitlines())
else:
    from kubectl_clusterip.model import Packet
    from kubectl_clusterip.nftables.dataplane import NftablesDataplane
    with open(path) as f:
        dp = NftablesDataplane.from_text(f.read(), path)[0]
    if what == "parse":
        n = len(dp.table.chains)
    elif what == "trace":
        t = dp.trace(Packet("10.244.1.99", vip, 80))
        assert t.verdict == "dnat", t.verdict
        n = len(t.candidates)
    elif what == "services":
        n = sum(len(sp.endpoints) for sp in dp.services())
elapsed = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "rss_mb": rss, "n": n}))
"""


def _ip(base: int, i: int) -> str:
    return f"10.{base + i // 65536}.{(i // 256) % 256}.{i % 256}"


def generate(services: int, endpoints: int) -> str:
    from kubectl_clusterip.config import ProxyConfig
    from kubectl_clusterip.nftables.expected import expected_ruleset

    svcs, slices = [], []
    for i in range(services):
        ns, name = f"ns-{i % 50}", f"svc-{i:05d}"
        svcs.append({"metadata": {"namespace": ns, "name": name},
                     "spec": {"clusterIP": _ip(96, i), "ports": [
                         {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
        slices.append({
            "metadata": {"namespace": ns, "name": f"{name}-1",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [_ip(244, i * endpoints + j)], "nodeName": f"node-{j}"}
                          for j in range(endpoints)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    node = {"metadata": {"name": "node-0"}, "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}
    config = ProxyConfig(mode="nftables", cluster_cidrs=["10.244.0.0/14"])
    return expected_ruleset(svcs, slices, node, config, service_cidrs=["10.96.0.0/12"],
                            replace=False)


def kernel_dumps(text: str) -> tuple[str, str]:
    """Load into a namespace and read back `nft -j list ruleset` and `nft list ruleset`."""
    from netlab import kernel_round_trip

    js, txt = kernel_round_trip(text, ["nft", "-f", "-"], ["nft", "-j", "list", "ruleset"],
                                ["nft", "list", "ruleset"])
    return js, txt


def measure(what: str, path: str, vip: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, what, path, str(ROOT), vip],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=5, help="per service")
    ap.add_argument("--keep", help="write the dumps into this directory")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        sys.exit("bench_nftables needs root, nft and ip (it reads the kernel's own dumps)")

    workdir = args.keep or tempfile.mkdtemp(prefix="kc-bench-nft-")
    os.makedirs(workdir, exist_ok=True)
    paths = {"json": os.path.join(workdir, "nft-ruleset.json"),
             "text": os.path.join(workdir, "nft-ruleset.txt")}
    stamp = os.path.join(workdir, "size")
    size = f"{args.services} {args.endpoints}"
    if Path(stamp).is_file() and Path(stamp).read_text() == size:
        js, txt = Path(paths["json"]).read_text(), Path(paths["text"]).read_text()
        how = f"reused from {workdir}"
    else:  # the kernel takes a while to load 60,000 chains: --keep DIR reuses the dumps
        t0 = time.perf_counter()
        text = generate(args.services, args.endpoints)
        gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        js, txt = kernel_dumps(text)
        how = f"generated in {gen:.1f} s, nft -f and both dumps {time.perf_counter() - t0:.1f} s"
        Path(paths["json"]).write_text(js)
        Path(paths["text"]).write_text(txt)
        Path(stamp).write_text(size)
    vip = _ip(96, args.services - 1)
    print(f"ruleset: {args.services} services x {args.endpoints} endpoints ({how})")
    print(f"  JSON {len(js) / 1e6:.1f} MB; text {len(txt) / 1e6:.1f} MB, "
          f"{len(txt.splitlines())} lines")
    ok = True
    for fmt, baseline in (("json", "json_load"), ("text", "read_split")):
        results = {w: measure(w, paths[fmt], vip)
                   for w in (baseline, "parse", "trace", "services")}
        base = results[baseline]["seconds"]
        print(f"\n{fmt} input        seconds  x {baseline:10}  peak RSS MB")
        for name, r in results.items():
            print(f"  {name:14} {r['seconds']:8.3f}  {r['seconds'] / base:12.2f}  "
                  f"{r['rss_mb']:11.0f}")
        trace, svcs = results["trace"], results["services"]
        checks = {
            f"trace under {TARGETS['trace_s']} s": trace["seconds"] < TARGETS["trace_s"],
            f"trace within {TARGETS['trace_vs_baseline']}x of {baseline}":
                trace["seconds"] / base <= TARGETS["trace_vs_baseline"],
            f"services under {TARGETS['rules_s']} s": svcs["seconds"] < TARGETS["rules_s"],
            f"peak RSS under {TARGETS['rss_mb']} MB (ours; the baseline is not ours)":
                max(r["rss_mb"] for w, r in results.items() if w != baseline)
                < TARGETS["rss_mb"],
        }
        for name, passed in checks.items():
            ok = ok and passed
            print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    if not args.keep:
        shutil.rmtree(workdir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
