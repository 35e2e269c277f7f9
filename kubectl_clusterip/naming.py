"""kube-proxy's names for service ports and the chains it writes for them.

The names are hashes of the service port (and endpoint), so they can be recomputed from the
API objects alone. That is what lets a dump be matched to Services without reading the rule
comments, and lets `expected` name every chain kube-proxy should have written.
"""

from __future__ import annotations

import base64
import hashlib

from kubectl_clusterip.model import join_host_port

# nftables chain names may be 256 long; kube-proxy keeps 16 for its prefixes ("endpoint-"…).
_NFT_BASE_MAX = 256 - 16


def svc_port_name(namespace: str, name: str, port_name: str = "") -> str:
    """ServicePortName.String(): "ns/name:port", or "ns/name" for an unnamed port."""
    base = f"{namespace}/{name}"
    return f"{base}:{port_name}" if port_name else base


def split_svc_port_name(spn: str) -> tuple[str, str, str]:
    """Inverse of svc_port_name: (namespace, name, port_name). Safe because none of the
    three may contain "/" and service names may not contain ":"."""
    namespace, rest = spn.split("/", 1)
    name, _, port_name = rest.partition(":")
    return namespace, name, port_name


def _b32_sha256(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


def port_proto_hash(spn: str, protocol: str) -> str:
    """The 16-character hash shared by a service port's SVC/SVL/EXT/FW chains."""
    return _b32_sha256(spn + protocol.lower())[:16]


def service_chain(spn: str, protocol: str) -> str:
    """KUBE-SVC-…: dispatch to the "Cluster" traffic-policy endpoints."""
    return "KUBE-SVC-" + port_proto_hash(spn, protocol)


def local_chain(spn: str, protocol: str) -> str:
    """KUBE-SVL-…: dispatch to node-local endpoints (ITP or ETP Local)."""
    return "KUBE-SVL-" + port_proto_hash(spn, protocol)


def external_chain(spn: str, protocol: str) -> str:
    """KUBE-EXT-…: NodePort / externalIP / LB traffic before the policy chain."""
    return "KUBE-EXT-" + port_proto_hash(spn, protocol)


def firewall_chain(spn: str, protocol: str) -> str:
    """KUBE-FW-…: loadBalancerSourceRanges allow-list."""
    return "KUBE-FW-" + port_proto_hash(spn, protocol)


def endpoint_chain(spn: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-…; endpoint is Go's JoinHostPort form ("ip:port", "[v6]:port")."""
    return "KUBE-SEP-" + _b32_sha256(spn + protocol.lower() + endpoint)[:16]


def endpoint_chain_for(spn: str, protocol: str, ip: str, port: int) -> str:
    """endpoint_chain from an IP and port, so callers cannot forget the IPv6 brackets."""
    return endpoint_chain(spn, protocol, join_host_port(ip, port))


# --- nftables mode -------------------------------------------------------------------------


def _nft_hash_and_truncate(base: str) -> str:
    """8-char hash of the base, then the base itself, so similar names still look different."""
    name = _b32_sha256(base)[:8] + "-" + base
    if len(name) > _NFT_BASE_MAX:
        name = name[: _NFT_BASE_MAX - 3] + "..."
    return name


def nft_service_base(spn: str, protocol: str) -> str:
    """"ns/name/proto/portname" (an unnamed port leaves the last segment empty)."""
    namespace, name, port_name = split_svc_port_name(spn)
    return f"{namespace}/{name}/{protocol.lower()}/{port_name}"


def nft_endpoint_base(spn: str, protocol: str, endpoint: str) -> str:
    """"ns/name/proto/portname__ip/port"; IPv6 colons become dots (nft forbids ":")."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]").replace(":", ".")
    return f"{nft_service_base(spn, protocol)}__{host}/{port}"


def nft_service_chain(spn: str, protocol: str) -> str:
    return "service-" + _nft_hash_and_truncate(nft_service_base(spn, protocol))


def nft_local_chain(spn: str, protocol: str) -> str:
    return "local-" + _nft_hash_and_truncate(nft_service_base(spn, protocol))


def nft_external_chain(spn: str, protocol: str) -> str:
    return "external-" + _nft_hash_and_truncate(nft_service_base(spn, protocol))


def nft_firewall_chain(spn: str, protocol: str) -> str:
    return "firewall-" + _nft_hash_and_truncate(nft_service_base(spn, protocol))


def nft_endpoint_chain(spn: str, protocol: str, endpoint: str) -> str:
    return "endpoint-" + _nft_hash_and_truncate(nft_endpoint_base(spn, protocol, endpoint))


def nft_affinity_set(spn: str, protocol: str, endpoint: str) -> str:
    """The per-endpoint set of pinned client IPs; same hash and base as the endpoint chain."""
    return "affinity-" + _nft_hash_and_truncate(nft_endpoint_base(spn, protocol, endpoint))
