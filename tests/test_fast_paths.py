"""Shortcuts taken for speed accept nothing the slow path they stand for would refuse."""

from __future__ import annotations

import ipaddress
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from kubectl_clusterip.iptables.values import IPV4, IPV4_NET

OCTETS = [str(i) for i in range(300)] + ["00", "01", "007", "099", "0255", "-1", "", "1a"]


def _slow_ok(value: str, network: bool) -> bool:
    try:
        (ipaddress.ip_network(value, strict=False) if network else ipaddress.ip_address(value))
    except ValueError:
        return False
    return True


def test_every_octet_spelling_is_judged_as_ipaddress_judges_it() -> None:
    for octet in OCTETS:
        for value in (f"10.{octet}.0.1", f"{octet}.1.2.3", f"1.2.3.{octet}"):
            if IPV4.fullmatch(value):
                assert _slow_ok(value, network=False), value
            # what ipaddress accepts in the canonical spelling, the shortcut accepts too
            if _slow_ok(value, network=False) and not octet.startswith("0"):
                assert IPV4.fullmatch(value), value


def test_prefix_lengths() -> None:
    for prefix in [*map(str, range(40)), "032", "00", "-1", ""]:
        value = f"10.244.0.0/{prefix}"
        if IPV4_NET.fullmatch(value):
            assert _slow_ok(value, network=True), value
    assert all(IPV4_NET.fullmatch(f"10.0.0.0/{n}") for n in range(33))


@settings(derandomize=True, max_examples=1000)
@given(st.text(alphabet="0123456789./:-x٣", max_size=20))
def test_no_shortcut_accepts_what_ipaddress_refuses(value: str) -> None:
    if IPV4.fullmatch(value):
        assert _slow_ok(value, network=False)
    if IPV4_NET.fullmatch(value):
        assert _slow_ok(value, network=True)


def test_dotted_quads_in_full_agree() -> None:
    """Every quad built from a sample of octet spellings, both ways."""
    sample = ["0", "9", "10", "99", "100", "199", "249", "250", "255", "256", "01"]
    for parts in itertools.product(sample, repeat=4):
        value = ".".join(parts)
        fast = bool(IPV4.fullmatch(value))
        assert fast == (_slow_ok(value, network=False) and "01" not in parts), value
