"""The console script: `--version` and `--help` answered without loading click, else the CLI.

Every `kubectl clusterip` run starts here. Python itself starts in ~20 ms; click, tabulate,
yaml and the engine would add several times that, so the answers that need none of them come
from helptext.py: click's own output, rendered ahead by `python -m kubectl_clusterip.generate`
(tests/test_launch.py keeps the two equal).
"""

from __future__ import annotations

import sys

PROG = "kubectl clusterip"
HELP_FLAGS = ("--help", "-h")
# click renders help min(terminal, 80) - 2 columns wide: helptext.py holds the 78-column form.
MIN_COLUMNS = 80


def fast_answer(args: list[str]) -> str | None:
    """What click would print for args, if it is known without click; else None."""
    if args == ["--version"]:
        from kubectl_clusterip import __version__

        return f"{PROG} {__version__}\n"
    if len(args) in (1, 2) and args[-1] in HELP_FLAGS:
        import shutil

        if shutil.get_terminal_size().columns < MIN_COLUMNS:
            return None
        from kubectl_clusterip.helptext import HELP

        text = HELP.get(args[0] if len(args) == 2 else "")
        return None if text is None else text + "\n"
    return None


def main() -> None:
    """`kubectl clusterip ARGS`: usage lines name the command as kubectl users type it."""
    answer = fast_answer(sys.argv[1:])
    if answer is not None:
        sys.stdout.write(answer)
        return
    from kubectl_clusterip.cli import main as cli

    cli(prog_name=PROG)
