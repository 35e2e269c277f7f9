"""Tab completion for `kubectl clusterip` through kubectl's plugin hook (kubectl >= 1.26).

kubectl runs `kubectl_complete-clusterip WORD...` (the words after `clusterip`, the last one
being completed) and reads cobra's answer: one candidate per line, then `:<directive>`.
This runs on every TAB, so it imports neither click nor the engine nor the kubernetes client:
the command tree is a generated table (commands.py) and names come from one stdlib HTTP GET,
or from a --snapshot (sources.py). pip installs the hook as a console script; krew links only
the main binary, so there `kubectl clusterip completion` writes it (hook.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kubectl_clusterip.completion.commands import COMMANDS
from kubectl_clusterip.completion.sources import ApiSource, Lazy, SnapshotSource, Source

# cobra's ShellCompDirective bits.
ERROR, NOSPACE, NOFILE, FILTER_DIRS = 1, 2, 4, 16
ARG_KINDS = {"target": "service", "service": "service"}


def main(argv: list[str] | None = None) -> int:
    """kubectl's hook: print the candidates and the directive; never fail loudly."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cands, directive = complete(args)
    except Exception as e:  # TAB must not print a traceback into the prompt
        print(f"kubectl-clusterip completion: {e}", file=sys.stderr)
        cands, directive = [], NOFILE
    out = "".join(f"{c}\n" for c in cands) + f":{directive}\n"
    sys.stdout.write(out)
    return 0


class Words:
    """What the words before the cursor say: the command, option values, positionals."""

    def __init__(self, words: list[str]) -> None:
        self.cmd = ""
        self.values: dict[str, str] = {}
        self.positionals: list[str] = []
        self.pending: str | None = None  # an option whose value is the word being completed
        self.only_args = False
        for w in words:
            self._take(w)

    def options(self) -> dict[str, Any]:
        return COMMANDS.get(self.cmd, {}).get("options", {})

    def _take(self, w: str) -> None:
        if self.pending:
            self.values[self.pending], self.pending = w, None
        elif not self.only_args and w == "--":
            self.only_args = True
        elif not self.only_args and w.startswith("-") and w != "-":
            name, eq, val = w.partition("=")
            opts = self.options()
            if name not in opts and not w.startswith("--") and len(w) > 2:
                name, eq, val = w[:2], "=", w[2:]  # -nkube-system
            if opts.get(name, "flag") != "flag":
                if eq:
                    self.values[name] = val
                else:
                    self.pending = name
        elif not self.cmd:
            self.cmd = w if w in COMMANDS and w else "?"
        else:
            self.positionals.append(w)

    def get(self, *names: str) -> str | None:
        return next((self.values[n] for n in names if self.values.get(n)), None)


def complete(args: list[str], source: Source | None = None) -> tuple[list[str], int]:
    """Candidates and directive for the last word of args (the words after `clusterip`)."""
    words, cur = (args[:-1], args[-1]) if args else ([], "")
    st = Words(words)
    if st.cmd == "?":
        return [], NOFILE
    src = source or Lazy(lambda: choose_source(st))  # most answers need no kubeconfig
    if st.pending:
        return values(st.options()[st.pending], cur, st, src)
    if cur.startswith("-") and not st.only_args:
        name, eq, val = cur.partition("=")
        kind = st.options().get(name)
        if eq and kind not in (None, "flag"):
            cands, directive = values(kind, val, st, src)
            return [f"{name}={c}" for c in cands], directive
        return [o for o in st.options() if o.startswith(cur)], NOFILE
    if not st.cmd:
        return [f"{c}\t{spec['help']}" for c, spec in COMMANDS.items()
                if c and c.startswith(cur)], NOFILE
    args_spec = COMMANDS[st.cmd]["args"]
    if len(st.positionals) < len(args_spec):
        return values(ARG_KINDS.get(args_spec[len(st.positionals)], "value"), cur, st, src)
    return [], NOFILE


def values(kind: Any, cur: str, st: Words, src: Source) -> tuple[list[str], int]:
    """Candidates for one value of the given kind, filtered by what is typed so far."""
    if isinstance(kind, tuple):
        return [c for c in kind if c.startswith(cur)], NOFILE
    if kind == "dir":
        return [], FILTER_DIRS
    if kind == "file":
        return [], 0
    if kind in ("context", "cluster", "user"):
        return _prefixed(src.kubeconfig_names(kind + "s"), cur), NOFILE
    if kind == "namespace":
        return _prefixed(src.names("namespaces", None), cur), NOFILE
    if kind == "node":
        return _prefixed(src.names("nodes", None), cur), NOFILE
    if kind == "pod":
        return _namespaced("pods", cur, st, src, bare_in=st.get("-n", "--namespace"))
    if kind == "service":
        return _services(cur, st, src)
    return [], NOFILE


def _prefixed(names: list[str], cur: str) -> list[str]:
    return [n for n in names if n.startswith(cur)]


def _namespaced(plural: str, cur: str, st: Words, src: Source, bare_in: str | None
                ) -> tuple[list[str], int]:
    """`NS/NAME` once a slash is typed; bare names in bare_in; else `NS/` to pick from."""
    ns, slash, _ = cur.partition("/")
    if slash:
        return _prefixed([f"{ns}/{n}" for n in src.names(plural, ns)], cur), NOFILE
    cands = _prefixed(src.names(plural, bare_in or src.namespace), cur)
    if bare_in is None:
        try:  # listing namespaces is often forbidden; names in the context's still help
            cands += _prefixed([f"{n}/" for n in src.names("namespaces", None)], cur)
        except Exception as e:
            print(f"kubectl-clusterip completion: {e}", file=sys.stderr)
    return cands, NOFILE | (NOSPACE if cands and all(c.endswith("/") for c in cands) else 0)


def _services(cur: str, st: Words, src: Source) -> tuple[list[str], int]:
    """TARGET is NAMESPACE/NAME[:PORT] or NAME with -n; after a colon, the service's ports."""
    name, colon, _ = cur.rpartition(":") if ":" in cur else (cur, "", "")
    if colon:
        ns, slash, svc = name.rpartition("/")
        ns = ns if slash else (st.get("-n", "--namespace") or src.namespace)
        ports = [str(p.get("name") or p.get("port")) for p in src.service_ports(ns, svc)]
        return _prefixed([f"{name}:{p}" for p in ports], cur), NOFILE
    return _namespaced("services", cur, st, src, bare_in=st.get("-n", "--namespace"))


def choose_source(st: Words) -> Source:
    snapshot = st.get("--snapshot")
    if snapshot:
        return SnapshotSource(Path(snapshot))
    return ApiSource(st.get("--kubeconfig"), st.get("--context"), st.get("--cluster"),
                     st.get("--user"))
