"""A Cilium node in a snapshot (tests/data/snapshots/cilium: the API objects, the node's
iptables with CILIUM_* chains, and the agent's service list, BPF map and status): the real
trace, each Cilium finding, and API ↔ agent drift."""

from __future__ import annotations

import re

import snapshots as S
from click.testing import CliRunner
from test_diagnose import TESTED, codes, the, trace

from kubectl_clusterip.cli import main
from kubectl_clusterip.findings import CODES
from kubectl_clusterip.snapshot import NodeDumps, Snapshot, write_snapshot


def with_files(snap: Snapshot, **edits) -> Snapshot:
    """Node files changed: name=callable(text) edits, name=str replaces, name=None drops."""
    files = dict(snap.nodes[S.NODE].files)
    for key, edit in edits.items():
        name = key.replace("_", "-") + (".txt" if not key.endswith("json") else "")
        if edit is None:
            files.pop(name, None)
        else:
            files[name] = edit(files.get(name, "")) if callable(edit) else edit
    return Snapshot(snap.meta, snap.objects, {S.NODE: NodeDumps(S.NODE, files)}, snap.source)


def agent_edit(old: str, new: str):
    return lambda text: text.replace(old, new)


def test_a_cilium_node_is_traced_through_the_agent():
    t = trace(S.load("cilium"))
    assert t.proxy_mode == "cilium" and t.verdict == "dnat"
    assert {c.endpoint: c.probability for c in t.candidates} == {
        f"{S.WEB1}:8080": 0.5, f"{S.WEB2}:8080": 0.5}
    assert t.candidates[0].extra["pod"] == "web-1"
    assert not [f for f in t.findings if f.severity in ("error", "warning")], codes(t)
    assert t.extra["cilium"]["translation"] == "socket-LB connect()"
    assert "Socket LB Coverage:     Full" in t.extra["cilium"]["socketLBEvidence"]
    assert t.extra["summary"].startswith("OK: Cilium sends the request to a backend")


def test_without_the_agent_outputs_the_message_says_what_to_run():
    t = trace(S.without_cilium_outputs(S.load("cilium")))
    f = the(t, "KubeProxyReplaced")
    assert "cilium-dbg service list" in f.hint and codes(t) == ["KubeProxyReplaced"]
    assert t.extra["summary"].startswith("NOT TRACED")


def test_api_endpoint_the_agent_lacks():
    snap = with_files(S.load("cilium"), cilium_service_list=agent_edit(
        f"                                           2 => {S.WEB2}:8080/TCP (active)\n", ""))
    t = trace(snap)
    f = the(t, "CiliumBackendDrift")
    assert f"{S.WEB2}:8080" in f.message and "does not have" in f.message
    assert [c.endpoint for c in t.candidates] == [f"{S.WEB1}:8080"]
    assert t.extra["summary"].startswith("BROKEN at step 2 (rules): CiliumBackendDrift")


def test_agent_backend_the_api_dropped():
    def drop_web2(objs):
        sl = S.find(objs, "EndpointSlice", "shop", next(
            o["metadata"]["name"] for o in objs if o.get("kind") == "EndpointSlice"
            and o["metadata"]["namespace"] == "shop"))
        sl["endpoints"] = [e for e in sl["endpoints"] if S.WEB2 not in e["addresses"]]
    t = trace(S.mutate(S.load("cilium"), drop_web2))
    f = the(t, "CiliumBackendDrift")
    assert "still sends new connections" in f.message and f"{S.WEB2}:8080" in f.message


def test_backend_stuck_terminating_while_its_pod_is_ready():
    snap = with_files(S.load("cilium"), cilium_service_list=agent_edit(
        f"{S.WEB2}:8080/TCP (active)", f"{S.WEB2}:8080/TCP (terminating)"))
    t = trace(snap)
    assert "stuck terminating" in the(t, "CiliumBackendStuck").message
    assert "new connections go to it only when no active" in \
        the(t, "CiliumBackendExcluded").message
    assert [c.endpoint for c in t.candidates] == [f"{S.WEB1}:8080"]


def test_backend_quarantined_while_its_pod_is_ready():
    snap = with_files(S.load("cilium"), cilium_service_list=agent_edit(
        f"{S.WEB2}:8080/TCP (active)", f"{S.WEB2}:8080/TCP (quarantined)"))
    t = trace(snap)
    the(t, "CiliumBackendQuarantined")
    assert "stays quarantined" in the(t, "CiliumBackendStuck").message


def test_agent_knows_the_service_but_the_bpf_map_does_not():
    snap = with_files(S.load("cilium"), cilium_bpf_lb_list=lambda text: re.sub(
        r"10\.96\.120\.7:80/TCP.*\n(\s+\S+ \(1\) \(\d\)\n)+", "", text))
    t = trace(snap)
    assert t.verdict == "no-match"
    the(t, "CiliumServiceNotInBpfMap")
    assert t.extra["summary"].startswith("BROKEN at step 2 (rules): CiliumServiceNotInBpfMap")


def test_backend_id_missing_from_the_backend_map():
    snap = with_files(S.load("cilium"), cilium_bpf_lb_list=agent_edit(
        f"{S.WEB2}:8080/TCP (1) (2)", "backend 9 not found"))
    the(trace(snap), "CiliumBackendMissing")


def test_no_backend_drops_or_rejects_as_configured():
    def no_endpoints(objs):
        for o in objs:
            if o.get("kind") == "EndpointSlice" and o["metadata"]["namespace"] == "shop":
                o["endpoints"] = []
            if o.get("kind") == "Pod" and o["metadata"]["name"].startswith("web-"):
                o["status"]["conditions"] = [{"type": "Ready", "status": "False",
                                              "reason": "ContainersNotReady"}]
    snap = with_files(S.mutate(S.load("cilium"), no_endpoints), cilium_service_list=lambda t:
                      re.sub(r"1 => 10\.244\.1\.5.*\n.*\n", "\n", t, count=1),
                      cilium_bpf_lb_list=lambda t: re.sub(r" +10\.244\.[12]\.[57]:8080.*\n",
                                                          "", t))
    t = trace(snap)
    assert t.verdict == "reject"  # 1.17 default: ICMP destination unreachable
    f = the(t, "CiliumNoBackend")
    assert "ICMP" in f.message and "NoReadyPods" in codes(t)

    def drop_mode(objs):
        S.find(objs, "ConfigMap", "kube-system", "cilium-config")["data"][
            "service-no-backend-response"] = "drop"
    t = trace(S.mutate(snap, drop_mode))
    assert t.verdict == "drop" and "DROP_NO_SERVICE" in the(t, "CiliumNoBackend").message


def test_pods_bypass_socket_lb_with_hostns_only_coverage():
    snap = with_files(S.load("cilium"), cilium_status=agent_edit(
        "Socket LB Coverage:     Full", "Socket LB Coverage:     Hostns-only"))
    t = trace(snap)
    the(t, "CiliumSocketLBBypassed")
    assert t.extra["cilium"]["translation"] == "bpf_lxc from-container"
    assert t.reverse[0]["revNat"] == {"id": 1, "address": "10.96.120.7:80"}
    # A host-network client is still translated at connect().
    t = trace(snap, from_host=True)
    assert "CiliumSocketLBBypassed" not in codes(t)


def test_stale_service_conntrack_entry_to_a_gone_backend():
    ct = ("TCP OUT 10.244.1.20:40112 -> 10.244.1.9:8080 expires=16773 Packets=0 Bytes=0 "
          "RxFlagsSeen=0x1b LastRxReport=16763 TxFlagsSeen=0x1b LastTxReport=16763 "
          "Flags=0x0013 [ RxClosing TxClosing SeenNonSyn ] RevNAT=1 SourceSecurityID=0 "
          "BackendID=0\n"
          "TCP OUT 10.244.1.20:40114 -> 10.244.1.5:8080 expires=16773 Packets=0 Bytes=0 "
          "RxFlagsSeen=0x1b LastRxReport=16763 TxFlagsSeen=0x1b LastTxReport=16763 "
          "Flags=0x0013 [ RxClosing TxClosing SeenNonSyn ] RevNAT=1 SourceSecurityID=0 "
          "BackendID=0\n")
    t = trace(with_files(S.load("cilium"), cilium_bpf_ct_global=ct))
    f = the(t, "CiliumStaleConntrack")
    assert "1 conntrack entry" in f.message and "10.244.1.9:8080" in f.evidence


def test_cli_offline_snapshot_and_exit_codes(tmp_path):
    snap = with_files(S.load("cilium"), cilium_bpf_lb_list=agent_edit(
        f"{S.WEB2}:8080/TCP (1) (2)", "backend 9 not found"))
    write_snapshot(snap, str(tmp_path / "s"))
    r = CliRunner().invoke(main, ["trace", "shop/web", "--snapshot", str(tmp_path / "s")])
    assert r.exit_code == 1 and "CiliumBackendMissing" in r.output
    r = CliRunner().invoke(main, ["trace", "shop/web", "--snapshot", str(S.DATA / "cilium")])
    assert r.exit_code == 0 and "Cilium reverses the translation" in r.output


def test_every_cilium_code_has_a_test():
    """Runs last: every Cilium code was produced above (the corpus tests produce them from
    real outputs too)."""
    assert {c for c in CODES if c.startswith("Cilium")} <= TESTED | {
        "CiliumBackendExcluded", "CiliumBackendQuarantined"} and \
        {"CiliumBackendExcluded", "CiliumBackendQuarantined"} <= TESTED
