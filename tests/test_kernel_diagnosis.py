"""Broken scenarios on the real kernel: the diagnosis (made from the snapshot, before any
packet is sent) must match what netfilter then does with real requests.

Each scenario loads the very iptables-save dump of a stored snapshot (tests/data/snapshots)
into a namespace-built node (tests/netlab.py) whose pods have the snapshot's addresses.
Needs root, iproute2, iptables-nft and conntrack; skips cleanly elsewhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import snapshots as S
from netlab import Lab, kernel_lab, tally

from kubectl_clusterip.engine import Request, run_trace
from kubectl_clusterip.model import Trace

pytestmark = [pytest.mark.kernel, kernel_lab("iptables-nft-restore", "iptables-nft-save",
                                             "conntrack")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Two nodes; the snapshot's pods at their addresses, each serving tcp/8080."""
    with Lab(nodes=2, ipv6=False) as lab_:
        for name, ip, node in (("client", S.CLIENT, "node"), ("web-1", S.WEB1, "node"),
                               ("web-1-old", S.STALE_OLD, "node"),
                               ("web-1b", S.STALE_NEW, "node"), ("web-2", S.WEB2, "node2")):
            lab_.add_pod(name, ip, node=node)
            if name != "client":
                lab_.serve(name, 8080, "tcp", lifetime=300)
        yield lab_


def load_case(lab: Lab, case: str) -> None:
    lab.reset_rules()
    lab.conntrack_flush()
    text = S.load(case).nodes[S.NODE].files["iptables-save.txt"]
    lab.load_iptables(text, 4)


def diagnose(case: str, **kw) -> Trace:
    (t,) = run_trace(S.load(case), Request(target="shop/web", **kw))
    return t


def errors(t: Trace) -> list[str]:
    return [f.code for f in t.findings if f.severity == "error"]


def test_no_endpoints_is_refused_and_said_before(lab: Lab) -> None:
    t = diagnose("no-endpoints")  # before any packet: the tool already says why
    assert t.verdict == "reject"
    assert errors(t) == ["NoReadyPods", "NoEndpointsReject"]
    load_case(lab, "no-endpoints")
    replies = lab.request("client", S.CIP, 80, count=3)
    assert tally(replies) == {"error:refused": 3}  # REJECT: ICMP port unreachable
    # the pod itself is up: it is the rule, not the server, that refuses
    assert tally(lab.request("client", S.WEB1, 8080)) == {"web-1": 1}


def test_stale_rules_send_traffic_to_the_old_endpoint(lab: Lab) -> None:
    t = diagnose("stale-rules")
    assert [c.endpoint for c in t.candidates] == [f"{S.STALE_OLD}:8080"]
    stale = next(f for f in t.findings if f.code == "StaleEndpointRules")
    missing = next(f for f in t.findings if f.code == "MissingEndpointRules")
    assert f"{S.STALE_OLD}:8080" in stale.message and f"{S.STALE_NEW}:8080" in missing.message
    load_case(lab, "stale-rules")
    replies = lab.request("client", S.CIP, 80, count=10)
    assert tally(replies) == {"web-1-old": 10}  # the kernel follows the stale rules
    assert tally(lab.request("client", S.STALE_NEW, 8080)) == {"web-1b": 1}  # the API's pod


def test_itp_local_without_local_endpoint_drops(lab: Lab) -> None:
    t = diagnose("itp-local-no-local")
    assert t.verdict == "drop" and errors(t) == ["NoLocalEndpointsDrop"]
    load_case(lab, "itp-local-no-local")
    replies = lab.request("client", S.CIP, 80, count=2, timeout=0.5)
    assert tally(replies) == {"error:timeout": 2}  # DROP: no answer at all, not refused
    assert tally(lab.request("client", S.WEB2, 8080)) == {"web-2": 1}  # the endpoint is fine


def test_hairpin_is_masqueraded_to_the_node_gateway(lab: Lab) -> None:
    t = diagnose("healthy", source_ip=S.WEB1)
    hairpin = next(f for f in t.findings if f.code == "Hairpin")
    assert S.WEB1 in hairpin.message
    by_ip = {c.ip: c for c in t.candidates}
    assert by_ip[S.WEB1].masquerade and by_ip[S.WEB1].snat_ip == "10.244.1.1"
    assert not by_ip[S.WEB2].masquerade
    load_case(lab, "healthy")
    replies = lab.request("web-1", S.CIP, 80, count=30)
    seen = {(r.server, r.peer_ip) for r in replies if r.ok}
    assert all(r.ok for r in replies)
    # to itself: masqueraded, the pod sees the node's gateway; to web-2: its own address
    assert seen == {("web-1", by_ip[S.WEB1].snat_ip), ("web-2", S.WEB1)}


def test_policy_reject_after_dnat_is_named_not_drift(lab: Lab) -> None:
    """kube-router's policy chains (tests/test_dropped_after_dnat.py) reject web-1 after the
    DNAT: the diagnosis says so at forwarding, and the kernel agrees: web-1 never answers
    through the ClusterIP, web-2 does; web-1 is refused even by its own address (the policy,
    not kube-proxy's rules)."""
    from test_diagnose import with_dump
    from test_dropped_after_dnat import POD_FW, kube_router
    snap = with_dump(S.load("healthy"), kube_router)
    (t,) = run_trace(snap, Request(target="shop/web"))
    f = next(f for f in t.findings if f.code == "DroppedAfterDnat")
    assert f.severity == "warning" and POD_FW in f.message and f"{S.WEB1}:8080" in f.message
    assert {"MissingEndpointRules", "PartialDispatch"}.isdisjoint(x.code for x in t.findings)
    lab.reset_rules()
    lab.conntrack_flush()
    lab.load_iptables(snap.nodes[S.NODE].files["iptables-save.txt"], 4)
    got = tally(lab.request("client", S.CIP, 80, count=30, timeout=0.5))
    assert set(got) == {"web-2", "error:refused"}  # REJECT: ICMP port unreachable
    assert 5 <= got["web-2"] <= 25  # 50% each way (p < 1e-3 to fall outside)
    assert tally(lab.request("client", S.WEB2, 8080)) == {"web-2": 1}
    assert tally(lab.request("client", S.WEB1, 8080, timeout=0.5)) == {"error:refused": 1}
