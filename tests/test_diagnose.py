"""One test per finding code, each from a stored snapshot (tests/data/snapshots, node dumps
read back from the kernel) or a healthy one plus one mutation; and the healthy snapshot
itself, which must raise nothing above info."""

from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import snapshots as S
from test_node_facts import NODE_CODES

from kubectl_clusterip.engine import Request, run_trace
from kubectl_clusterip.findings import CODES, FindingError
from kubectl_clusterip.model import Finding, Trace
from kubectl_clusterip.naming import endpoint_chain, service_chain
from kubectl_clusterip.snapshot import NodeDumps, Snapshot

TESTED: set[str] = set()


def trace(snap: Snapshot, target: str | None = "shop/web", **kw) -> Trace:
    traces = run_trace(snap, Request(target=target, **kw))
    assert len(traces) == 1
    return traces[0]


def the(t: Trace, code: str) -> Finding:
    """The one finding with this code; records that the code has a test."""
    TESTED.add(code)
    got = [f for f in t.findings if f.code == code]
    assert len(got) == 1, f"{code} not raised once: {[f.code for f in t.findings]}"
    f = got[0]
    assert (f.severity, f.step) == CODES[code]
    return f


def codes(t: Trace) -> list[str]:
    return [f.code for f in t.findings]


def with_dump(snap: Snapshot, edit) -> Snapshot:
    """The snapshot with the node's iptables-save text changed by `edit`."""
    files = dict(snap.nodes[S.NODE].files)
    files["iptables-save.txt"] = edit(files["iptables-save.txt"])
    return Snapshot(snap.meta, snap.objects, {S.NODE: NodeDumps(S.NODE, files)}, snap.source)


# -- healthy -----------------------------------------------------------------------------------


def test_healthy_snapshot_has_no_warning_or_error():
    t = trace(S.load("healthy"))
    assert t.verdict == "dnat"
    assert [f for f in t.findings if f.severity != "info"] == []
    assert t.extra["summary"].startswith("OK:")
    assert t.extra["expected"] == {"status": "ok", "chain": "KUBE-SVC-67NZLRHBNDSAWJRO",
                                   "endpoints": ["10.244.1.5:8080", "10.244.2.7:8080"]}
    by_ip = {c.ip: c.extra for c in t.candidates}
    assert by_ip[S.WEB1].items() >= {"pod": "web-1", "podNamespace": "shop", "node": S.NODE,
                                     "ready": True, "terminating": False,
                                     "sameNode": True}.items()
    assert by_ip[S.WEB2]["node"] == S.NODE2 and by_ip[S.WEB2]["sameNode"] is False
    assert t.extra["cni"].startswith("kindnet")
    assert t.extra["dnsSummary"].startswith("web.shop -> web.shop.svc.cluster.local A 10.96")


def test_chain_names_in_real_dumps_match_the_hash():
    """Every SEP chain the kernel-read dump DNATs through has the name naming.py computes
    (the reference's worked example shop/web:http), so drift is judged on real names."""
    t = trace(S.load("healthy"))
    assert t.capture[-1].rule.endswith("-j " + service_chain("shop/web:http", "tcp"))
    assert service_chain("shop/web:http", "tcp") == "KUBE-SVC-67NZLRHBNDSAWJRO"
    for c in t.candidates:
        assert c.extra["dnatChain"] == endpoint_chain("shop/web:http", "tcp", c.endpoint)
    assert {c.extra["dnatChain"] for c in t.candidates} == {"KUBE-SEP-34ZZ2QFGO32YYXXO",
                                                            "KUBE-SEP-DYSIX5QMVXZZP7LU"}
    dns = trace(S.load("healthy"), "kube-system/kube-dns:dns")
    assert dns.capture[-1].rule.endswith("-j KUBE-SVC-TCOU7JCQXEZGVUNU")  # real clusters' name


# -- step 1: the Service ------------------------------------------------------------------------


def test_service_not_found_suggests_near_names_and_namespaces():
    snap = S.load("healthy")
    with pytest.raises(FindingError) as e:
        trace(snap, "shop/webb")
    f = e.value.finding
    TESTED.add(f.code)
    assert f.code == "ServiceNotFound" and (f.severity, f.step) == CODES[f.code]
    assert "did you mean shop/web?" in f.message
    assert f.evidence == "Services in namespace shop: web"
    assert f.hint == "kubectl clusterip trace shop/web"
    with pytest.raises(FindingError) as e:
        trace(snap, "default/web")
    assert "exists in namespace shop" in e.value.finding.message
    assert e.value.finding.evidence == "no Service in namespace default"


def test_port_mismatch_for_an_address_and_for_a_named_port():
    snap = S.load("healthy")
    t = trace(snap, None, to="10.96.120.7:8080")
    f = the(t, "PortMismatch")
    assert f.evidence == "spec.ports: http 80/TCP"
    assert "NoServiceRule" in codes(t)
    with pytest.raises(FindingError) as e:
        trace(snap, "shop/web:443")
    assert e.value.finding.code == "PortMismatch" and "port 443" in e.value.finding.message
    with pytest.raises(FindingError) as e:
        trace(snap, "shop/web", protocol="udp")
    assert "protocol UDP" in e.value.finding.message


def test_selector_matches_no_pods():
    def edit(objs):
        S.find(objs, "Service", "shop", "web")["spec"]["selector"] = {"app": "webapp"}
        S.set_web_endpoints(objs, [])
    t = trace(S.mutate(S.load("no-endpoints"), edit))
    f = the(t, "SelectorMatchesNoPods")
    assert f.evidence == "spec.selector: app=webapp"
    assert "web-1 (app=web)" in f.message
    assert t.extra["summary"].startswith("BROKEN at step 1 (service): SelectorMatchesNoPods")


def test_pods_exist_but_none_ready():
    t = trace(S.load("no-endpoints"))
    f = the(t, "NoReadyPods")
    assert "pod shop/web-1: Ready=False (ContainersNotReady" in f.evidence
    assert f.hint == "kubectl describe pod -n shop web-1"


def test_named_target_port_not_found():
    def edit(objs):
        for name in ("web-1", "web-2"):
            p = S.find(objs, "Pod", "shop", name)
            p["status"]["conditions"][0] = {"type": "Ready", "status": "True"}
            p["spec"]["containers"][0]["ports"] = [{"name": "web", "containerPort": 8080}]
        sl = S.find(objs, "EndpointSlice", "shop", "web-x7k2p")
        sl["endpoints"] = [S.endpoint(S.WEB1, "shop", "web-1", S.NODE)]
        sl["ports"] = []  # the controller could not resolve the named port
    t = trace(S.mutate(S.load("no-endpoints"), edit))
    f = the(t, "NamedPortNotFound")
    assert f.evidence == "spec.ports[0].targetPort: http; pod shop/web-1 declares: web 8080/TCP"
    assert "NoReadyPods" not in codes(t)


# -- step 2: the node's rules -------------------------------------------------------------------


def test_no_service_rule_for_an_unknown_address():
    f = the(trace(S.load("healthy"), None, to="10.96.200.200:80"), "NoServiceRule")
    assert f.evidence == ("no nat KUBE-SERVICES rule matches 10.96.200.200:80/TCP; "
                          "no Service in the snapshot has ClusterIP 10.96.200.200")


def test_dropped_by_a_foreign_rule():
    """Before DNAT (raw PREROUTING): the request never reaches kube-proxy's dispatch."""
    rule = f"-A PREROUTING -d {S.CIP}/32 -m comment --comment \"site policy\" -j DROP"
    raw = f"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rule}\nCOMMIT\n"
    t = trace(with_dump(S.load("healthy"), lambda text: raw + text))
    f = the(t, "DroppedByRule")
    assert f.evidence == rule and "DroppedAfterDnat" not in codes(t)


def test_dropped_after_dnat_by_a_foreign_rule():
    """After DNAT (filter FORWARD, every endpoint): an error at forwarding, not drift.
    tests/test_dropped_after_dnat.py has the kube-router policy case (some endpoints)."""
    rule = "-A FORWARD -d 10.244.0.0/16 -m comment --comment \"site policy\" -j DROP"
    snap = with_dump(S.load("healthy"),
                     lambda text: text.replace("-A FORWARD ", rule + "\n-A FORWARD ", 1))
    t = trace(snap)
    f = the(t, "DroppedAfterDnat")
    assert f.evidence == rule and "dropped by filter FORWARD" in f.message
    assert {"MissingEndpointRules", "PartialDispatch", "DroppedByRule"}.isdisjoint(codes(t))
    assert t.extra["summary"].startswith("BROKEN at step 5 (forward): DroppedAfterDnat")


def test_undecided_match_bridge_detector():
    t = trace(S.load("bridge-detector"))
    f = the(t, "UndecidedMatch")
    assert "! -i cni0" in f.message and "KUBE-SVC-67NZLRHBNDSAWJRO" in f.message


def test_service_not_programmed_names_the_missing_chain():
    def edit(objs):
        objs += [S.service("shop", "api", "10.96.33.3",
                           [{"name": "http", "port": 80, "protocol": "TCP",
                             "targetPort": 8080}], {"app": "api"}),
                 S.pod("shop", "api-1", "10.244.1.30", S.NODE, {"app": "api"}),
                 S.endpoint_slice("shop", "api", [S.endpoint("10.244.1.30", "shop", "api-1",
                                                             S.NODE)],
                                  [{"name": "http", "port": 8080, "protocol": "TCP"}])]
    t = trace(S.mutate(S.load("healthy"), edit), "shop/api")
    f = the(t, "ServiceNotProgrammed")
    chain = service_chain("shop/api:http", "tcp")
    assert f"jumping to {chain}" in f.evidence and f"missing nat chains: {chain}" in f.evidence
    assert "NoServiceRule" in codes(t)


def test_stale_rules_and_missing_endpoint_rules():
    t = trace(S.load("stale-rules"))
    stale = the(t, "StaleEndpointRules")
    assert stale.evidence == ('-A KUBE-SEP-MCTKD62NLNFFFI4W -p tcp -m comment --comment '
                              '"shop/web:http" -m tcp -j DNAT --to-destination 10.244.1.6:8080')
    missing = the(t, "MissingEndpointRules")
    chain = endpoint_chain("shop/web:http", "tcp", f"{S.STALE_NEW}:8080")
    assert missing.evidence == f"missing nat chains: {chain}"
    assert "pod shop/web-1b" in missing.message
    assert t.candidates[0].extra["inAPI"] is False
    assert t.extra["summary"].startswith("BROKEN at step 2 (rules): StaleEndpointRules")


def test_rules_for_a_deleted_service_are_stale():
    snap = S.mutate(S.load("healthy"), lambda objs: S.drop(objs, "Service", "shop", "web"))
    f = the(trace(snap, None, to="10.96.120.7:80"), "StaleEndpointRules")
    assert '"shop/web:http cluster IP"' in f.evidence


def test_no_kube_proxy_with_its_daemonset_present():
    t = trace(S.load("no-kube-proxy"))
    f = the(t, "NoKubeProxy")
    assert "DaemonSet kube-system/kube-proxy (ready 2/2)" in f.evidence
    assert "spec.nodeName=kind-worker" in f.hint
    assert codes(t) == ["NoKubeProxy"]


def test_kube_proxy_replaced_by_cilium():
    t = trace(S.without_cilium_outputs(S.load("cilium")))
    f = the(t, "KubeProxyReplaced")
    assert "Cilium" in f.message
    assert "CILIUM_* chains in the dump" in f.evidence
    assert "cilium-config kube-proxy-replacement: true" in f.evidence
    assert codes(t) == ["KubeProxyReplaced"]
    assert t.extra["summary"].startswith("NOT TRACED")


def test_proxy_mode_differs_from_configmap():
    def edit(objs):
        cm = S.find(objs, "ConfigMap", "kube-system", "kube-proxy")
        cm["data"]["config.conf"] = S.PROXY_CONFIG.format(mode="ipvs", detect="ClusterCIDR")
    f = the(trace(S.mutate(S.load("healthy"), edit)), "ProxyModeMismatch")
    assert f.evidence == ("ConfigMap kube-system/kube-proxy config.conf mode: ipvs; "
                          "nodes/kind-worker/proxy-mode: iptables")


# -- step 3: DNS --------------------------------------------------------------------------------


def test_dns_short_name_from_another_namespace():
    snap = S.load("healthy")
    snap.meta["dns"] = {
        "query": "web", "fqdn": "web.default.svc.cluster.local",
        "searchPath": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        "ndots": 5, "server": S.DNS_IP, "error": None,
        "answers": [{"name": n, "type": "A", "rcode": "NXDOMAIN", "records": []}
                    for n in ("web.default.svc.cluster.local", "web.svc.cluster.local",
                              "web.cluster.local", "web.")]}
    t = trace(snap)
    f = the(t, "DnsNotResolved")
    assert "the client's namespace is default" in f.message and "ask for web.shop" in f.message
    assert f.evidence.startswith("web.default.svc.cluster.local A NXDOMAIN")
    assert "does not resolve" in t.extra["dnsSummary"]


def test_dns_timeout():
    snap = S.load("healthy")
    snap.meta["dns"] = S.dns_ok() | {"answers": [], "error": "timed out after 5s"}
    f = the(trace(snap), "DnsNotResolved")
    assert f.evidence == "error: timed out after 5s"


def test_dns_answers_another_address():
    snap = S.load("healthy")
    snap.meta["dns"] = S.dns_ok("web") | {"answers": [
        {"name": "web.shop.svc.cluster.local", "type": "A", "rcode": "NOERROR",
         "records": ["10.96.5.5"]}]}
    f = the(trace(snap), "DnsWrongAddress")
    assert "resolves to 10.96.5.5, not the ClusterIP 10.96.120.7" in f.message
    assert f.evidence == "web.shop.svc.cluster.local A NOERROR 10.96.5.5"


def test_no_coredns_pod_ready():
    def edit(objs):
        for o in objs:
            if o["kind"] == "Pod" and o["metadata"]["name"].startswith("coredns"):
                o["status"]["conditions"] = [{"type": "Ready", "status": "False",
                                              "reason": "ContainersNotReady"}]
    f = the(trace(S.mutate(S.load("healthy"), edit)), "NoCoreDNSReady")
    assert "pod kube-system/coredns-7db6d8ff4d-9xw2m: Ready=False (ContainersNotReady)" in \
        f.evidence


# -- step 4: DNAT ---------------------------------------------------------------------------------


def test_no_endpoints_reject():
    f = the(trace(S.load("no-endpoints")), "NoEndpointsReject")
    assert f.evidence.endswith('"shop/web:http has no endpoints" -m tcp --dport 80 -j REJECT '
                               "--reject-with icmp-port-unreachable")


def test_itp_local_without_local_endpoint_drops():
    t = trace(S.load("itp-local-no-local"))
    f = the(t, "NoLocalEndpointsDrop")
    assert f.evidence.endswith('"shop/web:http has no local endpoints" -m tcp --dport 80 -j DROP')
    assert "10.244.2.7:8080 on kind-worker2" in f.hint
    assert [x for x in codes(t) if CODES[x][0] == "error"] == ["NoLocalEndpointsDrop"]


def test_partial_dispatch():
    def edit(text: str) -> str:  # a half-written SVC chain: its last dispatch rule is gone
        return "\n".join(line for line in text.splitlines()
                         if "shop/web:http -> 10.244.2.7:8080" not in line) + "\n"
    f = the(trace(with_dump(S.load("healthy"), edit)), "PartialDispatch")
    assert "50.0%" in f.message and f.evidence


def test_session_affinity_evidence():
    f = the(trace(S.load("session-affinity")), "SessionAffinity")
    assert f.evidence.startswith("spec.sessionAffinityConfig.clientIP.timeoutSeconds: 10800 | ")
    assert "-m recent --set --name KUBE-SEP-" in f.evidence
    assert re.search(r"cat /proc/net/xt_recent/KUBE-SEP-\w{16}", f.hint)


def test_topology_hints_filter_this_node():
    t = trace(S.load("topology"))
    f = the(t, "TopologyFiltered")
    assert "limit node kind-worker to 1 of 2" in f.message
    assert f.evidence.startswith("node kind-worker topology.kubernetes.io/zone=zone-a; "
                                 "10.244.1.5:8080 forZones=['zone-a']")
    assert [c.ip for c in t.candidates] == [S.WEB1]
    assert not [x for x in t.findings if x.severity == "error"]


def test_topology_hints_ignored_when_none_is_for_this_zone():
    def edit(objs):
        S.set_web_endpoints(objs, [S.endpoint(S.WEB1, "shop", "web-1", S.NODE, hints=["zone-b"]),
                                   S.endpoint(S.WEB2, "shop", "web-2", S.NODE2,
                                              hints=["zone-b"])])
    t = trace(S.mutate(S.load("healthy"), edit))
    f = the(t, "TopologyHintsIgnored")
    assert "no endpoint is hinted for zone zone-a" in f.message
    assert "forZones=['zone-b']" in f.evidence
    assert [x.code for x in t.findings if x.severity == "error"] == []


def test_stale_udp_conntrack_entry():
    snap = S.load("healthy")
    line = ("udp      17 24 src=10.244.1.20 dst=10.96.0.10 sport=40123 dport=53 [UNREPLIED] "
            "src=10.244.2.9 dst=10.244.1.20 sport=53 dport=40123 mark=0 use=1")
    fresh = ("udp      17 28 src=10.244.1.20 dst=10.96.0.10 sport=40999 dport=53 "
             "src=10.244.2.3 dst=10.244.1.20 sport=53 dport=40999 mark=0 use=1")
    snap.nodes[S.NODE].files["conntrack.txt"] = f"{fresh}\n{line}\n"
    t = trace(snap, "kube-system/kube-dns:dns")
    f = the(t, "StaleConntrack")
    assert f.evidence == line
    assert "--reply-src 10.244.2.9" in f.hint
    assert "StaleConntrack" not in codes(trace(snap, "kube-system/kube-dns:dns-tcp"))
    # the snapshot's DNS lookup was for shop/web: not held against kube-dns
    assert t.extra["dnsSummary"] == "not checked (the snapshot's lookup is for shop/web)"
    assert not [x for x in codes(t) if x.startswith("Dns")]


# -- step 6: reply ------------------------------------------------------------------------------


def test_hairpin_when_the_client_is_an_endpoint():
    t = trace(S.load("healthy"), source_ip=S.WEB1)
    f = the(t, "Hairpin")
    assert f.evidence.startswith("-A KUBE-SEP-34ZZ2QFGO32YYXXO -s 10.244.1.5/32")
    web1 = next(c for c in t.candidates if c.ip == S.WEB1)
    assert web1.masquerade and web1.snat_ip == "10.244.1.1"  # the veth gateway of the node


def test_every_code_has_a_test():
    """Runs last in this file: each code in the public contract was produced above, but
    the IPVS-only codes, which tests/test_ipvs_walk.py produces from IPVS dumps, the
    NetworkPolicy ones (tests/test_diagnose_policy.py), the node's (test_node_facts.py), the
    partial-paste ones (tests/test_iptables_shapes.py), the Cilium ones
    (tests/test_cilium_*.py checks its own) and the probe's (tests/test_probe.py checks it
    produces every one of them)."""
    from test_probe import PROBE_CODES
    elsewhere = {"IpvsSchedulerState", "IpvsDrainingRealServer", "NetworkPolicyDeniesIngress",
                 "NetworkPolicyDeniesEgress", "NetworkPolicyAllows", "NetworkPolicyNotEnforced",
                 "NetworkPolicyDeniesDns", "PasteAssumption", "KubeProxyChainsUnreachable"
                 } | NODE_CODES | PROBE_CODES
    assert {c for c in set(CODES) - TESTED if not c.startswith("Cilium")} == elsewhere
