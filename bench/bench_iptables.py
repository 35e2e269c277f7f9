"""Benchmark the iptables engine on a 10,000-service / 50,000-endpoint node, as processes.

    python3 bench/bench_iptables.py [--services 10000] [--endpoints 5] [--keep DIR] [-n 3]
                                    [--shapes] [--reuse DIR]

Generates kube-proxy's rules for the objects (kubectl_clusterip.iptables.expected), and when
run as root loads them into a throwaway network namespace and benchmarks the kernel's own
iptables-save output (otherwise kube-proxy's input form). `--keep DIR` keeps the dump and
reuses it on the next run. Every case is a whole `kubectl clusterip` process, start-up
included, timed against a Python process that reads and splits the same file, and `rules`
against `iptables-restore --test` of the same dump (issue 12's targets); ratios come from one
run, the median of interleaved rounds, since a shared machine's absolute times swing.

With --shapes the kernel also prints the rules as `iptables -t nat -L -n -v` + `iptables -L -n
-v` and as `iptables -t nat -S` + `iptables -S`, and a trace read from each is timed against
the trace from the iptables-save (target: within 2x). The kernel takes minutes to list 60,000
chains; --keep DIR keeps every dump and --reuse DIR reads them back.

Then the exactness check: for every service port `rules` reads (the full walk of its chains),
a trace to its ClusterIP (the fast path through KUBE-SERVICES) must reach the same endpoints
with the same odds.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "bench"))

from measure import check_exact, cli, machine, python, report, run_rounds  # noqa: E402

# case -> (baseline case, at most this many times its median)
TARGETS = {"trace --to": ("read+split", 2.0), "trace NS/NAME": ("read+split", 2.0),
           "rules": ("iptables-restore --test", 1.0)}
MAX_RSS_MB = 200
SHAPE_VS_SAVE = 2.0
# --shapes: file name -> the command that prints it
SHAPES = {"nat-L.txt": ["iptables", "-t", "nat", "-L", "-n", "-v"],
          "filter-L.txt": ["iptables", "-L", "-n", "-v"],
          "nat-S.txt": ["iptables", "-t", "nat", "-S"],
          "filter-S.txt": ["iptables", "-S"]}


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


def restore_test(path: str) -> tuple[list[str], str] | None:
    """`iptables-restore --test DUMP` in a throwaway namespace (root), and that namespace."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        return None
    ns = f"kc-{os.getpid()}-restore"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    return ["ip", "netns", "exec", ns, "iptables-restore", "--test", path], ns


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=5, help="per service")
    ap.add_argument("--keep", help="keep the dump in this directory, and reuse it next time")
    ap.add_argument("-n", "--rounds", type=int, default=3, help="rounds of every case")
    ap.add_argument("--no-check", action="store_true", help="skip the exactness check")
    ap.add_argument("--shapes", action="store_true",
                    help="also time iptables -L / -S output (the kernel lists slowly)")
    ap.add_argument("--reuse", help="read the dumps --keep wrote instead of generating them")
    args = ap.parse_args()

    workdir = args.reuse or args.keep or tempfile.mkdtemp(prefix="kc-bench-")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "iptables-save.txt")
    stamp, size = os.path.join(workdir, "size-iptables"), f"{args.services} {args.endpoints}"
    listed = all(Path(workdir, n).is_file() for n in SHAPES)
    if args.reuse or (Path(stamp).is_file() and Path(stamp).read_text() == size
                      and Path(path).is_file() and (listed or not args.shapes)):
        text = Path(path).read_text()
        how = f"reused from {workdir}"
        form = "iptables-save (kernel)" if text.startswith("# Generated by") else "input form"
    else:
        t0 = time.perf_counter()
        text = generate(args.services, args.endpoints)
        gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        dumps = kernel_form(text, args.shapes)
        form = "iptables-save (kernel)" if dumps else "kube-proxy input (not root)"
        text = dumps[0] if dumps else text
        how = f"generated in {gen:.1f} s, kernel round trip {time.perf_counter() - t0:.1f} s"
        Path(path).write_text(text)
        Path(stamp).write_text(size)
        for shape, dumped in zip(SHAPES, (dumps or [])[1:]):
            Path(workdir, shape).write_text(dumped)
    last = args.services - 1
    vip = f"10.{96 + last // 65536}.{(last // 256) % 256}.{last % 256}"  # the last service:
    name = f"ns-{last % 50}/svc-{last:05d}"  # the worst case for KUBE-SERVICES
    print(machine())
    print(f"dump: {args.services} services x {args.endpoints} endpoints, {form}, "
          f"{len(text.splitlines())} lines, {len(text) / 1e6:.1f} MB ({how})")
    del text

    cases = {
        "read+split": python(f"open({path!r}).read().splitlines()"),
        "trace --to": cli("trace", "--to", f"{vip}:80", "--rules-file", path),
        "trace NS/NAME": cli("trace", name, "--rules-file", path),
        "rules": cli("rules", "--rules-file", path),
    }
    shape_files = {"trace (iptables -L)": ("nat-L.txt", "filter-L.txt"),
                   "trace (iptables -S)": ("nat-S.txt", "filter-S.txt")}
    for case, files in shape_files.items():
        if (args.shapes or args.reuse) and all(Path(workdir, f).is_file() for f in files):
            cases[case] = cli("trace", "--to", f"{vip}:80", *(
                a for f in files for a in ("--rules-file", os.path.join(workdir, f))))
    restore = restore_test(path)
    targets = {**TARGETS, **{case: ("trace --to", SHAPE_VS_SAVE)
                             for case in shape_files if case in cases}}
    try:
        if restore:
            cases["iptables-restore --test"] = restore[0]
        else:
            del targets["rules"]
            print("  (not root: no iptables-restore --test baseline)")
        results = run_rounds(cases, args.rounds)
    finally:
        if restore:
            subprocess.run(["ip", "netns", "del", restore[1]], check=False)
    print(f"whole processes, median of {args.rounds} interleaved rounds:")
    ok = report(results, "read+split", targets)
    rss = max(r["rss_mb"] or 0 for r in results.values())
    print(f"  {'PASS' if rss < MAX_RSS_MB else 'FAIL'}  peak RSS {rss:.0f} MB "
          f"(target under {MAX_RSS_MB} MB)")
    ok = ok and rss < MAX_RSS_MB
    if not args.no_check:
        from kubectl_clusterip.dumps import read_text
        from kubectl_clusterip.iptables.dataplane import IptablesDataplane

        ok = check_exact([IptablesDataplane.from_text(read_text(path), path)]) and ok
    if not args.keep and not args.reuse:
        shutil.rmtree(workdir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
