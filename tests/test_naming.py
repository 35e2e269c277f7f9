"""Chain names must equal kube-proxy's byte for byte: every hash below was checked against
kube-proxy's own tests (pkg/proxy/iptables and nftables proxier_test.go) or real dumps."""

import base64
import hashlib

import pytest

from kubectl_clusterip import naming
from kubectl_clusterip.naming import (
    endpoint_chain,
    endpoint_chain_for,
    external_chain,
    firewall_chain,
    local_chain,
    nft_affinity_set,
    nft_endpoint_chain,
    nft_external_chain,
    nft_firewall_chain,
    nft_local_chain,
    nft_service_chain,
    service_chain,
    split_svc_port_name,
    svc_port_name,
)


def test_svc_port_name_named_and_unnamed():
    assert svc_port_name("shop", "web", "http") == "shop/web:http"
    assert svc_port_name("default", "nginx", "") == "default/nginx"
    assert svc_port_name("default", "nginx") == "default/nginx"
    assert split_svc_port_name("shop/web:http") == ("shop", "web", "http")
    assert split_svc_port_name("default/nginx") == ("default", "nginx", "")


def test_worked_example_steps():
    digest = hashlib.sha256(b"ns1/svc1:p80tcp").digest()
    assert digest.hex() == "bbcc3e7a1157ec9ccfee6c5ee9e7b58efac4f27785845f4433832a6750e929dd"
    assert base64.b32encode(digest).decode() == (
        "XPGD46QRK7WJZT7ONRPOTZ5VR35MJ4TXQWCF6RBTQMVGOUHJFHOQ====")
    assert naming.port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"


@pytest.mark.parametrize("fn, spn, proto, expected", [
    (service_chain, "ns1/svc1:p80", "tcp", "KUBE-SVC-XPGD46QRK7WJZT7O"),
    (service_chain, "ns2/svc2:p80", "tcp", "KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
    (service_chain, "ns3/svc3:p80", "tcp", "KUBE-SVC-X27LE4BHSL4DOUIK"),
    (service_chain, "ns4/svc4:p80", "tcp", "KUBE-SVC-4SW47YFZTEDKD3PK"),
    (external_chain, "ns5/svc5:p80", "tcp", "KUBE-EXT-NUKIZ6OKUXPJNT4C"),
    (firewall_chain, "ns5/svc5:p80", "tcp", "KUBE-FW-NUKIZ6OKUXPJNT4C"),
    (local_chain, "ns2/svc2:p80", "tcp", "KUBE-SVL-GNZBNJ2PO5MGZ6GT"),
    (service_chain, "default/kubernetes:https", "tcp", "KUBE-SVC-NPX46M4PTMTKRN6Y"),
    (service_chain, "kube-system/kube-dns:dns", "udp", "KUBE-SVC-TCOU7JCQXEZGVUNU"),
    (service_chain, "kube-system/kube-dns:dns-tcp", "tcp", "KUBE-SVC-ERIFXISQEP7F7OF4"),
    (service_chain, "kube-system/kube-dns:metrics", "tcp", "KUBE-SVC-JD5MR3NA4I4DYORP"),
    (external_chain, "default/nginx", "tcp", "KUBE-EXT-2CMXP7HKUVJN7L6M"),
    (service_chain, "shop/web:http", "tcp", "KUBE-SVC-67NZLRHBNDSAWJRO"),
    # The protocol is lower-cased before hashing, as kube-proxy does.
    (service_chain, "shop/web:http", "TCP", "KUBE-SVC-67NZLRHBNDSAWJRO"),
])
def test_service_level_chains(fn, spn, proto, expected):
    assert fn(spn, proto) == expected


@pytest.mark.parametrize("spn, proto, endpoint, expected", [
    ("ns1/svc1:p80", "tcp", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
    ("ns2/svc2:p80", "tcp", "10.180.0.2:80", "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
    ("ns3/svc3:p80", "tcp", "10.180.0.3:80", "KUBE-SEP-OYPFS5VJICHGATKP"),
    ("ns4/svc4:p80", "tcp", "10.180.0.4:80", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
    ("ns4/svc4:p80", "tcp", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
    ("ns5/svc5:p80", "tcp", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
    ("default/kubernetes:https", "tcp", "192.168.49.2:8443", "KUBE-SEP-VPILYQBSPPXYB66K"),
    ("shop/web:http", "tcp", "10.244.1.5:8080", "KUBE-SEP-34ZZ2QFGO32YYXXO"),
    ("shop/web:http", "tcp", "10.244.2.7:8080", "KUBE-SEP-DYSIX5QMVXZZP7LU"),
])
def test_endpoint_chains(spn, proto, endpoint, expected):
    assert endpoint_chain(spn, proto, endpoint) == expected
    ip, port = endpoint.rsplit(":", 1)
    assert endpoint_chain_for(spn, proto, ip, int(port)) == expected


def test_ipv6_endpoint_uses_brackets_and_same_service_chain():
    v6 = endpoint_chain_for("shop/web:http", "tcp", "fd00:10:244::5", 8080)
    assert v6 == endpoint_chain("shop/web:http", "tcp", "[fd00:10:244::5]:8080")
    assert v6 != endpoint_chain("shop/web:http", "tcp", "fd00:10:244::5:8080")
    assert len(v6) == len("KUBE-SEP-") + 16


def test_nft_names():
    assert nft_service_chain("ns1/svc1:p80", "tcp") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft_endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == (
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")
    assert nft_endpoint_chain("ns1/svc1:p80", "tcp", "[fd00:10:180::1]:80") == (
        "endpoint-ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80")
    assert nft_service_chain("shop/web:http", "tcp") == "service-KHN6ECMT-shop/web/tcp/http"
    assert nft_endpoint_chain("shop/web:http", "tcp", "10.244.1.5:8080") == (
        "endpoint-FDH7QP7U-shop/web/tcp/http__10.244.1.5/8080")
    assert nft_endpoint_chain("shop/web:http", "tcp", "10.244.2.7:8080") == (
        "endpoint-W7KABZCH-shop/web/tcp/http__10.244.2.7/8080")


def test_nft_prefixes_share_one_base():
    base = nft_service_chain("ns1/svc1:p80", "tcp").removeprefix("service-")
    assert nft_local_chain("ns1/svc1:p80", "tcp") == "local-" + base
    assert nft_external_chain("ns1/svc1:p80", "tcp") == "external-" + base
    assert nft_firewall_chain("ns1/svc1:p80", "tcp") == "firewall-" + base
    ep = nft_endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80").removeprefix("endpoint-")
    assert nft_affinity_set("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "affinity-" + ep


def test_nft_unnamed_port_leaves_empty_segment():
    name = nft_service_chain("default/nginx", "TCP")
    assert name.endswith("-default/nginx/tcp/")
