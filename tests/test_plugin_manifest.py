"""plugin.yaml against krew's own rules, so krew-index review and `krew install` accept it.

The rules are krew's: internal/index/validation/validate.go (structure, names, sha256,
selectors, files) and cmd/validate-krew-manifest (semver with a v, line lengths, every
platform matching a supported os/arch, no os/arch matched twice, a LICENSE installed).
validate() is checked against broken manifests too, so a pass means something.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load_build():
    """krew/build.py under its own name (a plain `import build` could be PyPA's build)."""
    if "krew_build" not in sys.modules:
        spec = importlib.util.spec_from_file_location("krew_build", ROOT / "krew" / "build.py")
        assert spec and spec.loader
        sys.modules["krew_build"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["krew_build"])
    return sys.modules["krew_build"]


build = _load_build()

API_VERSION = "krew.googlecontainertools.github.com/v1alpha2"
WINDOWS_FORBIDDEN = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
# krew's list of the <os, arch> pairs it supports (validate-krew-manifest's allPlatforms).
PLATFORMS = [("windows", "386"), ("windows", "amd64"), ("windows", "arm64"), ("linux", "386"),
             ("linux", "amd64"), ("linux", "arm"), ("linux", "arm64"), ("linux", "ppc64le"),
             ("darwin", "386"), ("darwin", "amd64"), ("darwin", "arm64")]
LICENSE_NAMES = {"license", "license.txt", "license.md", "licenses", "licenses.txt",
                 "licenses.md", "copying", "copying.txt"}
# semver 2.0.0 (what k8s.io/apimachinery ParseSemantic accepts), after krew's leading "v".
SEMVER = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$")


def selector_matches(sel: dict, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics: matchLabels AND every matchExpression."""
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for e in sel.get("matchExpressions") or []:
        op, val, vals = e["operator"], labels.get(e["key"]), e.get("values") or []
        ok = {"In": val in vals, "NotIn": val not in vals, "Exists": val is not None,
              "DoesNotExist": val is None}[op]
        if not ok:
            return False
    return True


def line_lengths_ok(text: str, limit: int) -> bool:
    """krew's validateLineLength: long lines are allowed only if they are one word."""
    return all(len(line) <= limit or " " not in line.strip() for line in text.split("\n"))


def validate(p: dict, name: str = "clusterip", root: Path = ROOT) -> list[str]:
    """Every krew rule plugin.yaml breaks, as messages (empty: krew accepts it)."""
    errs: list[str] = []
    if p.get("apiVersion") != API_VERSION:
        errs.append(f"apiVersion must be {API_VERSION}")
    if p.get("kind") != "Plugin":
        errs.append("kind must be Plugin")
    meta_name = (p.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[\w-]+", name) or name.upper() in WINDOWS_FORBIDDEN:
        errs.append(f"unsafe plugin name {name!r}")
    if meta_name != name:
        errs.append(f"metadata.name {meta_name!r} != {name!r}")
    spec = p.get("spec") or {}
    short = spec.get("shortDescription") or ""
    if not short:
        errs.append("shortDescription is empty")
    if "\n" in short or "\r" in short:
        errs.append("shortDescription has a line break")
    if len(short) > 70:
        errs.append("shortDescription is longer than 70")
    if not SEMVER.match(str(spec.get("version", ""))):
        errs.append(f"version {spec.get('version')!r} is not v-prefixed semver")
    for field in ("description", "caveats"):
        if not line_lengths_ok(spec.get(field) or "", 80):
            errs.append(f"{field} has a line longer than 80")
    platforms = spec.get("platforms") or []
    if not platforms:
        errs.append("no platforms")
    for i, pl in enumerate(platforms):
        errs += [f"platforms[{i}]: {e}" for e in validate_platform(pl, root)]
    for os_, arch in PLATFORMS:
        hits = [i for i, pl in enumerate(platforms)
                if selector_matches(pl.get("selector") or {}, {"os": os_, "arch": arch})]
        if len(hits) > 1:
            errs.append(f"platforms {hits} overlap on {os_}/{arch}")
    return errs


def validate_platform(pl: dict, root: Path) -> list[str]:
    errs = []
    if not pl.get("uri"):
        errs.append("uri is not set")
    if not re.fullmatch(r"[a-f0-9]{64}", str(pl.get("sha256", ""))):
        errs.append("sha256 is not 64 lowercase hex digits")
    if not pl.get("bin"):
        errs.append("bin is not set")
    files = pl.get("files")
    if files is not None:
        if not files:
            errs.append("files is empty (leave it out or list something)")
        for op in files:
            if not op.get("from") or not op.get("to"):
                errs.append("files entry needs from and to")
            elif str(PurePosixPath(op["to"])) != op["to"]:
                errs.append(f"files to {op['to']!r} is not a clean path")
        installed = [PurePosixPath(op.get("from", "")).name.lower() for op in files]
        if not LICENSE_NAMES & set(installed):
            errs.append("no LICENSE among the installed files")
    sel = pl.get("selector")
    if not sel:
        errs.append("selector is missing or empty")
    else:
        keys = list(sel.get("matchLabels") or {}) + [e.get("key")
                                                     for e in sel.get("matchExpressions") or []]
        if any(k not in ("os", "arch") for k in keys):
            errs.append(f"selector keys {keys}: only os and arch")
        if sel.get("matchLabels") == {} or sel.get("matchExpressions") == []:
            errs.append("matchLabels/matchExpressions given but empty")
        if not any(selector_matches(sel, {"os": o, "arch": a}) for o, a in PLATFORMS):
            errs.append("selector matches no platform krew supports")
    return errs


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((ROOT / "plugin.yaml").read_text())


def test_plugin_yaml_passes_krews_rules(manifest: dict) -> None:
    assert validate(manifest) == []


def test_version_is_the_packages(manifest: dict) -> None:
    assert manifest["spec"]["version"] == f"v{build.version()}"


def test_license_is_shipped_and_apache(manifest: dict) -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    for pl in manifest["spec"]["platforms"]:
        assert {"from": "LICENSE", "to": "."} in pl["files"]


def test_caveats_say_what_the_machine_needs(manifest: dict) -> None:
    caveats = manifest["spec"]["caveats"]
    assert "python3" in caveats and "3.9" in caveats
    assert "kubectl clusterip completion" in caveats  # krew does not link the hook


def test_claims_only_platforms_a_zipapp_runs_on(manifest: dict) -> None:
    """python3 + a shebang: Linux and macOS, any CPU; not Windows (no shebangs there)."""
    sel = manifest["spec"]["platforms"][0]["selector"]
    claimed = {(o, a) for o, a in PLATFORMS if selector_matches(sel, {"os": o, "arch": a})}
    assert claimed == {(o, a) for o, a in PLATFORMS if o in ("linux", "darwin")}


def test_filled_manifest_still_valid(manifest: dict) -> None:
    text = build.fill_manifest((ROOT / "plugin.yaml").read_text(), "1.2.3-rc.1",
                               "https://example.test/a.tar.gz", "ab" * 32)
    filled = yaml.safe_load(text)
    assert validate(filled) == []
    assert filled["spec"]["version"] == "v1.2.3-rc.1"
    assert filled["spec"]["platforms"][0]["sha256"] == "ab" * 32
    assert filled["spec"]["platforms"][0]["uri"] == "https://example.test/a.tar.gz"


def _broken(manifest: dict, path: str, value: object) -> dict:
    m = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    node = m
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return m


@pytest.mark.parametrize("path,value,message", [
    ("spec.version", "0.1.0", "v-prefixed"),
    ("spec.version", "v0.1", "v-prefixed"),
    ("spec.platforms.0.sha256", "AB" * 32, "lowercase"),
    ("spec.platforms.0.sha256", "ab" * 31, "lowercase"),
    ("spec.shortDescription", "two\nlines", "line break"),
    ("spec.shortDescription", "x" * 71, "longer than 70"),
    ("spec.caveats", "a line " * 12 + "\n", "caveats has a line longer than 80"),
    ("spec.description", "word " * 17, "description has a line longer than 80"),
    ("spec.platforms.0.bin", "", "bin is not set"),
    ("spec.platforms.0.files", [{"from": "kubectl-clusterip", "to": "."}], "no LICENSE"),
    ("spec.platforms.0.files", [], "files is empty"),
    ("spec.platforms.0.selector", {"matchLabels": {"os": "plan9"}}, "matches no platform"),
    ("spec.platforms.0.selector", {"matchLabels": {"distro": "debian"}}, "only os and arch"),
    ("metadata.name", "cluster-ip", "metadata.name"),
])
def test_validator_rejects(manifest: dict, path: str, value: object, message: str) -> None:
    assert any(message in e for e in validate(_broken(manifest, path, value))), message


def test_validator_rejects_overlapping_platforms(manifest: dict) -> None:
    m = copy.deepcopy(manifest)
    extra = copy.deepcopy(m["spec"]["platforms"][0])
    extra["selector"] = {"matchLabels": {"os": "linux", "arch": "arm64"}}
    m["spec"]["platforms"].append(extra)
    assert any("overlap on linux/arm64" in e for e in validate(m))
