"""Mutate real inputs and hold the CLI to its contract (used by tests/test_fuzz_inputs.py).

The seeds are the real dumps and snapshots in tests/data and examples/ (each made by the
real tools, see the READMEs and generate.py scripts beside them). A mutation is driven by a
`pick(n)` function, so hypothesis can shrink it (tests) and a seeded random.Random can
survey many of them quickly (`python tests/fuzzing.py --survey N`, which counts crashes
by class instead of stopping at the first; with FUZZ_SAVE=DIR each violating input is
kept there with its command line, to replay).

The contract, per input: exit code 0, 1 or 2; no traceback; at most 3 lines on stderr;
the last-resort handler never fires ("please report this"); bounded time and memory.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
EXAMPLE = ROOT / "examples" / "kind-my-service"
SECONDS = 20.0  # per example, on a shared 2-core machine (typical: well under 1 s)
PEAK_BYTES = 256 << 20  # Python allocations per example, traced by tracemalloc

Pick = Callable[[int], int]

# Values that broke parsers and walkers before: wrong types, impossible numbers, non-ASCII
# digits, huge and empty strings, syntax characters.
TOKENS = ["", "0", "-1", "65536", "99999999999999999999", "1.5", "-0.5", "2.0", "nan", "inf",
          "0x", "0xffffffffffff", "１０", "٣", "𝟘", "10.0.0.256", "10.0.0.1/33", "::::",
          "fd00::/200", "a" * 300, "{", "}", "[", "]", '"', "\\", ";", ":", ".", "-j", "-g",
          "-A", "--probability", "KUBE-SERVICES", "KUBE-SVC-XXXXXXXXXXXXXXXX", "goto", "jump",
          "numgen", "random", "mod", "99999999999", "vmap", "@", "map", "comment", "tcp",
          "udp", "dnat", "to", "ip", "ip6", "elements", "=", "0.0.0.0", "::", "-m", "statistic",
          "--mode", "nth", "--every", "masquerade", "1-0", "65535-1", "ffffffff/1"]
VALUES: list[Any] = [None, True, False, 0, -1, 65536, 2 ** 70, 1.5, "", "x", "10.0.0.1",
                     "fd00::1", "１０.0.0.1", [], {}, [1], {"a": 1}, ["x"], "a" * 200,
                     {"name": 1}, [[[[[[[[[[[]]]]]]]]]]]]


@dataclass
class Seed:
    """A real input: files written into one directory, and the commands that read it."""

    name: str
    files: dict[str, str]  # relative path -> text
    mutable: tuple[str, ...]  # which files mutations touch
    commands: tuple[tuple[str, ...], ...]  # {dir} is the directory, {f} a file

    def args(self, root: Path, index: int) -> list[str]:
        return [a.format(dir=root, **{"f" + str(i): root / f for i, f in enumerate(self.files)})
                for a in self.commands[index % len(self.commands)]]


def _read(*parts: str | Path) -> str:
    return Path(*parts).read_text()


def dump_seeds() -> dict[str, Seed]:
    """Rule dumps by parser (iptables, nft text, nft JSON, IPVS with its iptables and ipset)."""
    ex = EXAMPLE / "nodes" / "kind-worker" / "iptables-save.txt"
    ipt = ("rules", "--rules-file", "{f0}", "-o", "json")
    seeds = {
        "iptables": Seed("iptables", {"iptables-save.txt": _read(ex)}, ("iptables-save.txt",),
                         (ipt, ("trace", "--to", "10.96.0.10:53", "--protocol", "udp",
                                "--rules-file", "{f0}"),
                          ("trace", "default/my-service", "--rules-file", "{f0}", "-o", "json"))),
        "iptables-dualstack": Seed(
            "iptables-dualstack",
            {n: _read(DATA / "dualstack" / n) for n in ("iptables-save.txt", "ip6tables-save.txt")},
            ("iptables-save.txt", "ip6tables-save.txt"),
            (("rules", "--rules-file", "{f0}", "--rules-file", "{f1}", "-o", "yaml"),
             ("trace", "--to", "[fd00:10:96::a]:53", "--protocol", "udp", "--rules-file", "{f0}",
              "--rules-file", "{f1}"))),
        "nft-text": Seed("nft-text", {"nft.txt": _read(DATA / "nftables" / "nft-ruleset.txt")},
                         ("nft.txt",),
                         (("rules", "--rules-file", "{f0}"),
                          ("trace", "shop/web", "--rules-file", "{f0}", "-o", "json"))),
        "nft-json": Seed("nft-json", {"nft.json": _read(DATA / "nftables" / "nft-ruleset.json")},
                         ("nft.json",),
                         (("rules", "--rules-file", "{f0}", "-o", "json"),
                          ("trace", "--to", "10.96.120.7:80", "--rules-file", "{f0}"))),
        "ipvs": Seed("ipvs", {n: _read(DATA / "ipvs" / n) for n in (
            "ipvsadm-save.txt", "iptables-save.txt", "ipset-save.txt")},
            ("ipvsadm-save.txt", "iptables-save.txt", "ipset-save.txt"),
            (("rules", "--rules-file", "{f0}", "--rules-file", "{f1}", "--rules-file", "{f2}"),
             ("trace", "--to", "10.96.0.10:53", "--rules-file", "{f0}", "--rules-file", "{f1}",
              "--rules-file", "{f2}", "-o", "json"))),
        "ipvs-list": Seed("ipvs-list", {n: _read(DATA / "ipvs" / n) for n in (
            "ipvsadm-Ln.txt", "ipset-list.txt")}, ("ipvsadm-Ln.txt", "ipset-list.txt"),
            (("rules", "--rules-file", "{f0}", "--rules-file", "{f1}", "-o", "wide"),)),
    }
    return seeds


def snapshot_seed(case: str) -> Seed:
    """A snapshot directory: objects.yaml, snapshot.yaml and the node's files."""
    root = EXAMPLE if case == "example" else DATA / "snapshots" / case
    files = {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
             if p.is_file()}
    target = "default/my-service" if case == "example" else "shop/web"
    return Seed(case, files, tuple(files), (
        ("trace", target, "--snapshot", "{dir}"),
        ("trace", target, "--snapshot", "{dir}", "-o", "json"),
        ("rules", "--snapshot", "{dir}", "-o", "wide")))


SNAPSHOT_CASES = ("example", "healthy", "session-affinity", "stale-rules", "topology",
                  "no-kube-proxy", "cilium")

KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "kind-kind", "preferences": {},
    "clusters": [{"name": "kind-kind", "cluster": {
        "server": "https://127.0.0.1:39963", "certificate-authority-data": "",
        "tls-server-name": "kubernetes"}}],
    "contexts": [{"name": "kind-kind", "context": {"cluster": "kind-kind",
                                                   "user": "kind-kind", "namespace": "shop"}}],
    "users": [{"name": "kind-kind", "user": {"token": "abc.def"}}],
}


# -- mutations -------------------------------------------------------------------------
def mutate_text(text: str, pick: Pick) -> str:
    """One line-level edit of a text dump."""
    lines = text.split("\n")
    i = pick(len(lines))
    op = pick(8)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[pick(len(lines))])
    elif op == 2:
        j = pick(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == 3 or op == 4:  # replace one token of the line
        words = lines[i].split(" ")
        words[pick(len(words))] = TOKENS[pick(len(TOKENS))]
        lines[i] = " ".join(words)
    elif op == 5:
        at = pick(len(lines[i]) + 1)
        lines[i] = lines[i][:at] + TOKENS[pick(len(TOKENS))] + lines[i][at:]
    elif op == 6:
        return text[:pick(len(text) + 1)]
    else:
        lines[i:i + 1] = [lines[i]] * (1 + pick(200))
    return "\n".join(lines)


def _paths(doc: Any, limit: int = 5000) -> list[tuple[Any, Any]]:
    """(container, key) of every value inside `doc`, breadth first, at most `limit`."""
    out: list[tuple[Any, Any]] = []
    todo = [doc] if isinstance(doc, (dict, list)) else []
    while todo and len(out) < limit:
        node = todo.pop(0)
        keys = list(node) if isinstance(node, dict) else range(len(node))
        for k in keys:
            out.append((node, k))
            if isinstance(node[k], (dict, list)):
                todo.append(node[k])
    return out


def mutate_tree(doc: Any, pick: Pick) -> Any:
    """One structural edit of decoded JSON/YAML: replace, delete or duplicate a value."""
    doc = copy.deepcopy(doc)
    paths = _paths(doc)
    if not paths:
        return VALUES[pick(len(VALUES))]
    node, key = paths[pick(len(paths))]
    op = pick(4)
    if op <= 1:
        node[key] = copy.deepcopy(VALUES[pick(len(VALUES))])
    elif op == 2:
        del node[key]
    elif isinstance(node, list):
        node.insert(key, copy.deepcopy(node[key]))
    else:
        node[key] = [node[key], node[key]]
    return doc


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def mutate_file(name: str, text: str, pick: Pick) -> str:
    """A structural edit for JSON and YAML files (most of the time), else a textual one."""
    if name.endswith((".json", ".yaml")) and pick(4):
        try:
            if name.endswith(".json") and text.lstrip().startswith("{\"nftables\""):
                return json.dumps(mutate_tree(json.loads(text), pick), separators=(",", ":"))
            if name.endswith(".json"):
                return json.dumps(mutate_tree(json.loads(text), pick), indent=1)
            return yaml.dump(mutate_tree(yaml.safe_load(text), pick), Dumper=_NoAliases,
                             sort_keys=False)
        except (ValueError, yaml.YAMLError):  # already broken by an earlier edit: edit the text
            pass
    return mutate_text(text, pick)


def mutated(seed: Seed, pick: Pick) -> dict[str, str]:
    files = dict(seed.files)
    for _ in range(1 + pick(3)):
        name = seed.mutable[pick(len(seed.mutable))]
        files[name] = mutate_file(name, files[name], pick)
    return files


# -- running and judging -------------------------------------------------------------------
@dataclass
class Outcome:
    exit_code: int | None
    stdout: str
    stderr: str
    exception: BaseException | None
    seconds: float
    peak: int

    def violations(self) -> list[str]:
        """What broke the contract, each as a short class name (empty: the contract holds)."""
        out = []
        if isinstance(self.exception, TimeoutError):
            out.append("hang")
        elif self.exception is not None and not isinstance(self.exception, SystemExit):
            tb = self.exception.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = (f"{Path(tb.tb_frame.f_code.co_filename).name}:"
                     f"{tb.tb_frame.f_code.co_name}" if tb else "?")
            out.append(f"{type(self.exception).__name__} in {where}")
        if self.exit_code not in (0, 1, 2):
            out.append(f"exit code {self.exit_code}")
        if "Traceback" in self.stdout + self.stderr:
            out.append("traceback printed")
        if "please report this" in self.stderr:
            out.append("last-resort handler: " + self.stderr.strip().splitlines()[0][:100])
        if len([line for line in self.stderr.splitlines() if line.strip()]) > 3:
            out.append("more than 3 stderr lines")
        if self.seconds > SECONDS:
            out.append("slow")
        if self.peak > PEAK_BYTES:
            out.append("memory")
        return out


def run_cli(args: list[str], seconds: float = SECONDS) -> Outcome:
    """The CLI in-process (click's runner), with an alarm against hangs and traced memory."""
    from click.testing import CliRunner

    from kubectl_clusterip.cli import main

    def expired(*_):
        raise TimeoutError
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(seconds * 3))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        r = CliRunner().invoke(main, args, catch_exceptions=True)
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(r.exit_code, r.stdout, r.stderr, r.exception, elapsed, peak)


def run_seed(seed: Seed, files: dict[str, str], command: int) -> Outcome:
    tmp = Path(tempfile.mkdtemp(prefix="kc-fuzz-"))
    try:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, errors="surrogatepass")
        return run_cli(seed.args(tmp, command))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def kubeconfig_outcome(doc: Any) -> Outcome:
    """Load a (mutated) kubeconfig as the live commands do, without talking to any server."""
    from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags, client_configuration, load
    from kubectl_clusterip.model import ClusterIPError

    tmp = Path(tempfile.mkdtemp(prefix="kc-fuzz-"))
    t0 = time.perf_counter()
    err: BaseException | None = None
    stderr = ""
    try:
        (tmp / "config").write_text(yaml.dump(doc, Dumper=_NoAliases))
        client_configuration(load(ConnectionFlags(kubeconfig=str(tmp / "config")), {}))
    except ClusterIPError as e:
        stderr, err = f"error: {e}\n", SystemExit(2)
    except Exception as e:  # the very thing under test
        err = e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Outcome(2 if stderr else 0, "", stderr, err, time.perf_counter() - t0, 0)


def survey(n: int, seed: int = 1) -> dict[str, int]:
    """Run n random mutations per seed and count contract violations by class."""
    import random
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    seeds = list(dump_seeds().values()) + [snapshot_seed(c) for c in SNAPSHOT_CASES]
    total = 0
    for s in seeds:
        for _ in range(n):
            files = mutated(s, rng.randrange)
            command = rng.randrange(len(s.commands))
            out = run_seed(s, files, command)
            total += 1
            if out.violations() and os.environ.get("FUZZ_SAVE"):  # keep the input to replay
                keep = Path(os.environ["FUZZ_SAVE"]) / f"{s.name}-{total}"
                for rel, text in files.items():
                    (keep / rel).parent.mkdir(parents=True, exist_ok=True)
                    (keep / rel).write_text(text, errors="surrogatepass")
                (keep / "ARGS").write_text(" ".join(s.args(keep, command)) + "\n")
            for v in out.violations():
                key = f"{s.name.split('-')[0] if s.name in dump_seeds() else 'snapshot'}: {v}"
                counts[key] = counts.get(key, 0) + 1
    for _ in range(n):
        total += 1
        for v in kubeconfig_outcome(mutate_tree(KUBECONFIG, rng.randrange)).violations():
            counts[f"kubeconfig: {v}"] = counts.get(f"kubeconfig: {v}", 0) + 1
    counts["(inputs run)"] = total
    return counts


if __name__ == "__main__":
    if sys.argv[1:2] == ["--survey"]:
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
        os.environ.setdefault("NO_COLOR", "1")
        result = survey(int(sys.argv[2]) if len(sys.argv) > 2 else 100)
        for k, v in sorted(result.items(), key=lambda kv: -kv[1]):
            print(f"{v:6d}  {k}")
    else:
        print(__doc__)
