"""Start-up time of `kubectl clusterip --version`/`--help` and of a TAB: pip and krew archive.

Start-up is most of what a user waits for on `--help`, `--version` and every TAB, and it is
what decides between the archive formats (krew/README.md), so it is measured, not guessed:

    python bench/bench_startup.py --venv     # a clean venv with `pip install .` (needs PyPI)
    python bench/bench_startup.py -n 50 --archive dist/krew/kubectl-clusterip.pyz

Each case runs N times as a fresh process (after one warm-up run); the median is reported,
and the ratio to `python -c pass` in the same environment. "archive, first run" unpacks into
an empty cache each time. "click, no fast path" is what --help cost before launch.py answered
it from the pre-rendered text. Target (issue 12): --version and --help at most 40 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kind-my-service"
TARGET_MS = 40
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import machine  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], n: int, fresh_cache: bool = False
          ) -> list[float]:
    """Wall-clock seconds of n runs (after one warm-up run unless the cache is fresh)."""
    if not fresh_cache:
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    out = []
    for _ in range(n):
        run_env = env
        if fresh_cache:
            run_env = {**env, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="bench-cache-")}
        t = time.perf_counter()
        subprocess.run(cmd, env=run_env, capture_output=True, check=True)
        out.append(time.perf_counter() - t)
        if fresh_cache:
            shutil.rmtree(run_env["XDG_CACHE_HOME"], ignore_errors=True)
    return out


def pip_script(venv: Path | None) -> Path:
    """The console script pip wrote (not a shim in front of it: pyenv's adds ~60 ms).

    With venv, a clean virtualenv with a plain (non-editable) `pip install .` in it: the
    current environment's site-packages may hold many .pth files that slow every start.
    """
    if venv:
        again = (venv / "bin" / "kubectl-clusterip").is_file()
        if not again:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        *(["--no-deps", "--force-reinstall"] if again else []), str(ROOT)],
                       check=True)
        return venv / "bin" / "kubectl-clusterip"
    script = Path(sysconfig.get_path("scripts")) / "kubectl-clusterip"
    if not script.is_file():
        raise SystemExit(f"{script}: not found; pip install . first")
    return script


def build_archive(out: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "krew" / "build.py"), "--out", str(out)],
                   check=True, capture_output=True)
    return out / "kubectl-clusterip.pyz"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="Runs per case (default 20).")
    ap.add_argument("--archive", type=Path, help="A built zipapp (default: build one now).")
    ap.add_argument("--venv", action="store_true",
                    help="Measure pip in a fresh virtualenv (needs PyPI; slower to set up).")
    ap.add_argument("--venv-dir", type=Path,
                    help="Like --venv, in this directory, kept for the next run (which then "
                    "only reinstalls this package).")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        pyz = args.archive or build_archive(Path(tmp) / "dist")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp,
               "XDG_CACHE_HOME": str(Path(tmp) / "cache"), "LANG": "C.UTF-8"}
        pip = pip_script(args.venv_dir or (Path(tmp) / "venv" if args.venv else None))
        py = str(pip.parent / "python") if args.venv or args.venv_dir else sys.executable
        click_help = ("from kubectl_clusterip.cli import main; "
                      "main(prog_name='kubectl clusterip')")
        tab = ["trace", "--snapshot", str(EXAMPLE), "default/"]
        hook = pip.parent / "kubectl_complete-clusterip"
        cases = [
            ("python -c pass (floor)", [py, "-c", "pass"], False),
            ("pip install: --version", [str(pip), "--version"], False),
            ("pip install: --help", [str(pip), "--help"], False),
            ("pip install: trace --help", [str(pip), "trace", "--help"], False),
            ("click, no fast path: --help", [py, "-c", click_help, "--help"], False),
            ("pip install: TAB (hook)", [str(hook), *tab], False),
            ("archive: --help", [py, str(pyz), "--help"], False),
            ("archive, first run: --help", [py, str(pyz), "--help"], True),
            ("archive: TAB (hook)", [py, str(pyz), "__complete", *tab], False),
        ]
        results = {name: statistics.median(timed(cmd, env, args.n, fresh))
                   for name, cmd, fresh in cases}
        sizes = (pyz.stat().st_size, _du(Path(env["XDG_CACHE_HOME"])))
    floor = results["python -c pass (floor)"]
    where = args.venv_dir or ("fresh venv" if args.venv else sysconfig.get_path("scripts"))
    print(machine())
    print(f"{'case':32} {'median':>9} {'x python':>9}   (n={args.n}, pip: {where})")
    for name, med in results.items():
        print(f"{name:32} {med * 1000:7.0f}ms {med / floor:8.2f}x")
    print(f"zipapp: {sizes[0] / 1e6:.1f} MB; unpacked cache: {sizes[1] / 1e6:.0f} MB")
    for name in ("pip install: --version", "pip install: --help"):
        ok = results[name] * 1000 <= TARGET_MS
        print(f"{'PASS' if ok else 'FAIL'}  {name} at most {TARGET_MS} ms")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


if __name__ == "__main__":
    main()
