"""Mutated real inputs hold the CLI contract: exit 0/1/2, one-line errors, bounded time/memory.

Hypothesis drives the mutations of tests/fuzzing.py over the real dumps (iptables-save,
nft text and JSON, ipvsadm, ipset), snapshots and a kubeconfig, and runs the CLI in-process
on each. CI runs a fixed, derandomized set (FUZZ_EXAMPLES per seed, default 12); a longer
local run: `FUZZ_EXAMPLES=500 python3 -m pytest tests/test_fuzz_inputs.py`, or count
violations by class without stopping: `python3 tests/fuzzing.py --survey 200`.
"""

from __future__ import annotations

import os

import fuzzing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)

SEEDS = {**fuzzing.dump_seeds(), **{
    f"snapshot-{case}": fuzzing.snapshot_seed(case) for case in fuzzing.SNAPSHOT_CASES}}


def drawer(data: st.DataObject):
    return lambda n: data.draw(st.integers(0, max(n - 1, 0)))


def holds(outcome: fuzzing.Outcome) -> None:
    assert not outcome.violations(), (outcome.violations(), outcome.stderr[:500],
                                      outcome.exception)


@pytest.mark.parametrize("name", sorted(SEEDS))
@SETTINGS
@given(data=st.data())
def test_mutated_inputs(name: str, data: st.DataObject) -> None:
    """Each real dump (by parser) and snapshot, with one to three edits, through a command."""
    seed = SEEDS[name]
    pick = drawer(data)
    files = fuzzing.mutated(seed, pick)
    holds(fuzzing.run_seed(seed, files, pick(len(seed.commands))))


@settings(SETTINGS, max_examples=EXAMPLES * 4)
@given(data=st.data())
def test_mutated_kubeconfigs(data: st.DataObject) -> None:
    pick = drawer(data)
    doc = fuzzing.KUBECONFIG
    for _ in range(1 + pick(3)):
        doc = fuzzing.mutate_tree(doc, pick)
    holds(fuzzing.kubeconfig_outcome(doc))


ADDRESS = st.one_of(
    st.sampled_from(["10.96.0.10:53", "[fd00:10:96::a]:53", "１０.96.0.10:53", "10.96.0.10:٥٣",
                     "0", "10.96.0.10:99999", "[::1]", "10.0.0.1%eth0", "::ffff:10.96.0.10"]),
    st.text(max_size=40))


@SETTINGS
@given(to=ADDRESS, source=ADDRESS, node_ip=ADDRESS, port=st.text(max_size=8))
def test_odd_flag_values(to: str, source: str, node_ip: str, port: str) -> None:
    dump = str(fuzzing.EXAMPLE / "nodes" / "kind-worker" / "iptables-save.txt")
    args = ["trace", "--rules-file", dump, "--to", to, "--source-ip", source.split(":")[0],
            "--node-ip", node_ip, "--source-port", port or "1"]
    if any(a.startswith("-") and a not in ("--to",) for a in (to, source, node_ip, port)):
        return  # a value that reads as a flag is click's business, not ours
    holds(fuzzing.run_cli(args))
