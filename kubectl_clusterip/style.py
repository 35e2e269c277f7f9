"""Terminal colour for the text report: one switch (--color) and one function, style().

Colour is decided once per run (set_mode) rather than per call so the report reads the same
everywhere it is printed; `auto` colours only a terminal, and honours NO_COLOR (no-color.org:
set and non-empty means no colour) and TERM=dumb. `always` wins over NO_COLOR, as the
command line should. JSON and YAML are never styled.
"""

from __future__ import annotations

import os
import sys
from typing import IO

MODES = ("auto", "always", "never")
# Role -> SGR parameters. Roles, not colours, so render.py says what a word means.
ROLES = {
    "error": "1;31",     # an error-level finding, a broken verdict
    "warning": "33",
    "info": "36",
    "ok": "32",          # a healthy verdict
    "heading": "1",
    "dim": "2",
}
_enabled = False


def decide(mode: str, stream: IO[str] | None = None, environ: dict[str, str] | None = None
           ) -> bool:
    """Whether `mode` means colour for this stream and environment."""
    if mode not in MODES:
        raise ValueError(f"color mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode == "always"
    env = os.environ if environ is None else environ
    out = sys.stdout if stream is None else stream
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def set_mode(mode: str, stream: IO[str] | None = None) -> bool:
    """Set colour for the rest of the run; returns the decision."""
    global _enabled
    _enabled = decide(mode, stream)
    return _enabled


def click_callback(ctx: object, _param: object, value: str) -> str:
    """For `--color` on the click group: decide, and tell click.echo not to strip colour."""
    on = set_mode(value)
    # click.echo strips ANSI codes when stdout is not a terminal unless ctx.color says so.
    ctx.color = on  # type: ignore[attr-defined]
    return value


def enabled() -> bool:
    return _enabled


def style(text: str, role: str) -> str:
    """text wrapped in the role's colour when colour is on; unknown roles stay plain."""
    sgr = ROLES.get(role.lower())
    if not _enabled or not sgr or not text:
        return text
    return f"\033[{sgr}m{text}\033[0m"
