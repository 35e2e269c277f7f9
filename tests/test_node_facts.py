"""Node facts: parsed from fixtures shaped as the kernel and kube-proxy print them
(tests/data/nodefacts/README.md), judged on the healthy snapshot's client node."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import snapshots as S

from kubectl_clusterip.engine import Request, run_trace
from kubectl_clusterip.findings import CODES
from kubectl_clusterip.model import ClusterIPError, Trace
from kubectl_clusterip.nodefacts import (
    parse_conntrack_stats,
    parse_go_time,
    parse_healthz,
    parse_metrics,
    parse_sysctls,
)
from kubectl_clusterip.snapshot import NodeDumps, Snapshot

DATA = Path(__file__).parent / "data" / "nodefacts"
SYSCTL = (DATA / "sysctl-base.txt").read_text()


def fixture(name: str) -> str:
    return (DATA / name).read_text()


def sysctl(**values: str) -> str:
    """sysctl-base.txt with some values changed (key: the path's dotted form, `_` for `.`);
    a value of None drops the line."""
    lines = []
    for line in SYSCTL.splitlines():
        path, _, v = line.partition(":")
        key = path[len("/proc/sys/"):].replace("/", "_").replace("-", "_")
        if key in values:
            if values[key] is None:
                continue
            v = values[key]
        lines.append(f"{path}:{v}")
    return "\n".join(lines) + "\n"


def snap_with(files: dict[str, str], objects: list[dict] | None = None,
              routes=None) -> Snapshot:
    snap = S.load("healthy")
    node_files = dict(snap.nodes[S.NODE].files)
    node_files.update(files)
    if routes is not None:
        node_files["ip-route.json"] = json.dumps(routes(json.loads(node_files["ip-route.json"])))
    return Snapshot(snap.meta, objects or snap.objects,
                    {S.NODE: NodeDumps(S.NODE, node_files)}, snap.source)


def trace(snap: Snapshot, **kw) -> Trace:
    (t,) = run_trace(snap, Request(target="shop/web", **kw))
    return t


def found(t: Trace, code: str):
    got = [f for f in t.findings if f.code == code]
    assert len(got) == 1, [f.code for f in t.findings]
    assert (got[0].severity, got[0].step) == CODES[code]
    return got[0]


def codes(t: Trace) -> set[str]:
    return {f.code for f in t.findings}


NODE_CODES = {"ConntrackTableFull", "ConntrackTableNearlyFull", "ConntrackDrops",
              "IpForwardDisabled", "BridgeNfCallIptablesOff", "KubeProxySyncStale",
              "PodCidrRouteMissing", "PodCidrRouteUnexpectedDevice"}


# -- the boundary ----------------------------------------------------------------------------


def test_parsers_read_the_real_shapes():
    stats, cpus = parse_conntrack_stats(fixture("conntrack-stats-drops.txt"))
    assert cpus == 8 and stats["insert_failed"] == 1 and stats["drop"] == 1
    assert stats["early_drop"] == 0 and stats["error"] == 920
    stats, cpus = parse_conntrack_stats(fixture("conntrack-stats-clean.txt"))
    assert cpus == 2 and stats["clash_resolve"] == 0
    h = parse_healthz(fixture("kube-proxy-healthz-ok.json"))
    assert h["lastUpdated"] == h["currentTime"] and "nodeEligible" not in h
    h = parse_healthz(fixture("kube-proxy-healthz-stale.json"))
    assert (h["currentTime"] - h["lastUpdated"]).total_seconds() == pytest.approx(7971.4, 0.1)
    assert h["nodeEligible"] is True
    m = parse_metrics(fixture("kube-proxy-metrics-stale.txt"))
    assert m["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] == pytest.approx(
        parse_go_time("2025-11-26 09:47:12.104528113 +0000 UTC").timestamp())
    assert m['kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"}'] == 61
    assert parse_sysctls(SYSCTL)["net.bridge.bridge-nf-call-iptables"] == "1"


@pytest.mark.parametrize("parser,text,where", [
    (parse_sysctls, "net.ipv4.ip_forward = 1\n", "sysctl.txt:1"),
    (parse_conntrack_stats, "cpu=0 found=x\n", "conntrack-stats.txt:1: bad counter"),
    (parse_conntrack_stats, "conntrack v1.4.7: 12 flow entries\n", "conntrack-stats.txt:1"),
    (parse_healthz, "<html>404</html>", "kube-proxy-healthz.json: not kube-proxy's"),
    (parse_healthz, '{"lastUpdated": "yesterday", "currentTime": "now"}', "not a Go time"),
    (parse_metrics, "kubeproxy_x NaNish\n", "kube-proxy-metrics.txt:1"),
])
def test_bad_input_is_one_line_naming_the_file(parser, text, where):
    with pytest.raises(ClusterIPError, match=None) as e:
        parser(text)
    assert where in str(e.value) and "\n" not in str(e.value)


def test_unreadable_facts_are_a_note_and_the_trace_goes_on():
    t = trace(snap_with({"sysctl.txt": "garbage\n"}))
    assert t.verdict == "dnat"
    assert any(n.startswith("node facts not judged: sysctl.txt:1") for n in
               t.extra["diagnosisNotes"])


# -- judged ----------------------------------------------------------------------------------------


def test_healthy_node_facts_raise_nothing():
    t = trace(snap_with({"sysctl.txt": SYSCTL,
                         "conntrack-stats.txt": fixture("conntrack-stats-clean.txt"),
                         "kube-proxy-healthz.json": fixture("kube-proxy-healthz-ok.json")}))
    assert not codes(t) & NODE_CODES
    assert t.extra["summary"].startswith("OK:")


def test_conntrack_fill_thresholds():
    def at(count: int) -> Trace:
        return trace(snap_with({"sysctl.txt": sysctl(net_netfilter_nf_conntrack_count=str(count),
                                                     net_netfilter_nf_conntrack_max="1000")}))
    assert not codes(at(899)) & NODE_CODES
    f = found(at(900), "ConntrackTableNearlyFull")
    assert "90% full (900/1000)" in f.message
    f = found(at(1000), "ConntrackTableFull")
    assert f.evidence == "net.netfilter.nf_conntrack_count = 1000, nf_conntrack_max = 1000"
    assert trace(snap_with({"sysctl.txt": sysctl(net_netfilter_nf_conntrack_count="1000",
                                                 net_netfilter_nf_conntrack_max="1000")})
                 ).extra["summary"].startswith("BROKEN at step 5")


def test_conntrack_drops_from_conntrack_s():
    f = found(trace(snap_with({"conntrack-stats.txt": fixture("conntrack-stats-drops.txt")})),
              "ConntrackDrops")
    assert "drop=1, insert_failed=1" in f.message
    assert f.evidence == "conntrack -S summed over 8 CPU(s): drop=1 early_drop=0 insert_failed=1"


def test_ip_forward_off_breaks_pod_clients_only():
    off = {"sysctl.txt": sysctl(net_ipv4_ip_forward="0")}
    f = found(trace(snap_with(off)), "IpForwardDisabled")
    assert f.evidence == "net.ipv4.ip_forward = 0"
    host = trace(snap_with(off), source_ip=S.NODE_IP, from_host=True)
    assert "IpForwardDisabled" not in codes(host)


def test_kube_proxy_sync_stale():
    files = {"kube-proxy-healthz.json": fixture("kube-proxy-healthz-stale.json"),
             "kube-proxy-metrics.txt": fixture("kube-proxy-metrics-stale.txt")}
    f = found(trace(snap_with(files)), "KubeProxySyncStale")
    assert "last synced its rules 2h12m ago" in f.message and "(30s)" in f.message
    assert "syncPeriod 30s (kube-proxy's default)" in f.evidence
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds 7971s ago" in f.evidence
    # a syncPeriod of 2h in the ConfigMap makes 2h12m normal
    objects = [dict(o) for o in S.load("healthy").objects]
    for o in objects:
        if o["kind"] == "ConfigMap":
            o["data"] = {"config.conf": o["data"]["config.conf"]
                         + "iptables:\n  syncPeriod: 1h10m0s\n"}
    assert "KubeProxySyncStale" not in codes(trace(snap_with(files, objects)))


def test_missing_route_to_the_other_nodes_pod_cidr():
    t = trace(snap_with({}, routes=lambda rs: [r for r in rs if r["dst"] != "10.244.2.0/24"]))
    f = found(t, "PodCidrRouteMissing")
    assert "no route for 10.244.2.0/24, the pod CIDR of node kind-worker2" in f.message
    assert f"endpoint {S.WEB2}:8080" in f.message
    assert t.extra["summary"].startswith("BROKEN at step 5 (forward): PodCidrRouteMissing")


def test_route_through_an_unexpected_device():
    def stray(rs):
        return [dict(r, dev="wg0") if r["dst"] == "10.244.2.0/24" else r for r in rs]
    f = found(trace(snap_with({}, routes=stray)), "PodCidrRouteUnexpectedDevice")
    assert f"routes {S.WEB2} (pod CIDR 10.244.2.0/24 of node kind-worker2) through wg0" in \
        f.message and "not through eth0" in f.message
    assert f.evidence == "route 10.244.2.0/24 via 172.18.0.4 dev wg0"


def bridged(rs):
    """The same node as a bridge CNI would route it: one subnet route on cni0."""
    rs = [r for r in rs if not r["dst"].startswith("10.244.1.")]
    return [*rs, {"dst": "10.244.1.0/24", "dev": "cni0", "protocol": "kernel", "scope": "link",
                  "prefsrc": "10.244.1.1", "flags": []}]


def test_bridge_nf_call_iptables_off_on_a_bridge_cni():
    off = {"sysctl.txt": sysctl(net_bridge_bridge_nf_call_iptables="0")}
    f = found(trace(snap_with(off, routes=bridged)), "BridgeNfCallIptablesOff")
    assert "net.bridge.bridge-nf-call-iptables = 0" in f.message
    assert f"bridge cni0 (10.244.1.0/24): the reply from {S.WEB1}:8080" in f.message
    unloaded = {"sysctl.txt": sysctl(net_bridge_bridge_nf_call_iptables=None,
                                     net_bridge_bridge_nf_call_ip6tables=None)}
    f = found(trace(snap_with(unloaded, routes=bridged)), "BridgeNfCallIptablesOff")
    assert "br_netfilter is not loaded" in f.message
    # on: nothing; ptp routing (the healthy node) with it off: nothing
    assert "BridgeNfCallIptablesOff" not in codes(trace(snap_with({"sysctl.txt": SYSCTL},
                                                                  routes=bridged)))
    assert "BridgeNfCallIptablesOff" not in codes(trace(snap_with(off)))


def test_every_node_code_is_documented_and_tested_here():
    assert NODE_CODES <= set(CODES)


def test_node_facts_in_the_json_with_rp_filter_of_the_paths_interfaces():
    text = sysctl(net_ipv4_conf_eth0_rp_filter="1") + \
        "/proc/sys/net/ipv4/conf/veth4/rp_filter:2\n/proc/sys/net/ipv4/conf/veth9/rp_filter:1\n"
    t = trace(snap_with({"sysctl.txt": text,
                         "conntrack-stats.txt": fixture("conntrack-stats-drops.txt"),
                         "kube-proxy-healthz.json": fixture("kube-proxy-healthz-ok.json")}))
    facts = t.extra["nodeFacts"]
    # client 10.244.1.20 via veth4, web-1 via veth3 (no sysctl line: not shown), web-2 via eth0
    assert facts["rpFilter"] == {"eth0": 1, "veth4": 2}
    assert facts["conntrack"] == {"count": 14, "max": 262144, "drop": 1, "early_drop": 0,
                                  "insert_failed": 1}
    assert facts["ipForward"] == 1 and facts["bridgeNfCallIptables"] == 1
    assert facts["kubeProxy"]["syncAgeSeconds"] == 0
    assert "nodeFacts" not in trace(S.load("healthy")).extra
