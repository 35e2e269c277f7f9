"""The nft input boundary: a bad object, statement, value or element in a dump is one
`ClusterIPError` naming the file, where (JSON path or line) and the value cut short; loops
and huge numgen moduli are refused or bounded, never a hang."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from test_nft_parse import REAL_JSON, REAL_TEXT

from kubectl_clusterip.cli import main
from kubectl_clusterip.model import ClusterIPError, Packet
from kubectl_clusterip.nftables.dataplane import NftablesDataplane


def _items() -> list[dict]:
    return json.loads(REAL_JSON)["nftables"]


def _compact(items: list[dict]) -> str:
    """As `nft -j` prints: one line, `", "` and `": "` separators."""
    return json.dumps({"nftables": items})


def _first(items: list[dict], kind: str, chain: str | None = None) -> int:
    return next(i for i, it in enumerate(items) if kind in it and
                (chain is None or it[kind].get("chain") == chain))


def _daddr(value: object) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                      "right": value}}


def _load_everything(text: str, source: str) -> None:
    """Parse, then read every chain and set, as `rules` does."""
    for dp in NftablesDataplane.from_text(text, source):
        assert dp.table is not None
        for ch in dp.table.chains.values():
            ch.rules  # noqa: B018 - reading is the test
        for s in dp.table.sets.values():
            s.elements  # noqa: B018


def _error(text: str, source: str = "dump.json") -> str:
    with pytest.raises(ClusterIPError) as e:
        _load_everything(text, source)
    msg = str(e.value)
    assert "\n" not in msg and source in msg
    return msg


@pytest.mark.parametrize(("corrupt", "path", "words"), [
    (lambda r: r["expr"].insert(0, _daddr("10.0.0.999")),
     "expr[0].match.right", "not an IPv4 address: '10.0.0.999'"),
    (lambda r: r.__setitem__("expr", 5), ".rule.expr", "a rule's expr is a list"),
    (lambda r: r.__setitem__("handle", "12"), ".rule.handle", "handle should be int"),
    (lambda r: r["expr"].append({"dnat": {"addr": "10.244.0.1", "port": 70000}}),
     "dnat.port", "not a port (0-65535): 70000"),
    (lambda r: r["expr"].append({"dnat": {"addr": "fe80::1::2", "port": 80}}),
     "dnat.addr", "not an IP address"),
    (lambda r: r["expr"].append({"goto": {"target": 7}}), "goto", "chain name"),
    (lambda r: r["expr"].append({"vmap": {"key": {"numgen": {
        "mode": "random", "mod": 99999999999, "offset": 0}}, "data": {"set": []}}}),
     "vmap.key.numgen.mod", "numgen mod is 1..4294967295: 99999999999"),
    (lambda r: r["expr"].append({"match": {"op": "==", "left": {"meta": {"key": "mark"}},
                                           "right": 1 << 40}}),
     "match.right", "not a 32-bit mark"),
    (lambda r: r["expr"].append({"match": {"op": "~", "left": 1, "right": 1}}),
     "match.op", "unknown operator"),
    (lambda r: r["expr"].append(["not", "a", "statement"]), "expr[", "one key"),
    (lambda r: r["expr"].append({"match": {"op": [[]], "left": 1, "right": 1}}),
     "match.op", "unknown operator: [[]]"),  # unhashable: found by fuzzing
])
def test_one_corrupt_rule_in_compact_json_names_path_and_value(corrupt, path, words):
    items = _items()
    i = _first(items, "rule", "masquerading")
    corrupt(items[i]["rule"])
    msg = _error(_compact(items))
    assert f"nftables[{i}].rule" in msg and path in msg and words in msg, msg


def test_corrupt_objects_and_elements_name_their_json_path():
    items = _items()
    i = _first(items, "chain")
    items[i]["chain"]["prio"] = [1]
    assert f"nftables[{i}].chain.prio: prio should be int or str" in _error(_compact(items))
    items = _items()
    items[i]["chain"]["family"] = {"ip": 1}  # unhashable: found by fuzzing
    assert f"nftables[{i}].chain.family: " in _error(_compact(items))

    items = _items()
    i = next(i for i, it in enumerate(items) if it.get("map", {}).get("name") == "service-ips")
    items[i]["map"]["elem"][0][1] = {"goto": {"target": ["x"]}}
    msg = _error(_compact(items))
    assert f"nftables[{i}].map.elem[0] data.goto: a jump or goto target" in msg, msg
    items[i]["map"]["elem"][0][1] = {"goto": {"target": "x"}}
    items[i]["map"]["elem"][0][0]["concat"][2] = 65536
    assert f"nftables[{i}].map.elem[0] key: not a port (0-65535): 65536" in \
        _error(_compact(items))


def test_pretty_printed_json_is_checked_the_same_way():
    items = _items()
    i = _first(items, "rule", "masquerading")
    items[i]["rule"]["expr"].insert(0, _daddr("10.0.0.999"))
    msg = _error(json.dumps({"nftables": items}, indent=1))
    assert f"nftables[{i}].rule.expr[0].match.right: not an IPv4 address" in msg


def test_broken_json_syntax_in_one_item():
    text = _compact(_items())
    i = text.index('"expr": [', text.index('"chain": "masquerading"'))
    msg = _error(text[:i] + '"expr": [{"match": {"op": "==", "left": 8x0' + text[i + 9:])
    assert "not valid JSON" in msg and len(msg) < 300


def test_long_bad_values_are_cut_short():
    items = _items()
    i = _first(items, "rule", "masquerading")
    items[i]["rule"]["expr"].insert(0, _daddr("1" * 10_000_000))
    msg = _error(_compact(items))
    assert len(msg) < 250 and msg.endswith("…'")


def test_deep_json_is_refused_quickly():
    deep = '{"nftables": [' + "[" * 100_000 + "]" * 100_000 + "]}"
    t0 = time.monotonic()
    assert "nested too deeply" in _error(deep)
    items = _items()
    i = _first(items, "rule", "masquerading")
    nested: dict = {"meta": {"key": "mark"}}
    for _ in range(200):
        nested = {"&": [nested, 1]}
    items[i]["rule"]["expr"].insert(0, {"match": {"op": "==", "left": nested, "right": 0}})
    assert "nested deeper than 32 levels" in _error(_compact(items))
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- text


def _text_with(old: str, new: str) -> str:
    assert old in REAL_TEXT
    return REAL_TEXT.replace(old, new, 1)


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(("old", "new", "words"), [
    ("ip daddr 172.30.0.41 tcp dport 80", "ip daddr 172.30.0.999 tcp dport 80",
     "not an IPv4 address: '172.30.0.999'"),
    ("ip daddr 172.30.0.41 tcp dport 80", "ip daddr 172.30.0.41 tcp dport 99999",
     "not a port (0-65535): 99999"),
    ("meta l4proto tcp dnat to 10.180.0.1:80", "meta l4proto tcp dnat to 10.180.0.1:70000",
     "not a port (0-65535): 70000"),
    ("numgen random mod 2 vmap", "numgen random mod 99999999999 vmap",
     "numgen mod is 1..4294967295: 99999999999"),
    ("meta mark set meta mark | 0x00004000", "meta mark set 0x1000000000",
     "not a 32-bit mark"),
])
def test_bad_values_in_text_name_the_line(old: str, new: str, words: str):
    text = _text_with(old, new)
    msg = _error(text, "ruleset.txt")
    assert f"ruleset.txt line {_line_of(text, new)}: {words}" in msg, msg


def test_bad_set_element_in_text_names_the_set():
    text = _text_with("elements = { 172.30.0.41 }", "elements = { 172.30.0.410 }")
    msg = _error(text, "ruleset.txt")
    assert f"ruleset.txt line {_line_of(text, 'set cluster-ips')}: set cluster-ips, " \
           "element 1 key: not an IPv4 address: '172.30.0.410'" in msg, msg


# --------------------------------------------------------------------------- walks

LOOP = """\
table ip kube-proxy {
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}

\tchain services {
\t\tip daddr 10.96.0.10 goto a
\t}

\tchain a {
\t\tjump b
\t}

\tchain b {
\t\tgoto LAST
\t}
}
"""


@pytest.mark.parametrize(("last", "loop"), [
    ("a", "goto loop a → b → a"),
    ("services", "goto loop services → a → b → services"),
    ("b", "goto loop b → b"),
])
def test_jump_and_goto_loops_are_refused(last: str, loop: str):
    dp = NftablesDataplane.from_text(LOOP.replace("LAST", last), "loop.txt")[0]
    with pytest.raises(ClusterIPError) as e:
        dp.trace(Packet("10.244.0.5", "10.96.0.10", 53, "udp"))
    assert str(e.value).startswith(f"loop.txt: ip kube-proxy: {loop}: the kernel refuses")


def test_a_chain_entered_twice_without_a_loop_is_fine():
    text = LOOP.replace("\t\tip daddr 10.96.0.10 goto a\n",
                        "\t\tjump b\n\t\tip daddr 10.96.0.10 goto a\n").replace(
        "\t\tgoto LAST\n", "\t\tcounter\n")
    dp = NftablesDataplane.from_text(text, "twice.txt")[0]
    assert dp.trace(Packet("10.244.0.5", "10.96.0.10", 53, "udp")).verdict


HUGE_NUMGEN = """\
table ip kube-proxy {
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 10.96.0.10 numgen random mod 4294967295 vmap { 0 : goto ep1, 1-9 : goto ep2 }
\t}

\tchain ep1 {
\t\tmeta l4proto udp dnat to 10.244.1.1:53
\t}

\tchain ep2 {
\t\tmeta l4proto udp dnat to 10.244.1.2:53
\t}
}
"""


def test_numgen_with_the_largest_modulus_is_counted_not_enumerated():
    dp = NftablesDataplane.from_text(HUGE_NUMGEN, "huge.txt")[0]
    t0 = time.monotonic()
    paths = dp.walk(Packet("10.244.0.5", "10.96.0.10", 53, "udp"))
    assert time.monotonic() - t0 < 2
    odds = {p.dnat: p.probability for p in paths if p.dnat}
    assert odds == {("10.244.1.1", 53): pytest.approx(1 / 4294967295),
                    ("10.244.1.2", 53): pytest.approx(9 / 4294967295)}
    rest = [p for p in paths if not p.dnat]
    assert sum(p.probability for p in rest) == pytest.approx(1 - 10 / 4294967295)


def test_cli_bad_dump_is_one_line_exit_2(tmp_path):
    path = tmp_path / "ruleset.txt"
    path.write_text(_text_with("ip daddr 172.30.0.41 tcp dport 80", "ip daddr nope tcp dport 80"))
    r = CliRunner().invoke(main, ["rules", "--rules-file", str(path)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "not an IPv4 address: 'nope'" in r.output
