"""Progress on stderr as one line that updates in place on a terminal, and nothing else.

A long-running capture says what it waits for; once it ends (or fails) the line is wiped,
so the report or the one-line error stands alone. Not a terminal (a pipe, CI, a test) or
`-q`: no progress at all. Warnings ("warning: ...") are not progress: each is a line of its
own, always.
"""

from __future__ import annotations

import shutil
import sys
from typing import TextIO


class StatusLine:
    """A Progress callable: `line("waiting for ...")`; `close()` wipes what is shown."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False,
                 tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.live = tty and not quiet
        self.shown = False

    def __call__(self, message: str) -> None:
        if message.startswith("warning:"):
            self.clear()
            self.stream.write(message + "\n")
            self.stream.flush()
        elif self.live:
            width = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)
            text = message.replace("\n", " ")
            if len(text) > width:
                text = text[:width - 1] + "…"
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
