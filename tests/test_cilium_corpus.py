"""Real Cilium outputs (tests/data/cilium, sources in its README) traced by the cilium
dataplane; each expectation below was worked out by hand from the output and Cilium's
selection rules (bpf/lib/lb.h: an equal share for each active backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubectl_clusterip.cilium.parse import parse_bpf_lb
from kubectl_clusterip.cilium.status import parse_ct, parse_status
from kubectl_clusterip.cli import main
from kubectl_clusterip.dumps import build_dataplanes, detect_format
from kubectl_clusterip.model import ClusterIPError, Node, Packet

DATA = Path(__file__).parent / "data" / "cilium"
POD = "10.244.0.20"


def trace(files: list[str], ip: str, port: int, proto: str = "tcp", src: str = POD,
          node: Node | None = None, from_host: bool = False, edit=None):
    dumps = []
    for f in files:
        text = (DATA / f).read_text()
        dumps.append((f, edit(text) if edit and f == files[0] else text))
    dps = build_dataplanes(dumps)
    fam = 6 if ":" in ip else 4
    dp = next(d for d in dps if d.family == fam)
    return dp.trace(Packet(src, ip, port, proto, 40000, from_host), node)


def shares(t) -> dict[str, float]:
    return {c.endpoint: round(c.probability, 6) for c in t.candidates}


def codes(t) -> list[str]:
    return sorted(f.code for f in t.findings)


@pytest.mark.parametrize("name,fmt", [
    ("service-list-1.10.txt", "cilium-services"),
    ("service-list-1.12-quarantined.txt", "cilium-services"),
    ("service-get-1.14-maintenance.txt", "cilium-services"),
    ("service-list-1.19-proto.txt", "cilium-services"),
    ("service-list-noid.txt", "cilium-services"),
    ("service-list-constructed.json", "cilium-services"),
    ("db-show-graceful-termination.txt", "cilium-services"),
    ("db-show-quarantined.txt", "cilium-services"),
    ("bpf-lb-list-1.10.txt", "cilium-lb"),
    ("bpf-lb-list-1.16-slot.txt", "cilium-lb"),
    ("status-1.7.txt", "cilium-status"),
    ("status-verbose-1.13-disabled.txt", "cilium-status"),
    ("status-verbose-1.14-full.txt", "cilium-status"),
    ("status-verbose-1.14-hostns-only.txt", "cilium-status"),
    ("ct-list-global.txt", "cilium-ct"),
])
def test_format_is_read_from_content(name, fmt):
    assert detect_format((DATA / name).read_text()) == fmt


def test_1_10_list_without_states_or_protocols():
    # One backend, no state column (all active), no /TCP: the frontend serves any protocol.
    t = trace(["service-list-1.10.txt"], "10.96.0.10", 53, "udp")
    assert t.verdict == "dnat" and t.proxy_mode == "cilium"
    assert shares(t) == {"10.0.1.21:53": 1.0}
    # No status given: socket-LB is assumed (kube-proxy replacement's default) and said so.
    assert t.reverse[0]["socketLB"] is True and t.reverse[0]["conntrack"] is None
    assert "assumed" in t.extra["cilium"]["socketLBEvidence"]
    # Service 1 has no backend at all: no selectable backend, drop or ICMP by version.
    t = trace(["service-list-1.10.txt"], "10.107.224.229", 3000)
    assert t.verdict == "reject" and codes(t) == ["CiliumNoBackend"]
    assert "before 1.15" in t.findings[0].message and "1.15+" in t.findings[0].message


def test_quarantined_backend_is_never_picked_and_per_packet_lb_when_hostns_only():
    t = trace(["service-list-1.12-quarantined.txt", "status-verbose-1.14-hostns-only.txt"],
              "10.96.95.246", 80)
    assert shares(t) == {"10.244.1.59:80": 0.5, "10.244.1.8:80": 0.5}
    assert codes(t) == ["CiliumBackendQuarantined", "CiliumSocketLBBypassed"]
    assert t.steps[0].chain == "bpf_lxc from-container"
    # Per-packet LB: the reply is reversed by the revNAT id (= service ID 4 in the list).
    rev = t.reverse[0]
    assert rev["revNat"]["id"] == 4 and rev["conntrack"] is None
    assert rev["ciliumCT"][1].startswith("TCP OUT 10.244.0.20:40000 -> 10.244.1.59:80")
    # A host-network client still goes through socket-LB.
    t = trace(["service-list-1.12-quarantined.txt", "status-verbose-1.14-hostns-only.txt"],
              "10.96.95.246", 80, from_host=True, src="172.18.0.2")
    assert t.steps[0].chain == "socket-LB connect()" and "CiliumSocketLBBypassed" not in codes(t)


def test_maintenance_backend_is_excluded_from_a_service_get():
    t = trace(["service-get-1.14-maintenance.txt"], "10.32.95.217", 6379)
    assert shares(t) == {"10.246.1.34:42069": 0.5, "10.246.3.34:42069": 0.5}
    excluded = t.extra["cilium"]["excluded"]
    assert [e["endpoint"] for e in excluded] == ["10.249.92.40:42069"]
    assert "maintenance" in excluded[0]["why"] and codes(t) == ["CiliumBackendExcluded"]


def test_per_protocol_frontends_of_current_cilium_dbg():
    udp = trace(["service-list-1.19-proto.txt"], "10.96.0.10", 53, "udp")
    tcp = trace(["service-list-1.19-proto.txt"], "10.96.0.10", 53, "tcp")
    assert shares(udp) == shares(tcp) == {"10.244.1.69:53": 0.5, "10.244.1.109:53": 0.5}
    assert udp.extra["cilium"]["frontend"] == "10.96.0.10:53/UDP"
    assert "recvmsg()" in udp.reverse[0]["explanation"]
    # Only TCP and UDP frontends exist for :53: SCTP is not translated.
    t = trace(["service-list-1.19-proto.txt"], "10.96.0.10", 53, "sctp")
    assert t.verdict == "no-match" and codes(t) == ["NoServiceRule"]


def test_list_without_id_column():
    t = trace(["service-list-noid.txt"], "10.0.1.2", 80)
    assert shares(t) == {"172.29.1.3:80": 0.5, "172.29.1.4:80": 0.5}


def test_bpf_lb_list_old_format_revnat_only():
    entries, _, _ = parse_bpf_lb((DATA / "bpf-lb-list-1.10.txt").read_text())
    e = next(e for e in entries if e.ip == "10.254.162.28")
    assert e.revnat == 59 and e.flags == ("ClusterIP", "non-routable")
    assert [s.slot for s in e.slots] == [None, None, None]
    t = trace(["bpf-lb-list-1.10.txt", "status-verbose-1.13-disabled.txt"], "10.254.162.28",
              8080)
    assert shares(t) == {"192.168.214.171:8080": 0.333333, "192.168.154.116:8080": 0.333333,
                         "192.168.177.116:8080": 0.333333}
    assert t.reverse[0]["revNat"]["id"] == 59  # socket-LB disabled: per packet
    # The 0.0.0.0:0 master row sits between backend rows in 10.254.39.41's listing.
    t = trace(["bpf-lb-list-1.10.txt"], "10.254.39.41", 8080)
    assert len(t.candidates) == 3 and "192.168.154.80:8680" in shares(t)


def test_bpf_lb_list_with_slot_column_and_internal_local():
    entries, _, _ = parse_bpf_lb((DATA / "bpf-lb-list-1.16-slot.txt").read_text())
    e = next(e for e in entries if e.ip == "10.96.252.10")
    assert e.master.slot == 0 and e.revnat == 22 and "InternalLocal" in e.flags
    t = trace(["bpf-lb-list-1.16-slot.txt"], "10.96.252.10", 443)
    assert shares(t) == {"172.18.0.2:4244": 1.0}
    assert any("internalTrafficPolicy Local" in n for n in t.notes)


def test_agent_knows_a_service_the_bpf_map_lacks():
    # Two real outputs from different clusters side by side: 10.96.0.1:443 is in both,
    # 10.96.0.10:53/UDP only in the agent's list.
    files = ["service-list-1.19-proto.txt", "bpf-lb-list-1.16-slot.txt"]
    t = trace(files, "10.96.0.1", 443)
    assert t.verdict == "dnat" and shares(t) == {"172.19.0.2:6443": 1.0}
    assert t.reverse[0]["socketLB"] is True
    t = trace(files, "10.96.0.10", 53, "udp")
    assert t.verdict == "no-match" and codes(t) == ["CiliumServiceNotInBpfMap"]


def test_db_show_tables_terminating_backend_and_graceful_fallback():
    t = trace(["db-show-graceful-termination.txt"], "10.96.116.33", 8081)
    assert t.service == "test/graceful-term-svc"
    assert shares(t) == {"10.244.0.113:8081": 1.0}
    assert codes(t) == ["CiliumBackendExcluded"]
    # Both terminating (the txtar's third step): they serve new connections again.
    both = trace(["db-show-graceful-termination.txt"], "10.96.116.33", 8081, edit=lambda s: s.replace(
        "test/graceful-term-svc                 graceful",
        "test/graceful-term-svc [terminating]   graceful"))
    assert shares(both) == {"10.244.0.112:8081": 0.5, "10.244.0.113:8081": 0.5}
    assert any("graceful termination" in n for n in both.notes)


def test_db_show_unhealthy_is_quarantined():
    t = trace(["db-show-quarantined.txt"], "10.96.50.104", 80)
    assert t.service == "test/echo:http"
    assert shares(t) == {"10.244.1.1:80": 1.0}
    assert codes(t) == ["CiliumBackendQuarantined"]


def test_json_states_weights_and_internal_traffic_policy_local():
    t = trace(["service-list-constructed.json"], "10.96.120.15", 80)
    assert t.service == "default/web"
    assert shares(t) == {"10.244.1.5:8080": 0.5, "10.244.2.7:8080": 0.5}
    assert t.candidates[0].extra["node"] == "kind-worker"
    t = trace(["service-list-constructed.json"], "10.96.33.4", 6379,
              node=Node(name="kind-worker"))
    assert shares(t) == {"10.244.1.6:6379": 1.0}
    assert "internalTrafficPolicy Local" in t.extra["cilium"]["excluded"][0]["why"]
    # No local backend: nothing selectable on this node.
    t = trace(["service-list-constructed.json"], "10.96.33.4", 6379, node=Node(name="kind-cp"))
    assert t.verdict == "reject" and "CiliumNoBackend" in codes(t)


def test_status_versions():
    full = parse_status((DATA / "status-verbose-1.14-full.txt").read_text())
    assert full.pods_use_socket_lb() is True and full.backend_selection == "Random"
    off = parse_status((DATA / "status-verbose-1.13-disabled.txt").read_text())
    assert off.socket_lb is False and off.pods_use_socket_lb() is False
    hostns = parse_status((DATA / "status-verbose-1.14-hostns-only.txt").read_text())
    assert hostns.pods_use_socket_lb() is False
    old = parse_status((DATA / "status-1.7.txt").read_text())
    assert old.mode == "Probe" and old.pods_use_socket_lb() is True


def test_ct_list_service_entries():
    entries = parse_ct((DATA / "ct-list-global.txt").read_text())
    assert [(e.kind, e.dst, e.dport, e.revnat, e.backend_id) for e in entries] == [
        ("SVC", "2a03:3f40:88:1::24", 80, 218, 98)] * 2


def test_no_backend_response_from_the_config():
    dps = build_dataplanes([("l", (DATA / "service-list-1.10.txt").read_text())])
    dps[0].configure({"service-no-backend-response": "drop"})
    t = dps[0].trace(Packet(POD, "10.107.224.229", 3000))
    assert t.verdict == "drop" and "DROP_NO_SERVICE" in t.findings[0].message


def test_cli_json_contract():
    r = CliRunner().invoke(main, ["trace", "--rules-file",
                                  str(DATA / "service-list-1.19-proto.txt"), "--to",
                                  "10.96.0.10:53", "--protocol", "udp", "--source-ip", POD,
                                  "-o", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    doc = out[0] if isinstance(out, list) else out
    assert doc["proxyMode"] == "cilium" and doc["verdict"] == "dnat"
    assert sum(d["probability"] for d in doc["dnat"]) == pytest.approx(1.0)
    assert doc["cilium"]["translation"].startswith("socket-LB")


def test_unreadable_output_is_one_line():
    bad = "ID   Frontend   Service Type   Backend\n1    nonsense   ClusterIP\n"
    with pytest.raises(ClusterIPError, match="not an address"):
        build_dataplanes([("x", bad)])


def test_backend_missing_from_the_backend_map():
    # bpf_lb_list.go prints "backend %d not found" for a slot whose id the backend map lacks.
    text = ("SERVICE ADDRESS     BACKEND ADDRESS (REVNAT_ID) (SLOT)\n"
            "10.96.0.1:443       172.18.0.3:6443 (1) (1)\n"
            "                    backend 7 not found\n"
            "                    0.0.0.0:0 (1) (0) [ClusterIP, non-routable]\n")
    dp = build_dataplanes([("lb", text)])[0]
    t = dp.trace(Packet(POD, "10.96.0.1", 443))
    assert "CiliumBackendMissing" in codes(t)
    assert "backend 7 not found" in next(f for f in t.findings
                                         if f.code == "CiliumBackendMissing").evidence


def test_stale_service_conntrack_entries():
    # The ct paste's service (2a03:3f40:88:1::24:80, revNAT 218) with backend 98 chosen;
    # a backend map (`bpf lb list --backends`) that no longer holds id 98.
    svc = ("ID   Frontend                    Service Type   Backend\n"
           "218  [2a03:3f40:88:1::24]:80/TCP ClusterIP      1 => [fd00::5]:8080/TCP (active)\n")
    backends = "ID   BACKEND ADDRESS (REVNAT_ID) (SLOT)\n97   TCP://[fd00::5]:8080\n"
    dps = build_dataplanes([("svc", svc), ("be", backends),
                            ("ct", (DATA / "ct-list-global.txt").read_text())])
    t = dps[0].trace(Packet("2603:8080:c0f0:d2e0:99f2:9195:c043:304f", "2a03:3f40:88:1::24", 80,
                            "tcp", 44564))
    f = next(f for f in t.findings if f.code == "CiliumStaleConntrack")
    assert "2 conntrack entries" in f.message and "BackendID=98" in f.evidence
    # With id 98 present, nothing is stale.
    dps = build_dataplanes([("svc", svc), ("be", backends.replace("97", "98")),
                            ("ct", (DATA / "ct-list-global.txt").read_text())])
    t = dps[0].trace(Packet("2603:8080:c0f0:d2e0:99f2:9195:c043:304f", "2a03:3f40:88:1::24", 80))
    assert "CiliumStaleConntrack" not in codes(t)


def test_pasted_in_an_issue_with_prose_fences_and_an_elision():
    text = ("The service does not answer, here is the agent:\n\n```console\n"
            + (DATA / "service-list-1.12-quarantined.txt").read_text()
            + "```\n\nand its status:\n```\n"
            + (DATA / "status-verbose-1.14-hostns-only.txt").read_text() + "```\n")
    t = build_dataplanes([("issue.md", text)])[0].trace(Packet(POD, "10.96.95.246", 80))
    assert shares(t) == {"10.244.1.59:80": 0.5, "10.244.1.8:80": 0.5}
    assert "CiliumSocketLBBypassed" in codes(t)
    text = "the map:\n```\n" + (DATA / "bpf-lb-list-1.16-slot.txt").read_text() + "```\n"
    t = build_dataplanes([("issue.md", text)])[0].trace(Packet(POD, "10.96.252.10", 443))
    assert shares(t) == {"172.18.0.2:4244": 1.0}


def test_frontends_view_counts_mark_slots_past_count_inactive():
    # Printer formats of cilium-dbg/cmd/bpf_lb_list.go: the default view (slot per backend)
    # and --frontends (`KEY (SLOT)  BACKEND_ID COUNT[QCOUNT] (REVNAT) [FLAGS]`), as the
    # quarantined.txtar map (COUNT=2 QCOUNT=1) would print them.
    lb = ("SERVICE ADDRESS         BACKEND ADDRESS (REVNAT_ID) (SLOT)\n"
          "10.96.50.104:80/TCP     0.0.0.0:0 (1) (0) [ClusterIP, non-routable]\n"
          "                        10.244.1.1:80/TCP (1) (1)\n"
          "                        10.244.1.3:80/TCP (1) (2)\n"
          "                        10.244.1.2:80/TCP (1) (3)\n")
    frontends = ("SERVICE ADDRESS         BACKEND ID\n"
                 "10.96.50.104:80/TCP (0) 0 2[1] (1) [0x0 0x0]\n"
                 "10.96.50.104:80/TCP (1) 1 0[0] (1) [0x0 0x0]\n"
                 "10.96.50.104:80/TCP (2) 3 0[0] (1) [0x0 0x0]\n"
                 "10.96.50.104:80/TCP (3) 2 0[0] (1) [0x0 0x0]\n")
    t = build_dataplanes([("lb", lb), ("fe", frontends)])[0].trace(
        Packet(POD, "10.96.50.104", 80))
    assert shares(t) == {"10.244.1.1:80": 0.5, "10.244.1.3:80": 0.5}
    assert t.extra["cilium"]["excluded"][0]["endpoint"] == "10.244.1.2:80"
    assert "CiliumBackendExcluded" in codes(t)
    # --frontends alone says nothing about backends: not a dataplane.
    with pytest.raises(ClusterIPError):
        build_dataplanes([("fe", frontends)])
