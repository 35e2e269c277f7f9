"""The completion table (commands.py) regenerated from the click commands.

A development step, not a TAB path: it imports click and the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Option name -> what its value is; everything else is read from the click option (below).
NAMED_KINDS = {"-n": "namespace", "--namespace": "namespace", "--node": "node",
               "--from": "pod", "--context": "context", "--cluster": "cluster",
               "--user": "user"}


def spec_from_click(group: Any) -> dict[str, dict[str, Any]]:
    """COMMANDS as the click group defines it: options, what their values are, arguments."""
    import click

    def options(cmd: click.Command) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ctx = click.Context(cmd, help_option_names=group.context_settings.get(
            "help_option_names", ["--help"]))
        for p in cmd.get_params(ctx):
            if not isinstance(p, click.Option):
                continue
            for name in p.opts + p.secondary_opts:
                out[name] = _kind(p, name)
        return dict(sorted(out.items()))

    def first_line(cmd: click.Command) -> str:
        """The help's first line, short enough for a completion menu (and this file)."""
        line = (cmd.help or "").strip().splitlines()[0].rstrip(".") if cmd.help else ""
        return line if len(line) <= 72 else line[:72].rsplit(" ", 1)[0] + "..."

    spec: dict[str, dict[str, Any]] = {"": {"help": "", "options": options(group), "args": []}}
    for name in sorted(group.commands):
        cmd = group.commands[name]
        spec[name] = {"help": first_line(cmd), "options": options(cmd),
                      "args": [p.name for p in cmd.params if isinstance(p, click.Argument)]}
    return spec


def _kind(p: Any, name: str) -> Any:
    import click

    if p.is_flag or p.count:
        return "flag"
    if name in NAMED_KINDS:
        return NAMED_KINDS[name]
    if isinstance(p.type, click.Choice):
        return tuple(p.type.choices)
    metavar = (p.metavar or "").upper()
    if metavar == "DIR" or (isinstance(p.type, click.Path) and not p.type.file_okay):
        return "dir"
    if metavar in ("FILE", "DUMP") or isinstance(p.type, (click.Path, click.File)):
        return "file"
    return "value"


def render_spec(spec: dict[str, dict[str, Any]]) -> str:
    """The generated block: one option per line, so a new flag is a one-line diff."""
    lines = ["COMMANDS: dict[str, dict[str, Any]] = {"]
    for name, cmd in spec.items():
        lines += [f"    {name!r}: {{", f"        'help': {cmd['help']!r},",
                  f"        'args': {cmd['args']!r},", "        'options': {"]
        lines += [f"            {opt!r}: {kind!r}," for opt, kind in cmd["options"].items()]
        lines += ["        },", "    },"]
    return "\n".join([*lines, "}"])


def regenerate() -> bool:
    """Rewrite the generated block from the click commands; True if it changed."""
    from kubectl_clusterip.cli import main as group

    path = Path(__file__).with_name("commands.py")
    text = path.read_text()
    begin = text.index("# BEGIN GENERATED")
    start = text.index("\n", begin) + 1
    end = text.index("# END GENERATED")
    new = text[:start] + render_spec(spec_from_click(group)) + "\n" + text[end:]
    if new != text:
        path.write_text(new)
    return new != text
