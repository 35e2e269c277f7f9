"""Progress is one updating line on a terminal, nothing elsewhere; warnings always a line."""

from __future__ import annotations

import io

from kubectl_clusterip.statusline import StatusLine


def test_a_terminal_sees_one_line_rewritten_then_wiped():
    out = io.StringIO()
    with StatusLine(out, tty=True) as line:
        line("creating debug pod")
        line("debug pod: ContainerCreating")
    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\r\x1b[K") == 3 and text.endswith("\r\x1b[K")  # two shown, one wipe


def test_a_warning_is_a_line_of_its_own_between_updates():
    out = io.StringIO()
    with StatusLine(out, tty=True) as line:
        line("waiting")
        line("warning: DNS not checked")
    assert out.getvalue() == "\r\x1b[Kwaiting\r\x1b[Kwarning: DNS not checked\n"


def test_not_a_terminal_or_quiet_shows_no_progress():
    for kw in ({"tty": False}, {"tty": True, "quiet": True}):
        out = io.StringIO()
        with StatusLine(out, **kw) as line:
            line("creating debug pod")
            line("warning: kept")
        assert out.getvalue() == "warning: kept\n"


def test_a_long_message_is_cut_to_the_terminal(monkeypatch):
    import os
    monkeypatch.setattr("shutil.get_terminal_size", lambda d: os.terminal_size((40, 10)))
    out = io.StringIO()
    StatusLine(out, tty=True)("x" * 100)
    assert len(out.getvalue()) == len("\r\x1b[K") + 39
