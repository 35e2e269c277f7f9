"""The console script answers --version and --help without click, and exactly as click would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubectl_clusterip import helptext
from kubectl_clusterip.cli import main as cli_main
from kubectl_clusterip.generate import render_help, render_help_module
from kubectl_clusterip.launch import MIN_COLUMNS, PROG, fast_answer

FAST = "from kubectl_clusterip.launch import main; main()"
CLICK = f"from kubectl_clusterip.cli import main; main(prog_name={PROG!r})"
HEAVY = ("click", "yaml", "tabulate", "kubernetes", "dns", "importlib.metadata")


def run(code: str, args: list[str], columns: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_help_table_is_up_to_date() -> None:
    with open(helptext.__file__) as f:
        assert f.read() == render_help_module(render_help(cli_main, PROG, MIN_COLUMNS - 2)), (
            "the CLI changed: run `python -m kubectl_clusterip.generate`")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["-h"], ["trace", "--help"],
                                  ["rules", "-h"], ["capture", "--help"],
                                  ["completion", "--help"]])
@pytest.mark.parametrize("columns", [80, 200, 60])
def test_fast_path_prints_what_click_prints(args: list[str], columns: int) -> None:
    fast, slow = run(FAST, args, columns), run(CLICK, args, columns)
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr) == (0, "")
    assert fast.stdout == slow.stdout


def test_narrow_terminals_and_other_words_go_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(MIN_COLUMNS - 1))
    assert fast_answer(["--help"]) is None and fast_answer(["--version"]) is not None
    monkeypatch.setenv("COLUMNS", str(MIN_COLUMNS))
    for args in ([], ["trace"], ["--color", "never", "--help"], ["nope", "--help"],
                 ["--version", "--help"], ["trace", "x", "--help"]):
        assert fast_answer(args) is None, args


def test_fast_path_loads_nothing_heavy() -> None:
    code = ("import sys; from kubectl_clusterip.launch import main; main(); "
            f"print([m for m in sys.modules if m.startswith({HEAVY!r}) "
            "or m.startswith('kubectl_clusterip.')], file=sys.stderr)")
    for args, loaded in ((["--version"], ["kubectl_clusterip.launch"]),
                         (["--help"], ["kubectl_clusterip.launch", "kubectl_clusterip.helptext"]),
                         (["trace", "-h"], ["kubectl_clusterip.launch",
                                            "kubectl_clusterip.helptext"])):
        r = run(code, args, 100)
        assert r.stdout.startswith(("Usage: ", PROG)) and r.stderr == f"{loaded}\n", r.stderr


# -- the commands load only what they use --------------------------------------------------------
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "kind-my-service")
DUMP = os.path.join(EXAMPLE, "nodes", "kind-worker", "iptables-save.txt")
LIVE = ("kubernetes", "urllib3", "dns", "kubectl_clusterip.cluster.", "kubectl_clusterip.completion")
MODES = ("kubectl_clusterip.nftables", "kubectl_clusterip.ipvs", "kubectl_clusterip.cilium.dataplane",
         "kubectl_clusterip.cilium.parse")


@pytest.mark.parametrize("args,unused", [
    (["trace", "--to", "10.96.144.131:80", "--rules-file", DUMP, "-o", "json"],
     ("yaml", "tabulate", "importlib.metadata", *LIVE, *MODES)),
    (["trace", "default/my-service", "--snapshot", EXAMPLE, "-o", "json"],
     ("tabulate", "importlib.metadata", *LIVE, *MODES)),
    (["rules", "--rules-file", DUMP], ("yaml", *LIVE, *MODES)),
])
def test_commands_import_only_what_they_use(args: list[str], unused: tuple[str, ...]) -> None:
    code = ("import atexit, sys; atexit.register(lambda: print(sorted(sys.modules), "
            "file=sys.stderr)); " + FAST)
    r = run(code, args, 100)
    assert r.returncode in (0, 1), r.stderr
    loaded = [m for m in eval(r.stderr.splitlines()[-1]) if m.startswith(unused)]
    assert loaded == [], loaded
