"""Build the krew release archive: one zipapp that runs on the user's python3, plus LICENSE.

Reproducible: the same sources and pinned wheels give the same bytes (sorted entries, fixed
timestamps, owners and modes, no gzip name/mtime), so the sha256 in plugin.yaml can be checked
by anyone who rebuilds. Why a zipapp and not a frozen binary: krew/README.md (measured).

    python krew/build.py                  # dist/krew/: archive + filled-in plugin.yaml
    python krew/build.py --update-manifest # also rewrite ./plugin.yaml (release step)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "krew" / "requirements.txt"
WHEEL_CACHE = ROOT / "build" / "krew-wheels"
OUT_DIR = ROOT / "dist" / "krew"
BIN = "kubectl-clusterip"
# A fixed time for every entry (1980-01-01, the earliest a zip can hold); SOURCE_DATE_EPOCH
# is deliberately not read: the archive's bytes depend on the sources alone.
EPOCH = 315532800
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
URI = ("https://github.com/kubectl-clusterip/kubectl-clusterip/releases/download/"
       "v{version}/kubectl-clusterip-v{version}.tar.gz")
SHEBANG = b"#!/usr/bin/env python3\n"
# The pinned wheels are resolved for this target; only their pure-Python files are kept, so
# the archive runs on any CPU and any CPython >= 3.9 (see requirements.txt for the pins).
PIP_TARGET = ["--platform", "manylinux2014_x86_64", "--python-version", "3.9",
              "--implementation", "cp", "--abi", "cp39"]
COMPILED = (".so", ".pyd", ".dylib", ".dll")
# Dead weight in the archive: tests and docs shipped inside wheels.
PRUNE = re.compile(r"^(kubernetes/(test|e2e_test)/|[^/]+\.dist-info/RECORD$|.*/__pycache__/)")

MAIN_PY = '''\
"""Entry point of the krew archive (built by krew/build.py): the kubectl-clusterip CLI.

Imports straight from a zip get no .pyc cache and take twice as long, so the first run unpacks
the archive once into ~/.cache/kubectl-clusterip/<build id>/ (like shiv) and later runs import
from there; where that cannot be written, everything still runs from the zip itself.
"""
import os
import sys

BUILD_ID = "@BUILD_ID@"
ARCHIVE = os.path.abspath(sys.argv[0])


def _unpacked():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "kubectl-clusterip")
    target = os.path.join(root, BUILD_ID)
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    import shutil
    import tempfile
    import zipfile

    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".unpack-", dir=root)
        with zipfile.ZipFile(ARCHIVE) as z:
            z.extractall(tmp)
        open(os.path.join(tmp, ".complete"), "w").close()
        try:
            os.rename(tmp, target)
        except OSError:  # another run won the race, or a stale partial copy: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        for old in os.listdir(root):  # earlier versions
            if old != BUILD_ID and not old.startswith("."):
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
        return target if os.path.isfile(os.path.join(target, ".complete")) else None
    except OSError:
        return None


if sys.version_info < (3, 9):
    sys.exit("kubectl-clusterip needs python3 >= 3.9 (this is %d.%d)" % sys.version_info[:2])
if os.environ.get("KUBECTL_CLUSTERIP_NO_UNPACK") != "1":
    _where = _unpacked()
    if _where:
        sys.path.insert(0, _where)

import kubectl_clusterip  # noqa: E402

kubectl_clusterip.ARCHIVE = ARCHIVE  # the completion shim runs this archive
if sys.argv[1:2] == ["__complete"]:
    from kubectl_clusterip.completion import main as complete

    sys.exit(complete(sys.argv[2:]))
from kubectl_clusterip.launch import main  # noqa: E402

main()
'''


def version() -> str:
    """The package version, read without importing it (the build must not need the deps)."""
    text = (ROOT / "kubectl_clusterip" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not m:
        raise SystemExit("no __version__ in kubectl_clusterip/__init__.py")
    return m.group(1)


def fetch_wheels(cache: Path) -> list[Path]:
    """Download exactly the pinned wheels (hash-checked); a warm cache makes this offline."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "--no-deps", "--only-binary=:all:", "--require-hashes", *PIP_TARGET,
           "-r", str(REQUIREMENTS), "-d", str(cache)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pip download failed:\n{r.stdout}{r.stderr}")
    wanted = pinned()
    wheels = []
    for w in sorted(cache.glob("*.whl")):
        name, ver = w.name.split("-")[:2]
        if wanted.get(_norm(name)) == ver:
            wheels.append(w)
    missing = set(wanted) - {_norm(w.name.split("-")[0]) for w in wheels}
    if missing:
        raise SystemExit(f"pinned wheels missing from {cache}: {sorted(missing)}")
    return wheels


def pinned() -> dict[str, str]:
    """requirements.txt as {normalised name: version}."""
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def payload(wheels: list[Path]) -> dict[str, bytes]:
    """Archive path -> bytes: the wheels' pure-Python files, our package, the entry point."""
    files: dict[str, bytes] = {}
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for info in z.infolist():
                n = info.filename
                if (info.is_dir() or n.endswith(COMPILED) or PRUNE.match(n)
                        or n.split("/", 1)[0].endswith(".data")):
                    continue
                files[n] = z.read(info)
    pkg = ROOT / "kubectl_clusterip"
    for f in sorted(pkg.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".typed"):
            files[PurePosixPath(f.relative_to(ROOT)).as_posix()] = f.read_bytes()
    build_id = hashlib.sha256(b"".join(n.encode() + b"\0" + files[n] for n in sorted(files)))
    files["__main__.py"] = MAIN_PY.replace("@BUILD_ID@", build_id.hexdigest()[:16]).encode()
    return files


def zipapp_bytes(files: dict[str, bytes]) -> bytes:
    """A zipapp with a python3 shebang; entries sorted, timestamps and modes fixed."""
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # unix, so the mode above is honoured everywhere
            z.writestr(info, files[name], compresslevel=9)
    return buf.getvalue()


def tar_gz_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    """A .tar.gz of (name, data, mode), in the given order, owned by root, at EPOCH."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=EPOCH, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def fill_manifest(text: str, ver: str, uri: str, sha256: str) -> str:
    """plugin.yaml with version, uri and sha256 replaced (one platform entry, by design)."""
    text = re.sub(r"(?m)^(  version: ).*$", rf"\g<1>v{ver}", text)
    text = re.sub(r"(?m)^(\s+uri: ).*$", rf"\g<1>{uri}", text)
    if sha256.isdigit():  # YAML would read an all-digit hash as a number: keep it a string
        sha256 = f'"{sha256}"'
    return re.sub(r"(?m)^(\s+sha256: ).*$", rf"\g<1>{sha256}", text)


def build(out_dir: Path = OUT_DIR, cache: Path = WHEEL_CACHE, uri: str = URI) -> dict[str, Path]:
    """Write the archive, the bare zipapp and the filled-in manifest into out_dir."""
    ver = version()
    pyz = zipapp_bytes(payload(fetch_wheels(cache)))
    archive = tar_gz_bytes([(BIN, pyz, 0o755),
                            ("LICENSE", (ROOT / "LICENSE").read_bytes(), 0o644)])
    sha = hashlib.sha256(archive).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"archive": out_dir / f"kubectl-clusterip-v{ver}.tar.gz",
             "pyz": out_dir / f"{BIN}.pyz", "manifest": out_dir / "clusterip.yaml"}
    paths["archive"].write_bytes(archive)
    paths["pyz"].write_bytes(pyz)
    paths["pyz"].chmod(0o755)
    manifest = fill_manifest((ROOT / "plugin.yaml").read_text(), ver,
                             uri.format(version=ver), sha)
    paths["manifest"].write_text(manifest)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--wheels", type=Path, default=WHEEL_CACHE, help="Wheel cache directory.")
    ap.add_argument("--uri", default=URI, help="Release URL template ({version} is filled in).")
    ap.add_argument("--update-manifest", action="store_true",
                    help="Also write the filled-in manifest to ./plugin.yaml.")
    args = ap.parse_args(argv)
    paths = build(args.out, args.wheels, args.uri)
    if args.update_manifest:
        (ROOT / "plugin.yaml").write_text(paths["manifest"].read_text())
    data = paths["archive"].read_bytes()
    print(f"{paths['archive']}  {len(data)} bytes  sha256 {hashlib.sha256(data).hexdigest()}")
    print(f"{paths['manifest']}")


if __name__ == "__main__":
    main()
