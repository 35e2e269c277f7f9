"""Flags are refused in one line; an internal error is one line asking for a report."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kubectl_clusterip.cli import main
from kubectl_clusterip.cluster.dns import parse_server
from kubectl_clusterip.flags import parse_host_port
from kubectl_clusterip.model import ClusterIPError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "kind-my-service")
DUMP = str(ROOT / "examples" / "kind-my-service" / "nodes" / "kind-worker" / "iptables-save.txt")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(r, fragment: str) -> None:
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert fragment in r.stderr and "Traceback" not in r.output
    assert len(r.stderr) < 200


@pytest.mark.parametrize("args,fragment", [
    (["--to", "１０.96.0.10:53"], "--to １０.96.0.10:53: expected an IP address"),
    (["--to", "10.96.0.10:８０"], "expected a port from 1 to 65535, not ８０"),
    (["--to", "10.96.0.10:٥٣"], "expected a port from 1 to 65535"),
    (["--to", "10.96.0.10:²"], "expected a port from 1 to 65535"),
    (["--to", "10.96.0.10:65536"], "expected a port from 1 to 65535, not 65536"),
    (["--to", "10.96.0.10:0"], "expected a port from 1 to 65535, not 0"),
    (["--to", "10.96.0.10:+80"], "expected a port from 1 to 65535"),
    (["--to", "10.96.0.10: 80"], "expected a port from 1 to 65535"),
    (["--to", "10.96.0.10"], "--to 10.96.0.10: expected IP:PORT"),
    (["--to", "fd00::1:80"], "write IPv6 as [ADDRESS]:PORT"),
    (["--to", "[fd00::1%eth0]:80"], "expected an IP address"),
    (["--to", "[fd00::1"], "expected IP:PORT"),
    (["--to", "10.96.0.10:53", "--source-ip", "0"], "--source-ip 0: expected an IP address"),
    (["--to", "10.96.0.10:53", "--source-ip", "10.0.0.1/24"], "--source-ip 10.0.0.1/24"),
    (["--to", "10.96.0.10:53", "--source-ip", "١٠.0.0.1"], "expected an IP address"),
    (["--to", "10.96.0.10:53", "--node-ip", "172.18.0.2", "--node-ip", "x" * 500],
     "--node-ip xxxxxxxx"),
])
def test_address_flags_are_refused_in_one_line(args, fragment):
    one_line_error(run("trace", "--rules-file", DUMP, *args), fragment)


def test_a_source_ip_is_refused_before_the_cluster_is_asked(monkeypatch):
    monkeypatch.setattr("kubectl_clusterip.cli.live_source", lambda *a, **k: pytest.fail(
        "the live cluster was asked"))
    one_line_error(run("trace", "default/x", "--source-ip", "0"), "--source-ip 0")
    one_line_error(run("capture", "default/x", "-o", "d", "--source-ip", "0"),
                   "--source-ip 0")


def test_normal_forms_are_accepted():
    r = run("trace", "--rules-file", DUMP, "--to", "10.96.0.10:53", "--protocol", "udp",
            "--source-ip", "10.244.1.3", "--node-ip", "fd00::0:2", "-o", "json")
    assert r.exit_code == 0, r.output
    assert parse_host_port("--to", "[FD00::A]:53") == ("fd00::a", 53)


@pytest.mark.parametrize("value,expected", [
    ("10.96.0.10", ("10.96.0.10", 53)), ("10.96.0.10:5353", ("10.96.0.10", 5353)),
    ("[fd00::a]:54", ("fd00::a", 54)), ("fd00::a", ("fd00::a", 53))])
def test_dns_server(value, expected):
    assert parse_server(value) == expected


@pytest.mark.parametrize("value", ["10.96.0.10:²", "10.96.0.10:٥٣", "[fd00::a]x", "x:53",
                                   "10.96.0.10:70000"])
def test_dns_server_refused(value):
    with pytest.raises(ClusterIPError, match="--dns-server"):
        parse_server(value)


def test_request_timeout_takes_ascii_digits(monkeypatch):
    from kubectl_clusterip.cluster.kubeconfig import parse_timeout
    assert parse_timeout("1.5m") == 90
    for bad in ("１０s", "9" * 400, "1e9"):
        with pytest.raises(ClusterIPError, match="--request-timeout"):
            parse_timeout(bad)


def boom(*_a, **_k):
    return 3 .rstrip()  # the kind of bug the handler catches: an int where a str was


def test_an_internal_error_is_one_line_asking_for_a_report(monkeypatch):
    monkeypatch.setattr("kubectl_clusterip.engine.run_trace", boom)
    r = run("trace", "default/my-service", "--snapshot", EXAMPLE)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1, r.stderr
    assert "internal error (AttributeError in boom())" in r.stderr
    assert "please report this" in r.stderr and "rstrip" not in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(monkeypatch, where):
    monkeypatch.setattr("kubectl_clusterip.engine.run_trace", boom)
    args = ["trace", "default/my-service", "--snapshot", EXAMPLE]
    r = run(*(["--debug", *args] if where == "before" else [*args, "-v"]))
    assert r.exit_code == 2
    assert "Traceback" in r.stderr and "'int' object has no attribute 'rstrip'" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: internal error")
