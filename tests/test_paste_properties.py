"""Property: what a paste wraps around iptables rules never changes their trace.

Prompts (with the command that printed the rules), markdown fences with prose around them,
CRLF line ends, trailing blanks, `...` after the rules, and splitting the tables across
files or putting them in one file: any mix of these, on iptables-save, `iptables -S` or
`iptables -L` output as the kernel printed it (tests/data/iptables-shapes), traces exactly
like the clean iptables-save. CI runs a fixed, derandomised sample; for a longer local run:

    HYPOTHESIS_PROFILE=long python3 -m pytest tests/test_paste_properties.py
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubectl_clusterip.dumps import build_dataplanes
from kubectl_clusterip.model import Packet

settings.register_profile("ci", derandomize=True, max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])

DATA = Path(__file__).parent / "data" / "iptables-shapes"
SAVE = (DATA / "iptables-save.txt").read_text()
_SPLIT = SAVE.index("# Generated", 10)
# form -> pieces as (the command that prints it, its text)
FORMS = {
    "save": [("iptables-save", SAVE)],
    "save per table": [("iptables-save -t filter", SAVE[:_SPLIT]),
                       ("iptables-save -t nat", SAVE[_SPLIT:])],
    "-S": [("iptables -t nat -S", (DATA / "iptables-t-nat-S.txt").read_text()),
           ("iptables -S", (DATA / "iptables-S.txt").read_text())],
    "-L": [("iptables -t nat -L -n -v", (DATA / "iptables-t-nat-L-n-v.txt").read_text()),
           ("iptables -L -n --line-numbers",
            (DATA / "iptables-L-n-line-numbers.txt").read_text())],
    "-L -x": [("iptables -t nat -L -n -v -x --line-numbers",
               (DATA / "iptables-t-nat-L-n-v-x-line-numbers.txt").read_text()),
              ("iptables -L -n --line-numbers",
               (DATA / "iptables-L-n-line-numbers.txt").read_text())],
}
PROMPTS = ["$ {}", "$ sudo {}", "# {}", "root@node-1:~# {}", "[root@kube-node2 ~]# {}",
           "/ # {}", "ubuntu@ip-10-0-1-5:~$ sudo {}"]
REQUESTS = [("10.244.1.5", "10.96.0.20"), ("172.18.0.9", "10.96.0.20"),
            ("10.244.1.5", "10.96.0.21"), ("10.244.1.5", "10.96.0.24"),
            ("10.244.1.6", "10.96.0.20")]


def outcomes(dumps: list[tuple[str, str]]) -> list[tuple]:
    (dp,) = build_dataplanes(dumps)
    out = []
    for src, dst in REQUESTS:
        t = dp.trace(Packet(src, dst, 80))
        out.append((t.verdict, t.service, sorted(
            (c.ip, c.port, round(c.probability, 9), c.masquerade) for c in t.candidates)))
    return out


EXPECTED = outcomes([("save.txt", SAVE)])


@st.composite
def dressed(draw, command: str, text: str, fence: bool) -> str:
    """One piece of a paste, as someone might have pasted it. In a markdown paste the code
    blocks are the dumps and the rest is prose, so pieces are fenced all or none."""
    if draw(st.booleans()):
        text = draw(st.sampled_from(PROMPTS)).format(command) + "\n" + text
    if draw(st.booleans()):
        text = text.replace("\n", " " * draw(st.integers(1, 3)) + "\n")
    if draw(st.booleans()):
        text += "...\n"
    if fence:
        lang = draw(st.sampled_from(["", "console", "shell", "text"]))
        prose = draw(st.sampled_from(["", "On the node:\n\n", "Output of the command:\n"]))
        text = f"{prose}```{lang}\n{text}```\n" + draw(st.sampled_from(["", "\nThanks!\n"]))
    text += "\n" * draw(st.integers(0, 2))
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text


@st.composite
def pastes(draw) -> list[tuple[str, str]]:
    pieces = FORMS[draw(st.sampled_from(sorted(FORMS)))]
    fence = draw(st.booleans())
    texts = [draw(dressed(cmd, text, fence)) for cmd, text in pieces]
    if len(texts) > 1 and draw(st.booleans()):
        return [("paste.txt", "\n".join(texts))]  # several outputs in one file
    return [(f"piece-{i}.txt", t) for i, t in enumerate(texts)]


@settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")))
@given(pastes())
def test_dressing_a_paste_never_changes_its_trace(dumps):
    assert outcomes(dumps) == EXPECTED
