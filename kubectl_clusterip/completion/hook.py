"""The kubectl_complete-clusterip hook: the script `kubectl clusterip completion` writes.

pip and pipx install the hook as a console script; krew links only the plugin binary, so there
the `completion` command writes a two-line shell script that runs the archive's `__complete`.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

HOOK = "kubectl_complete-clusterip"
MARK = "# Written by `kubectl clusterip completion`"


def hook_script() -> str:
    """The kubectl_complete-clusterip script for this installation (archive or pip)."""
    import kubectl_clusterip

    archive = getattr(kubectl_clusterip, "ARCHIVE", None)  # set by the krew archive's main
    if archive:
        run = f'exec {shlex.quote(archive)} __complete "$@"'
    else:
        code = ("import sys; from kubectl_clusterip.completion import main; "
                "sys.exit(main(sys.argv[1:]))")
        run = f'exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} "$@"'
    return ("#!/bin/sh\n# kubectl (>= 1.26) runs this to complete `kubectl clusterip` "
            "arguments.\n" + MARK + "; run it again after moving the plugin.\n" + run + "\n")


def default_dir() -> Path:
    """Beside the running kubectl-clusterip: kubectl found it on PATH, so the hook is too."""
    return Path(os.path.abspath(sys.argv[0])).parent


def install_hook(directory: Path) -> Path:
    """Write the hook (atomically, executable) into directory; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / HOOK
    tmp = directory / f".{HOOK}.tmp"
    tmp.write_text(hook_script())
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


def on_path(directory: Path) -> bool:
    dirs = [Path(p).resolve() for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return directory.resolve() in dirs


def packaged_hook(directory: Path) -> Path | None:
    """The hook pip or pipx installed there as a console script: nothing to write then."""
    path = directory / HOOK
    try:
        text = path.read_text(errors="replace")[:4096]
    except OSError:
        return None
    return path if "kubectl_clusterip.completion" in text and MARK not in text else None
