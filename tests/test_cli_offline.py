"""The CLI over offline inputs: the bundled example, rule dumps, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubectl_clusterip import __version__
from kubectl_clusterip.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "kind-my-service")
DUMP = str(ROOT / "examples" / "kind-my-service" / "nodes" / "kind-worker" / "iptables-save.txt")


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"kubectl clusterip {__version__}"


def test_trace_the_bundled_example_as_json():
    r = run("trace", "default/my-service", "--snapshot", EXAMPLE, "-o", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["request"] == {"source": {"ip": "10.244.1.3", "port": 51234},
                              "destination": {"ip": "10.96.144.131", "port": 80},
                              "protocol": "tcp", "fromHost": False}
    assert doc["proxyMode"] == "iptables" and doc["verdict"] == "dnat"
    assert [(d["ip"], d["probability"], d["masquerade"]) for d in doc["dnat"]] == [
        ("10.244.1.2", 0.5, False), ("10.244.2.2", 0.5, False)]
    assert doc["masquerade"] is False
    assert doc["reverse"][0]["conntrack"] == (
        "tcp 6 src=10.244.1.3 dst=10.96.144.131 sport=51234 dport=80 "
        "src=10.244.1.2 dst=10.244.1.3 sport=80 dport=51234")
    assert doc["steps"][0]["chain"] == "PREROUTING"
    assert not [f for f in doc["findings"] if f["severity"] != "info"]


def test_trace_report_walks_the_six_steps():
    r = run("trace", "default/my-service", "--snapshot", EXAMPLE)
    assert r.exit_code == 0, r.output
    for heading in ("1. Service", "2. Rules", "3. DNS", "4. DNAT", "5. Forwarding", "6. Reply"):
        assert heading in r.output
    assert "same node" in r.output and "via 172.18.0.4" in r.output


def test_trace_by_address_from_a_bare_dump_and_yaml():
    r = run("trace", "--to", "10.96.0.10:53", "--protocol", "udp", "--rules-file", DUMP,
            "-o", "yaml")
    assert r.exit_code == 0, r.output
    assert "service: kube-system/kube-dns:dns" in r.output
    assert r.output.count("probability: 0.5") == 2


def test_trace_named_service_from_rule_comments_lists_every_port():
    r = run("trace", "kube-system/kube-dns", "--rules-file", DUMP, "-o", "json")
    doc = json.loads(r.output)
    assert doc["kind"] == "TraceList"
    assert sorted(t["service"] for t in doc["items"]) == [
        "kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics"]


def test_rules_table_and_json():
    r = run("rules", "--snapshot", EXAMPLE)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].split()[:3] == ["NAMESPACE", "NAME", "PORT"]
    assert "10.244.1.2:80 (50.0%), 10.244.2.2:80 (50.0%)" in r.output
    doc = json.loads(run("rules", "default/my-service", "--rules-file", DUMP, "-o", "json").output)
    assert doc["proxyMode"] == "iptables"
    assert doc["items"][0]["clusterIP"] == "10.96.144.131"


def test_broken_path_exits_one(tmp_path):
    text = Path(DUMP).read_text()
    # The node lost my-service's capture rule: kube-proxy stopped syncing it.
    broken = "\n".join(line for line in text.splitlines()
                       if "default/my-service cluster IP" not in line) + "\n"
    (tmp_path / "dump.txt").write_text(broken)
    r = run("trace", "--to", "10.96.144.131:80", "--rules-file", str(tmp_path / "dump.txt"))
    assert r.exit_code == 1
    assert "NoServiceRule" in r.output


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"\x7fELF\x00\x01", "binary data"),
    (b"hello world\n", "not a recognised rule dump"),
    (b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j ACCEPT\n", "truncated"),
    ("\u00e9".encode("latin-1"), "not UTF-8"),
])
def test_bad_dumps_get_one_line_and_exit_two(tmp_path, content, message):
    path = tmp_path / "dump.txt"
    if content is not None:
        path.write_bytes(content)
    r = run("trace", "--to", "10.96.0.1:443", "--rules-file", str(path))
    assert r.exit_code == 2
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output


@pytest.mark.parametrize("args,message", [
    (["trace", "default/nope", "--snapshot", EXAMPLE], "service default/nope not found"),
    (["trace", "kube-system/nope", "--rules-file", DUMP], "not found in the rules"),
    (["trace", "--to", "10.96.0.1", "--rules-file", DUMP], "expected IP:PORT"),
    (["trace", "--to", "fd00::1:80", "--rules-file", DUMP], "[ADDRESS]:PORT"),
    (["trace", "--to", "[fd00::1]:80", "--rules-file", DUMP], "no IPv6 rules"),
    (["trace", "--rules-file", DUMP], "give a TARGET"),
    (["trace", "default/my-service", "--snapshot", "/nonexistent"], "not a snapshot"),
    (["trace", "default/my-service", "--snapshot", EXAMPLE, "--rules-file", DUMP], "not both"),
])
def test_usage_errors_are_one_line(args, message):
    r = run(*args)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output


def test_stdin_dump():
    r = run("rules", "--rules-file", "-", input=Path(DUMP).read_text())
    assert r.exit_code == 0 and "my-service" in r.output


def test_affinity_state_in_a_snapshot_pins_the_client(tmp_path):
    """nodes/<node>/xt-recent.txt (what the debug pod reads from /proc/net/xt_recent)."""
    import shutil

    snap = tmp_path / "snap"
    shutil.copytree(ROOT / "tests" / "data" / "snapshots" / "session-affinity", snap)
    (snap / "nodes" / "kind-worker" / "xt-recent.txt").write_text(
        "/proc/net/xt_recent/KUBE-SEP-DYSIX5QMVXZZP7LU:src=10.244.1.20 ttl: 64 "
        "last_seen: 4295667296 oldest_pkt: 1 4295667296\n")
    doc = json.loads(run("trace", "shop/web", "--snapshot", str(snap), "-o", "json").output)
    assert [(d["ip"], d["probability"]) for d in doc["dnat"]] == [("10.244.2.7", 1.0)]
    other = json.loads(run("trace", "shop/web", "--snapshot", str(snap), "--source-ip",
                           "10.244.1.21", "-o", "json").output)
    assert len(other["dnat"]) == 2  # a client the list does not hold is still random


def test_from_host_uses_the_nodes_route_source_not_the_client_pod():
    doc = json.loads(run("trace", "default/my-service", "--snapshot", EXAMPLE, "--from-host",
                         "-o", "json").output)
    assert doc["request"]["source"]["ip"] == "172.18.0.2"  # eth0: the default route's device
    assert doc["steps"][0]["chain"] == "OUTPUT"
    assert {d["ip"]: d["snatIP"] for d in doc["dnat"]} == {"10.244.1.2": "10.244.1.1",
                                                          "10.244.2.2": "172.18.0.2"}


def test_no_target_is_a_usage_error_before_any_cluster_is_asked(monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")  # would fail differently if it were read
    r = run("trace")
    assert r.exit_code == 2 and "give a TARGET" in r.output and "KUBECONFIG" not in r.output
    r = run("trace", "a/b", "--to", "10.0.0.1:80", "--rules-file", DUMP)
    assert r.exit_code == 2 and "not both" in r.output
