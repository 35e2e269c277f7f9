"""Diagnosis on an nftables-mode node: the same findings, with nftables' chain names.

The node's ruleset is what `nft list ruleset` prints for the rules kube-proxy's nftables
mode writes for the objects (kubectl_clusterip.nftables.expected); the kernel tests in
test_kernel_nftables.py check that listing against the real nft.
"""

from __future__ import annotations

import copy

import snapshots as S

from kubectl_clusterip.engine import Request, run_trace
from kubectl_clusterip.naming import nft_endpoint_chain
from kubectl_clusterip.nftables.expected import expected_ruleset, listing
from kubectl_clusterip.snapshot import NodeDumps, Snapshot


def nft_snapshot(case: str) -> Snapshot:
    """A stored case with its node switched to nftables mode (ConfigMap and ruleset)."""
    api, seen_by_proxy = S.CASES[case]()
    rules_for = copy.deepcopy(seen_by_proxy or api)
    for objs in (api, rules_for):
        S.find(objs, "ConfigMap", "kube-system", "kube-proxy")["data"]["config.conf"] = \
            S.PROXY_CONFIG.format(mode="nftables", detect="ClusterCIDR")
    text = listing(expected_ruleset(
        [o for o in rules_for if o["kind"] == "Service"],
        [o for o in rules_for if o["kind"] == "EndpointSlice"],
        S.find(rules_for, "Node", None, S.NODE), S._config(rules_for)))
    healthy = S.load("healthy").nodes[S.NODE].files
    files = {"nft-ruleset.txt": text, "proxy-mode": "nftables\n",
             "ip-addr.json": healthy["ip-addr.json"], "ip-route.json": healthy["ip-route.json"]}
    return Snapshot(S.base_meta(), api, {S.NODE: NodeDumps(S.NODE, files)}, case)


def trace(snap: Snapshot):
    (t,) = run_trace(snap, Request(target="shop/web"))
    return t


def test_healthy_nftables_node_has_no_warning_or_error():
    t = trace(nft_snapshot("healthy"))
    assert t.proxy_mode == "nftables" and t.verdict == "dnat"
    assert [c.ip for c in t.candidates] == [S.WEB1, S.WEB2]
    assert not [f for f in t.findings if f.severity in ("error", "warning")], t.findings
    assert t.candidates[0].extra.get("pod") == "web-1"


def test_stale_nftables_rules_name_the_endpoint_chains():
    t = trace(nft_snapshot("stale-rules"))
    codes = {f.code: f for f in t.findings}
    assert "StaleEndpointRules" in codes and "MissingEndpointRules" in codes
    assert S.STALE_OLD in codes["StaleEndpointRules"].evidence  # the dnat rule of the old pod
    missing = nft_endpoint_chain("shop/web:http", "tcp", f"{S.STALE_NEW}:8080")
    assert missing in codes["MissingEndpointRules"].evidence


def test_no_endpoints_on_an_nftables_node():
    t = trace(nft_snapshot("no-endpoints"))
    assert t.verdict == "reject"
    assert "NoEndpointsReject" in {f.code for f in t.findings}


def test_itp_local_without_local_endpoint_on_an_nftables_node():
    t = trace(nft_snapshot("itp-local-no-local"))
    assert t.verdict == "drop"
    assert "NoLocalEndpointsDrop" in {f.code for f in t.findings}
