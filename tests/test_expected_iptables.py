"""expected_rules must reproduce kube-proxy's iptables-restore input exactly, and that text
must load into a real kernel and read back in the normalised form iptables-save prints."""

import os
import re
import shutil
import subprocess

import pytest

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import (
    expected_chains,
    expected_rules,
    probability,
)

CFG = ProxyConfig(cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"])


def service(ns="shop", name="web", cip="10.96.120.7", ports=None, **spec):
    status = spec.pop("status", None)
    cips = spec.pop("clusterIPs", [cip])
    svc = {"metadata": {"namespace": ns, "name": name},
           "spec": {"clusterIP": cip, "clusterIPs": cips,
                    "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP",
                                        "targetPort": 8080}], **spec}}
    if status:
        svc["status"] = status
    return svc


def eps_slice(ips, ns="shop", svc="web", port=8080, pname="http", family=4, nodes=None,
              name=None, conditions=None):
    endpoints = []
    for i, ip in enumerate(ips):
        e = {"addresses": [ip]}
        if nodes:
            e["nodeName"] = nodes[i]
        if conditions:
            e["conditions"] = conditions[i]
        endpoints.append(e)
    return {"metadata": {"namespace": ns, "name": name or f"{svc}-{family}",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": f"IPv{family}", "endpoints": endpoints,
            "ports": [{"name": pname, "port": port, "protocol": "TCP"}]}


NODE = {"metadata": {"name": "node-a", "labels": {}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.2"}]}}

# Built by hand from the reference (§1.2, §1.3): one ClusterIP port, two endpoints.
SHOP_WEB = """\
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 \
! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark \
--mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack \
--ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-67NZLRHBNDSAWJRO - [0:0]
:KUBE-SEP-34ZZ2QFGO32YYXXO - [0:0]
:KUBE-SEP-DYSIX5QMVXZZP7LU - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" \
-j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SERVICES -m comment --comment "shop/web:http cluster IP" -m tcp -p tcp \
-d 10.96.120.7 --dport 80 -j KUBE-SVC-67NZLRHBNDSAWJRO
-A KUBE-SVC-67NZLRHBNDSAWJRO -m comment --comment "shop/web:http cluster IP" -m tcp -p tcp \
-d 10.96.120.7 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-67NZLRHBNDSAWJRO -m comment --comment "shop/web:http -> 10.244.1.5:8080" \
-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-34ZZ2QFGO32YYXXO
-A KUBE-SVC-67NZLRHBNDSAWJRO -m comment --comment "shop/web:http -> 10.244.2.7:8080" \
-j KUBE-SEP-DYSIX5QMVXZZP7LU
-A KUBE-SEP-34ZZ2QFGO32YYXXO -m comment --comment shop/web:http -s 10.244.1.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-34ZZ2QFGO32YYXXO -m comment --comment shop/web:http -m tcp -p tcp -j DNAT \
--to-destination 10.244.1.5:8080
-A KUBE-SEP-DYSIX5QMVXZZP7LU -m comment --comment shop/web:http -s 10.244.2.7 -j KUBE-MARK-MASQ
-A KUBE-SEP-DYSIX5QMVXZZP7LU -m comment --comment shop/web:http -m tcp -p tcp -j DNAT \
--to-destination 10.244.2.7:8080
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last \
rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"""


def shop_web_objects():
    return [service()], [eps_slice(["10.244.2.7", "10.244.1.5"], nodes=["node-b", "node-a"])]


def test_exact_text_for_shop_web():
    services, slices = shop_web_objects()
    got = expected_rules(services, slices, NODE, CFG, include_jumps=False)
    assert got == SHOP_WEB


def test_jump_rules_come_with_builtin_chains():
    services, slices = shop_web_objects()
    text = expected_rules(services, slices, "node-a", CFG)
    filter_part, nat_part = text.split("*nat\n")
    assert ":INPUT ACCEPT [0:0]" in filter_part and ":PREROUTING ACCEPT [0:0]" in nat_part
    assert ('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
            in nat_part)
    assert ('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
            "-j KUBE-POSTROUTING") in nat_part
    forward = [ln for ln in filter_part.splitlines() if ln.startswith("-A FORWARD ")]
    assert [ln.rsplit(" ", 1)[1] for ln in forward] == [
        "KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]
    assert ('-A FORWARD -m conntrack --ctstate NEW -m comment --comment '
            '"kubernetes service portals" -j KUBE-SERVICES') in forward
    inputs = [ln for ln in filter_part.splitlines() if ln.startswith("-A INPUT ")]
    assert inputs[-1] == "-A INPUT -j KUBE-FIREWALL"


@pytest.mark.parametrize("n", range(1, 13))
def test_probabilities(n):
    ips = [f"10.244.0.{i + 1}" for i in range(n)]
    text = expected_rules([service()], [eps_slice(ips)], "node-a", CFG, include_jumps=False)
    dispatch = [ln for ln in text.splitlines()
                if ln.startswith("-A KUBE-SVC-") and "-> " in ln]
    assert len(dispatch) == n
    remaining = 1.0
    for i, ln in enumerate(dispatch):
        m = re.search(r"--probability (\S+)", ln)
        if i == n - 1:
            assert m is None  # the last rule always matches
            share = remaining
        else:
            assert m.group(1) == "%0.10f" % (1 / (n - i)) == probability(n - i)
            share = remaining * float(m.group(1))
            remaining -= share
        assert share == pytest.approx(1 / n, rel=1e-8)
    assert probability(3) == "0.3333333333" and probability(6) == "0.1666666667"


def test_no_endpoints_reject_and_itp_local_drop():
    services = [service(name="empty", cip="10.96.0.20"),
                service(name="loc", cip="10.96.0.21", internalTrafficPolicy="Local")]
    slices = [eps_slice(["10.244.2.7"], svc="loc", nodes=["node-b"])]
    text = expected_rules(services, slices, "node-a", CFG, include_jumps=False)
    assert ('-A KUBE-SERVICES -m comment --comment "shop/empty:http has no endpoints" '
            "-m tcp -p tcp -d 10.96.0.20 --dport 80 -j REJECT") in text
    assert ('-A KUBE-SERVICES -m comment --comment "shop/loc:http has no local endpoints" '
            "-m tcp -p tcp -d 10.96.0.21 --dport 80 -j DROP") in text
    assert "KUBE-SVC-" not in text and "KUBE-SVL-" not in text and "KUBE-SEP-" not in text
    exp = expected_chains(services, slices, "node-a", CFG)
    status = {sp.svc_port_name: sp.status for sp in exp.service_ports}
    assert status == {"shop/empty:http": "no-endpoints", "shop/loc:http": "no-local-endpoints"}


def test_itp_local_with_local_endpoint_uses_svl():
    services = [service(internalTrafficPolicy="Local")]
    slices = [eps_slice(["10.244.1.5", "10.244.2.7"], nodes=["node-a", "node-b"])]
    text = expected_rules(services, slices, "node-a", CFG, include_jumps=False)
    assert "-j KUBE-SVL-67NZLRHBNDSAWJRO" in text
    assert ("-A KUBE-SVL-67NZLRHBNDSAWJRO -m comment --comment \"shop/web:http cluster IP\" "
            "-m tcp -p tcp -d 10.96.120.7 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"
            ) in text
    assert "KUBE-SEP-34ZZ2QFGO32YYXXO" in text and "10.244.2.7" not in text
    (sp,) = expected_chains(services, slices, "node-a", CFG).service_ports
    assert [e.endpoint for e in sp.internal_endpoints] == ["10.244.1.5:8080"]


def test_masquerade_variants():
    services, slices = shop_web_objects()
    masq_all = expected_rules(services, slices, "node-a",
                              ProxyConfig(masquerade_all=True), include_jumps=False)
    assert ('-d 10.96.120.7 --dport 80 -j KUBE-MARK-MASQ') in masq_all
    no_detector = expected_rules(services, slices, "node-a", ProxyConfig(), include_jumps=False)
    assert "cluster IP\" -m tcp -p tcp -d 10.96.120.7 --dport 80 !" not in no_detector
    assert no_detector.count("-j KUBE-MARK-MASQ") == 2  # only the hairpin rules
    node_cidr = expected_rules(services, slices, NODE, ProxyConfig(detect_local_mode="NodeCIDR"),
                               include_jumps=False)
    assert "! -s 10.244.1.0/24 -j KUBE-MARK-MASQ" in node_cidr
    bridge = ProxyConfig(detect_local_mode="BridgeInterface", bridge_interface="cbr0")
    assert "! -i cbr0 -j KUBE-MARK-MASQ" in expected_rules(services, slices, NODE, bridge)


def test_session_affinity():
    services = [service(sessionAffinity="ClientIP",
                        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})]
    slices = [eps_slice(["10.244.1.5"])]
    text = expected_rules(services, slices, "node-a", CFG, include_jumps=False)
    assert ('-A KUBE-SVC-67NZLRHBNDSAWJRO -m comment --comment "shop/web:http -> 10.244.1.5:8080"'
            " -m recent --name KUBE-SEP-34ZZ2QFGO32YYXXO --rcheck --seconds 600 --reap"
            " -j KUBE-SEP-34ZZ2QFGO32YYXXO") in text
    assert ("-A KUBE-SEP-34ZZ2QFGO32YYXXO -m comment --comment shop/web:http -m recent --name "
            "KUBE-SEP-34ZZ2QFGO32YYXXO --set -m tcp -p tcp -j DNAT --to-destination "
            "10.244.1.5:8080") in text


def test_large_cluster_mode_drops_endpoint_comments():
    ips = [f"10.244.{i // 250}.{i % 250 + 1}" for i in range(1001)]
    text = expected_rules([service()], [eps_slice(ips)], "node-a", CFG, include_jumps=False)
    seps = [ln for ln in text.splitlines() if ln.startswith("-A KUBE-SEP-")]
    assert len(seps) == 2002 and not any("--comment" in ln for ln in seps)
    disp = [ln for ln in text.splitlines() if ln.startswith("-A KUBE-SVC-") and "KUBE-SEP" in ln]
    assert not any("--comment" in ln for ln in disp)
    assert '"shop/web:http cluster IP"' in text  # capture comments stay
    small = expected_rules([service()], [eps_slice(ips[:1000])], "node-a", CFG)
    assert "-> 10.244.0.1:8080" in small


def test_ipv6():
    services = [service(clusterIPs=["10.96.120.7", "fd00:96::7"])]
    slices = [eps_slice(["10.244.1.5"]),
              eps_slice(["fd00:10:244::5"], family=6)]
    text = expected_rules(services, slices, "node-a", CFG, family=6, include_jumps=False)
    assert "KUBE-SVC-67NZLRHBNDSAWJRO" in text  # same service chain as IPv4
    assert "-d fd00:96::7 --dport 80 ! -s fd00:10:244::/56 -j KUBE-MARK-MASQ" in text
    assert "--to-destination [fd00:10:244::5]:8080" in text
    assert "-s fd00:10:244::5 -j KUBE-MARK-MASQ" in text
    assert "10.244.1.5" not in text and "10.96.120.7" not in text
    assert "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in text
    assert "KUBE-FIREWALL" not in text and "127.0.0.0/8" not in text


def test_single_stack_v4_service_absent_from_v6():
    services, slices = shop_web_objects()
    exp = expected_chains(services, slices, "node-a", CFG, family=6)
    assert exp.service_ports == []


def test_expected_chains_for_drift():
    services, slices = shop_web_objects()
    exp = expected_chains(services, slices, "node-a", CFG)
    assert exp.chains("nat") >= {"KUBE-SERVICES", "KUBE-SVC-67NZLRHBNDSAWJRO",
                                 "KUBE-SEP-34ZZ2QFGO32YYXXO", "KUBE-SEP-DYSIX5QMVXZZP7LU"}
    sp = exp.by_name()[("shop/web:http", "tcp")]
    assert sp.cluster_ip == "10.96.120.7" and sp.status == "ok"
    assert sp.internal_chain == "KUBE-SVC-67NZLRHBNDSAWJRO"
    assert [e.endpoint for e in sp.internal_endpoints] == ["10.244.1.5:8080", "10.244.2.7:8080"]
    assert [e.is_local for e in sp.internal_endpoints] == [True, False]


def test_nodeport_addresses_and_localhost():
    services, slices = shop_web_objects()
    cfg = ProxyConfig(cluster_cidrs=["10.244.0.0/16"], nodeport_addresses=["192.168.49.0/24"])
    text = expected_rules(services, slices, NODE, cfg, include_jumps=False)
    assert ('this chain" -d 192.168.49.2 -j KUBE-NODEPORTS') in text
    assert "KUBE-FIREWALL" not in text  # 127.0.0.1 not covered: no localhost NodePorts
    cfg = ProxyConfig(cluster_cidrs=["10.244.0.0/16"], localhost_nodeports=False)
    text = expected_rules(services, slices, NODE, cfg, include_jumps=False)
    assert "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS" in text


# --- kube-proxy's own TestOverallIPTablesRules fixture ----------------------------------------
# The objects and the expected rules of that test (pkg/proxy/iptables/proxier_test.go), whose
# fake proxier uses mark 0x4000, clusterCIDR 10.0.0.0/8, node "test-node", nfacct counters
# present and no --random-fully. kube-proxy's test sorts chains, so compare per chain.

def _kp_objects():
    def svc(ns, name, cip, port_extra=None, **spec):
        lb = spec.pop("lb", None)
        s = service(ns, name, cip,
                    ports=[{"name": "p80", "port": 80, "protocol": "TCP", **(port_extra or {})}],
                    **spec)
        if lb:
            s["status"] = {"loadBalancer": {"ingress": [{"ip": lb}]}}
        return s

    services = [
        svc("ns1", "svc1", "172.30.0.41"),
        svc("ns2", "svc2", "172.30.0.42", {"nodePort": 3001}, type="LoadBalancer",
            externalTrafficPolicy="Local", externalIPs=["192.168.99.22"],
            healthCheckNodePort=30000, lb="1.2.3.4"),
        svc("ns3", "svc3", "172.30.0.43", {"nodePort": 3003}, type="NodePort"),
        svc("ns4", "svc4", "172.30.0.44", {"targetPort": 80}, type="NodePort",
            externalIPs=["192.168.99.33"]),
        svc("ns5", "svc5", "172.30.0.45", {"nodePort": 3002}, type="LoadBalancer",
            externalTrafficPolicy="Cluster", healthCheckNodePort=30000,
            loadBalancerSourceRanges=[" 203.0.113.0/25"], sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}}, lb="5.6.7.8"),
        svc("ns6", "svc6", "172.30.0.46", {"targetPort": 80}, type="ClusterIP"),
    ]

    def sl(ns, name, ips, nodes=None):
        return eps_slice(ips, ns=ns, svc=name, port=80, pname="p80", nodes=nodes)

    slices = [sl("ns1", "svc1", ["10.180.0.1"]), sl("ns2", "svc2", ["10.180.0.2"]),
              sl("ns3", "svc3", ["10.180.0.3"]),
              sl("ns4", "svc4", ["10.180.0.4", "10.180.0.5"], nodes=[None, "test-node"]),
              sl("ns5", "svc5", ["10.180.0.3"])]
    return services, slices


KUBE_PROXY_EXPECTED = """\
*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP
COMMIT
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
:KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-EXT-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-FW-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-I77PXRDZVX7PMWMN - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3003 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3002 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"""


def _by_chain(text):
    """{table: ({declared chains}, {chain: [rules in order]})}: kube-proxy's test sorts
    chains but keeps the order of rules within a chain, which is what matters."""
    out, table = {}, None
    for ln in text.splitlines():
        if ln.startswith("*"):
            table = ln[1:]
            out[table] = (set(), {})
        elif ln.startswith(":"):
            out[table][0].add(ln[1:].split()[0])
        elif ln.startswith("-A "):
            out[table][1].setdefault(ln.split()[1], []).append(ln)
    return out


def test_matches_kube_proxys_own_overall_rules_test():
    services, slices = _kp_objects()
    cfg = ProxyConfig(cluster_cidrs=["10.0.0.0/8"])
    got = expected_rules(services, slices, "test-node", cfg, random_fully=False, nfacct=True,
                         include_jumps=False).replace("0x00004000", "0x4000")
    assert _by_chain(got) == _by_chain(KUBE_PROXY_EXPECTED)


# --- the real kernel --------------------------------------------------------------------------

def _can_use_netns():
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("ip", "iptables-restore", "iptables-save", "ip6tables-restore",
                 "ip6tables-save"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package iptables / iproute2)"
    return None


_SKIP = _can_use_netns()


def _load_and_save(text, family):
    ns = f"kc-exp-{os.getpid()}-{family}"
    restore = "iptables-restore" if family == 4 else "ip6tables-restore"
    save = "iptables-save" if family == 4 else "ip6tables-save"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, restore], input=text, text=True,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, f"{restore} failed: {r.stderr}"
        r = subprocess.run(["ip", "netns", "exec", ns, save], text=True, capture_output=True,
                           check=True, timeout=60)
        return r.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
def test_loads_into_kernel_and_saves_normalised_ipv4():
    services = [service(sessionAffinity="ClientIP")]
    slices = [eps_slice(["10.244.1.5", "10.244.2.7"])]
    saved = _load_and_save(expected_rules(services, slices, NODE, CFG), 4)
    svc, sep = "KUBE-SVC-67NZLRHBNDSAWJRO", "KUBE-SEP-34ZZ2QFGO32YYXXO"
    for line in (
        f'-A KUBE-SERVICES -d 10.96.120.7/32 -p tcp -m comment --comment '
        f'"shop/web:http cluster IP" -m tcp --dport 80 -j {svc}',
        f'-A {svc} ! -s 10.244.0.0/16 -d 10.96.120.7/32 -p tcp -m comment --comment '
        f'"shop/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        f"-m statistic --mode random --probability 0.50000000000 -j {sep}",
        f"-m recent --rcheck --seconds 10800 --reap --name {sep} --mask 255.255.255.255 "
        f"--rsource -j {sep}",
        f'-A {sep} -s 10.244.1.5/32 -m comment --comment "shop/web:http" -j KUBE-MARK-MASQ',
        f'-A {sep} -p tcp -m comment --comment "shop/web:http" -m recent --set --name {sep} '
        "--mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.5:8080",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A INPUT -j KUBE-FIREWALL",
    ):
        assert line in saved, f"missing {line!r} in:\n{saved}"


@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
def test_loads_into_kernel_ipv6():
    services = [service(clusterIPs=["10.96.120.7", "fd00:96::7"])]
    slices = [eps_slice(["fd00:10:244::5", "fd00:10:244::10"], family=6)]
    saved = _load_and_save(expected_rules(services, slices, NODE, CFG, family=6), 6)
    assert ("-A KUBE-SERVICES -d fd00:96::7/128 -p tcp -m comment --comment "
            '"shop/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-67NZLRHBNDSAWJRO') in saved
    assert "--to-destination [fd00:10:244::5]:8080" in saved
    assert "! -d ::1/128 -m comment" in saved
    assert "0.50000000000" in saved


@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
def test_external_rules_load_into_kernel():
    services, slices = _kp_objects()
    cfg = ProxyConfig(cluster_cidrs=["10.0.0.0/8"])
    saved = _load_and_save(expected_rules(services, slices, "test-node", cfg), 4)
    assert ("-A KUBE-FW-NUKIZ6OKUXPJNT4C -s 203.0.113.0/25 -m comment --comment "
            '"ns5/svc5:p80 loadbalancer IP" -j KUBE-EXT-NUKIZ6OKUXPJNT4C') in saved
    assert ("-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "
            '"masquerade LOCAL traffic for ns2/svc2:p80 external destinations" '
            "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ") in saved
    assert ("-A KUBE-NODEPORTS -p tcp -m comment --comment \"ns3/svc3:p80\" -m tcp "
            "--dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK") in saved
