"""The DNS step against a real server: dnsmasq on 127.0.0.1 and a random port.

Proves the search-path walk a client's resolver makes (ndots), A/AAAA/SRV answers in the
snapshot's meta["dns"] shape, NXDOMAIN, a wrong answer, and a server that never answers
(UDP and TCP) ending as a bounded "timeout ..." error rather than a hang.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from fakeapi import DNSMASQ, Dnsmasq

from kubectl_clusterip.cluster import dns
from kubectl_clusterip.model import ClusterIPError

pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ),
                                reason="dnsmasq is not installed (/usr/sbin/dnsmasq)")
SEARCH = dns.cluster_search("default")


@pytest.fixture(scope="module")
def server():
    with Dnsmasq(["--address=/cluster.local/",  # authoritative: unknown names are NXDOMAIN
                  "--host-record=web.default.svc.cluster.local,10.96.0.50",
                  "--host-record=dual.default.svc.cluster.local,10.96.0.60,fd00:10:96::60",
                  "--host-record=v6only.default.svc.cluster.local,fd00:10:96::61",
                  "--host-record=web.other.svc.cluster.local,10.96.7.7",
                  "--host-record=stale.default.svc.cluster.local,10.96.9.9",
                  "--srv-host=_http._tcp.web.default.svc.cluster.local,"
                  "web.default.svc.cluster.local,80,0,100"]) as d:
        yield d


def ask(server):
    return dns.udp_asker("127.0.0.1", server.port, 1.0)


def test_short_name_walks_the_search_path(server):
    out = dns.lookup("web", SEARCH, 5, ask(server), "dnsmasq", [("http", "TCP")])
    assert out["fqdn"] == "web.default.svc.cluster.local." and out["error"] is None
    assert out["answers"] == [
        {"name": "web.default.svc.cluster.local.", "type": "A", "rcode": "NOERROR",
         "records": ["10.96.0.50"]},
        {"name": "web.default.svc.cluster.local.", "type": "AAAA", "rcode": "NOERROR",
         "records": []},
        {"name": "_http._tcp.web.default.svc.cluster.local.", "type": "SRV",
         "rcode": "NOERROR", "records": ["0 100 80 web.default.svc.cluster.local."]}]


def test_name_dot_namespace_falls_through_to_the_second_search_domain(server):
    out = dns.lookup("web.other", SEARCH, 5, ask(server), "dnsmasq")
    assert [(a["name"], a["rcode"]) for a in out["answers"]][:2] == [
        ("web.other.default.svc.cluster.local.", "NXDOMAIN"),
        ("web.other.svc.cluster.local.", "NOERROR")]
    assert out["fqdn"] == "web.other.svc.cluster.local."


def test_dual_stack_and_ipv6_only(server):
    dual = dns.lookup("dual", SEARCH, 5, ask(server), "dnsmasq")
    assert [a["records"] for a in dual["answers"]] == [["10.96.0.60"], ["fd00:10:96::60"]]
    v6 = dns.lookup("v6only", SEARCH, 5, ask(server), "dnsmasq")
    assert v6["fqdn"] == "v6only.default.svc.cluster.local."
    assert v6["answers"][-1]["type"] == "AAAA" and v6["answers"][-1]["records"] == [
        "fd00:10:96::61"]


def test_nxdomain_everywhere(server):
    out = dns.lookup("missing", SEARCH, 5, ask(server), "dnsmasq")
    assert out["fqdn"] is None and out["error"] is None
    assert [a["rcode"] for a in out["answers"]] == ["NXDOMAIN"] * 3 + [
        out["answers"][-1]["rcode"]]  # the bare name is outside the cluster's zone
    assert [a["name"] for a in out["answers"]][:3] == [
        f"missing.{s}." for s in SEARCH]


def test_wrong_answer_is_recorded_as_answered(server):
    """The server answers another address than the ClusterIP: the records say which."""
    out = dns.lookup("stale", SEARCH, 5, ask(server), "dnsmasq")
    assert out["answers"][0]["records"] == ["10.96.9.9"]


def test_absolute_name_and_ndots():
    assert dns.candidates("web.default.svc.cluster.local.", SEARCH, 5) == [
        "web.default.svc.cluster.local."]
    assert dns.candidates("a.b.c", ["x"], 2) == ["a.b.c.", "a.b.c.x."]
    assert dns.candidates("a.b", ["x"], 2) == ["a.b.x.", "a.b."]


def test_tcp_over_one_stream_like_a_port_forward(server):
    """The port-forward path: queries one after another over a single TCP socket."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        out = dns.lookup("web", SEARCH, 5, dns.tcp_asker(s, 2.0), "tcp", [("http", "TCP")])
    assert out["error"] is None and out["answers"][0]["records"] == ["10.96.0.50"]
    assert out["answers"][-1]["type"] == "SRV"


def test_udp_server_that_never_answers_times_out():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        out = dns.lookup("web", SEARCH, 5, dns.udp_asker("127.0.0.1", port, 0.3), "silent")
    assert time.monotonic() - t0 < 3
    assert out["error"].startswith("timeout") and out["fqdn"] is None


def test_tcp_server_that_never_answers_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=1) as s:
            out = dns.lookup("web", SEARCH, 5, dns.tcp_asker(s, 0.3), "silent")
    assert out["error"].startswith("timeout")


@pytest.mark.parametrize("value,expected", [("10.96.0.10", ("10.96.0.10", 53)),
                                            ("127.0.0.1:5353", ("127.0.0.1", 5353)),
                                            ("[fd00::a]:53", ("fd00::a", 53)),
                                            ("fd00::a", ("fd00::a", 53))])
def test_parse_server(value, expected):
    assert dns.parse_server(value) == expected


@pytest.mark.parametrize("value", ["kube-dns", "1.2.3.4:x", "1.2.3.4:0"])
def test_parse_server_rejects(value):
    with pytest.raises(ClusterIPError, match="--dns-server"):
        dns.parse_server(value)


def test_client_resolv_from_the_pod_spec():
    pod = {"metadata": {"namespace": "shop"}, "spec": {
        "dnsPolicy": "ClusterFirst",
        "dnsConfig": {"searches": ["corp.example"], "options": [{"name": "ndots",
                                                                 "value": "2"}]}}}
    assert dns.client_resolv(pod, "x") == ([*dns.cluster_search("shop"), "corp.example"], 2)
    assert dns.client_resolv(None, "default") == (SEARCH, 5)
    host = {"metadata": {"namespace": "a"}, "spec": {"hostNetwork": True}}
    assert dns.client_resolv(host, "a") == ([], 1)  # ClusterFirst on the host network: Default
    none = {"metadata": {"namespace": "a"}, "spec": {"dnsPolicy": "None", "dnsConfig": {
        "searches": ["x.example"]}}}
    assert dns.client_resolv(none, "a") == (["x.example"], 1)
