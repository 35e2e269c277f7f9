"""Benchmark the nftables engine on a 10,000-service / 50,000-endpoint node, as processes.

    python3 bench/bench_nftables.py [--services 10000] [--endpoints 5] [--keep DIR] [-n 3]

Generates kube-proxy's nftables transaction for the objects
(kubectl_clusterip.nftables.expected); as root it loads it into a throwaway network
namespace and benchmarks the kernel's own `nft -j list ruleset` and `nft list ruleset`
output (elsewhere it stops: the dump formats are the kernel's to define). Loading 60,000
chains takes minutes: `--keep DIR` keeps both dumps and reuses them next time. Every case is
a whole `kubectl clusterip` process, start-up included, timed against a Python process that
json.loads (JSON) or reads and splits (text) the same file (issue 12's targets); ratios come
from one run, the median of interleaved rounds.

Then the exactness check: for every service port `rules` reads (the full walk of its chains),
a trace to its ClusterIP (the fast path) must reach the same endpoints with the same odds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # netlab: the kernel round trip
sys.path.insert(0, str(ROOT / "bench"))

from measure import check_exact, cli, machine, python, report, run_rounds  # noqa: E402

# format -> (baseline case, at most this many times its median for each trace)
BASELINES = {"json": ("json.load", 1.0), "text": ("read+split", 2.0)}
MAX_RSS_MB = 200


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


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=5, help="per service")
    ap.add_argument("--keep", help="keep the dumps in this directory, and reuse them next time")
    ap.add_argument("-n", "--rounds", type=int, default=3, help="rounds of every case")
    ap.add_argument("--no-check", action="store_true", help="skip the exactness check")
    args = ap.parse_args()
    workdir = args.keep or tempfile.mkdtemp(prefix="kc-bench-nft-")
    os.makedirs(workdir, exist_ok=True)
    paths = {"json": os.path.join(workdir, "nft-ruleset.json"),
             "text": os.path.join(workdir, "nft-ruleset.txt")}
    stamp = os.path.join(workdir, "size")
    size = f"{args.services} {args.endpoints}"
    if Path(stamp).is_file() and Path(stamp).read_text() == size:
        how = f"reused from {workdir}"
    else:  # the kernel takes a while to load 60,000 chains: --keep DIR reuses the dumps
        if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
            sys.exit("bench_nftables needs root, nft and ip (it reads the kernel's own dumps)")
        t0 = time.perf_counter()
        text = generate(args.services, args.endpoints)
        gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        js, txt = kernel_dumps(text)
        how = f"generated in {gen:.1f} s, nft -f and both dumps {time.perf_counter() - t0:.1f} s"
        Path(paths["json"]).write_text(js)
        Path(paths["text"]).write_text(txt)
        Path(stamp).write_text(size)
    last = args.services - 1
    vip, name = _ip(96, last), f"ns-{last % 50}/svc-{last:05d}"
    print(machine())
    print(f"ruleset: {args.services} services x {args.endpoints} endpoints ({how}); "
          f"JSON {os.path.getsize(paths['json']) / 1e6:.1f} MB, "
          f"text {os.path.getsize(paths['text']) / 1e6:.1f} MB")
    ok = True
    for fmt, (baseline, limit) in BASELINES.items():
        path = paths[fmt]
        base = (f"import json; json.load(open({path!r}))" if fmt == "json"
                else f"open({path!r}).read().splitlines()")
        cases = {baseline: python(base),
                 "trace --to": cli("trace", "--to", f"{vip}:80", "--rules-file", path),
                 "trace NS/NAME": cli("trace", name, "--rules-file", path),
                 "rules": cli("rules", "--rules-file", path)}
        results = run_rounds(cases, args.rounds)
        print(f"\n{fmt} dump, whole processes, median of {args.rounds} interleaved rounds:")
        ok = report(results, baseline, {"trace --to": (baseline, limit),
                                        "trace NS/NAME": (baseline, limit)}) and ok
        rss = max(r["rss_mb"] or 0 for r in results.values())
        print(f"  {'PASS' if rss < MAX_RSS_MB else 'FAIL'}  peak RSS {rss:.0f} MB "
              f"(target under {MAX_RSS_MB} MB)")
        ok = ok and rss < MAX_RSS_MB
        if not args.no_check:
            from kubectl_clusterip.dumps import read_text
            from kubectl_clusterip.nftables.dataplane import NftablesDataplane

            ok = check_exact(NftablesDataplane.from_text(read_text(path), path)) and ok
    if not args.keep:
        shutil.rmtree(workdir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
