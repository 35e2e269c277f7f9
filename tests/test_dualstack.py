"""Dual-stack: an IPv4 and an IPv6 dump of one node given together (`--rules-file` twice).

The dumps (tests/data/dualstack, see generate.py) are kube-proxy's iptables-mode rules for a
dual-stack kube-dns and shop/web plus a SingleStack IPv6 shop/v6only, loaded into a real
kernel and read back by iptables-save / ip6tables-save.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubectl_clusterip.cli import main
from kubectl_clusterip.iptables.parse import parse_iptables_save
from kubectl_clusterip.naming import endpoint_chain_for, service_chain

DATA = Path(__file__).parent / "data" / "dualstack"
V4, V6 = str(DATA / "iptables-save.txt"), str(DATA / "ip6tables-save.txt")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def trace_json(*args: str) -> dict:
    r = run("trace", *args, "--rules-file", V4, "--rules-file", V6, "-o", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_the_ipv6_dump_has_kube_proxys_ipv6_shape():
    v4 = parse_iptables_save(Path(V4).read_text(), V4)
    v6 = parse_iptables_save(Path(V6).read_text(), V6)
    assert (v4.family, v6.family) == (4, 6)
    text6 = Path(V6).read_text()
    # every address match is a /128, the localhost exclusion is ::1
    assert re.findall(r" -[sd] (\S+)", text6) and all(
        a.endswith("/128") or a.endswith("/56") for a in re.findall(r" -[sd] (\S+)", text6))
    assert "! -d ::1/128" in text6
    # the same service chain names in both families; endpoint chains hashed over [v6]:port
    svc = service_chain("shop/web:http", "tcp")
    assert svc in v4.chains("nat") and svc in v6.chains("nat")
    sep6 = endpoint_chain_for("shop/web:http", "tcp", "fd00:10:244:1::5", 8080)
    sep4 = endpoint_chain_for("shop/web:http", "tcp", "10.244.1.5", 8080)
    assert sep6 in v6.chains("nat") and sep4 in v4.chains("nat") and sep4 != sep6
    assert "--to-destination [fd00:10:244:1::5]:8080" in text6
    assert service_chain("shop/v6only:http", "tcp") not in v4.chains("nat")


def test_to_an_ipv6_address_in_brackets():
    doc = trace_json("--to", "[fd00:10:96::7:7]:80")
    assert doc["family"] == "IPv6" and doc["service"] == "shop/web:http"
    assert doc["request"]["destination"] == {"ip": "fd00:10:96::7:7", "port": 80}
    assert ipv6(doc["request"]["source"]["ip"])
    assert [(d["ip"], d["port"], d["probability"]) for d in doc["dnat"]] == [
        ("fd00:10:244:1::5", 8080, 0.5), ("fd00:10:244:2::7", 8080, 0.5)]
    assert doc["reverse"][0]["endpoint"] == "[fd00:10:244:1::5]:8080"


def ipv6(ip: str) -> bool:
    return ":" in ip


def test_a_dual_stack_service_is_traced_in_each_family():
    doc = trace_json("shop/web")
    assert doc["kind"] == "TraceList"
    got = [(i["family"], i["service"], i["request"]["destination"]["ip"],
            [d["ip"] for d in i["dnat"]]) for i in doc["items"]]
    assert got == [("IPv4", "shop/web:http", "10.96.120.7", ["10.244.1.5", "10.244.2.7"]),
                   ("IPv6", "shop/web:http", "fd00:10:96::7:7",
                    ["fd00:10:244:1::5", "fd00:10:244:2::7"])]
    assert not ipv6(doc["items"][0]["request"]["source"]["ip"])
    assert ipv6(doc["items"][1]["request"]["source"]["ip"])


def test_each_port_of_a_dual_stack_service_in_each_family():
    doc = trace_json("kube-system/kube-dns")
    assert sorted((i["family"], i["request"]["protocol"]) for i in doc["items"]) == [
        ("IPv4", "tcp"), ("IPv4", "udp"), ("IPv6", "tcp"), ("IPv6", "udp")]
    udp = trace_json("kube-system/kube-dns:dns")
    assert [(i["family"], i["service"]) for i in udp["items"]] == [
        ("IPv4", "kube-system/kube-dns:dns"), ("IPv6", "kube-system/kube-dns:dns")]


def test_a_single_stack_ipv6_service_gives_one_trace():
    doc = trace_json("shop/v6only")
    assert "kind" not in doc and doc["family"] == "IPv6"
    assert [d["ip"] for d in doc["dnat"]] == ["fd00:10:244:3::9"]


def test_source_ip_picks_the_family_of_a_dual_stack_service():
    doc = trace_json("shop/web", "--source-ip", "fd00:10:244:1::20")
    assert doc["family"] == "IPv6" and doc["request"]["source"]["ip"] == "fd00:10:244:1::20"
    doc4 = trace_json("shop/web", "--source-ip", "10.244.1.20")
    assert doc4["family"] == "IPv4"


def test_rules_lists_each_family():
    r = run("rules", "shop/web", "--rules-file", V4, "--rules-file", V6, "-o", "json")
    assert r.exit_code == 0, r.output
    items = json.loads(r.stdout)["items"]
    assert [(i["family"], i["clusterIP"]) for i in items] == [
        ("IPv4", "10.96.120.7"), ("IPv6", "fd00:10:96::7:7")]


@pytest.mark.parametrize("args, message", [
    (("--to", "[fd00:10:96::7:7]:80", "--rules-file", V4), "no IPv6 rules"),
    (("--to", "fd00:10:96::7:7:80", "--rules-file", V4, "--rules-file", V6), "[ADDRESS]:PORT"),
    (("--to", "10.96.120.7:80", "--source-ip", "fd00::1", "--rules-file", V4,
      "--rules-file", V6), "is not IPv4"),
])
def test_family_mistakes_are_one_clear_error(args, message):
    r = run("trace", *args)
    assert r.exit_code == 2 and message in r.stderr, r.output
