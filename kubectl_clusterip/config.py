"""The parts of kube-proxy's configuration that change which rules it writes.

Read from the kube-proxy ConfigMap (kubeadm layout: data["config.conf"] holding a
KubeProxyConfiguration), so the expectation uses the same mode, masquerade policy and
local-traffic detector as the real node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.reads import load_yaml


def _cidrs_of_family(cidrs: Iterable[str], family: int) -> list[str]:
    """Valid CIDRs of one family, normalised like Go's net.IPNet.String() (host bits cleared)."""
    out = []
    for c in cidrs:
        c = c.strip()
        if not c:
            continue
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError:
            continue  # kube-proxy drops unparsable CIDRs too
        if net.version == family:
            out.append(str(net))
    return out


@dataclass(frozen=True)
class ProxyConfig:
    mode: str = "iptables"
    cluster_cidrs: list[str] = field(default_factory=list)
    masquerade_all: bool = False
    detect_local_mode: str = "ClusterCIDR"
    bridge_interface: str = ""
    interface_name_prefix: str = ""
    masquerade_bit: int = 14
    nodeport_addresses: list[str] = field(default_factory=list)
    localhost_nodeports: bool = True
    conntrack_tcp_be_liberal: bool = False

    @property
    def masquerade_mark(self) -> str:
        """The mark as kube-proxy writes it: Go's "%#08x", i.e. 0x + eight digits."""
        return f"0x{1 << self.masquerade_bit:08x}"

    @classmethod
    def from_configmap(cls, cm: dict) -> ProxyConfig:
        """Parse the kube-proxy ConfigMap; a missing config.conf gives the defaults."""
        data = (cm or {}).get("data") or {}
        text = data.get("config.conf")
        if text is None:
            # Some distributions name the key differently; take the single YAML value.
            values = [v for v in data.values() if isinstance(v, str) and "kind:" in v]
            text = values[0] if len(values) == 1 else ""
        return cls.from_yaml(text)

    @classmethod
    def from_yaml(cls, text: str) -> ProxyConfig:
        doc = load_yaml(text or "", "kube-proxy config") or {}
        if not isinstance(doc, dict):
            raise ClusterIPError("kube-proxy config is not a KubeProxyConfiguration mapping")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict) -> ProxyConfig:
        """Apply kube-proxy's v1alpha1 defaults to a decoded KubeProxyConfiguration."""
        ipt = doc.get("iptables") or {}
        nft = doc.get("nftables") or {}
        detect = doc.get("detectLocal") or {}
        conntrack = doc.get("conntrack") or {}
        mode = (doc.get("mode") or "").strip() or "iptables"  # empty means iptables on Linux

        cidrs_raw = doc.get("clusterCIDR") or ""
        cidrs = [c.strip() for c in str(cidrs_raw).split(",") if c.strip()]
        if not cidrs:  # newer config versions keep a list under detectLocal
            cidrs = [str(c).strip() for c in detect.get("clusterCIDRs") or [] if str(c).strip()]

        masq_all = doc.get("masqueradeAll")
        if masq_all is None:
            masq_all = (nft if mode == "nftables" else ipt).get("masqueradeAll")
        bit = ipt.get("masqueradeBit")
        if mode == "nftables" and nft.get("masqueradeBit") is not None:
            bit = nft.get("masqueradeBit")
        localhost = ipt.get("localhostNodePorts")

        return cls(
            mode=mode,
            cluster_cidrs=cidrs,
            masquerade_all=bool(masq_all),
            detect_local_mode=(doc.get("detectLocalMode") or "").strip() or "ClusterCIDR",
            bridge_interface=(detect.get("bridgeInterface") or "").strip(),
            interface_name_prefix=(detect.get("interfaceNamePrefix") or "").strip(),
            masquerade_bit=14 if bit is None else int(bit),
            nodeport_addresses=[str(a) for a in doc.get("nodePortAddresses") or []],
            localhost_nodeports=True if localhost is None else bool(localhost),
            conntrack_tcp_be_liberal=bool(conntrack.get("tcpBeLiberal")),
        )

    def _detector(self, family: int, node_pod_cidrs: Iterable[str]) -> tuple[str, str] | None:
        """(kind, value) of the detector kube-proxy builds for this family, or None (no-op)."""
        mode = self.detect_local_mode
        if mode == "ClusterCIDR":
            cidrs = _cidrs_of_family(self.cluster_cidrs, family)
            return ("cidr", cidrs[0]) if cidrs else None
        if mode == "NodeCIDR":
            cidrs = _cidrs_of_family(node_pod_cidrs or [], family)
            return ("cidr", cidrs[0]) if cidrs else None
        if mode == "BridgeInterface":
            return ("iface", self.bridge_interface) if self.bridge_interface else None
        if mode == "InterfaceNamePrefix":
            if self.interface_name_prefix:
                return ("iface", self.interface_name_prefix + "+")
            return None
        return None  # unknown mode: kube-proxy falls back to a no-op detector

    def local_detector(
        self, family: int, node_pod_cidrs: Iterable[str] = ()
    ) -> tuple[str | None, str | None]:
        """iptables (not-local match, local match), e.g. ("! -s 10.244.0.0/16", "-s …").

        (None, None) means no detector: kube-proxy then writes no ClusterIP masquerade rule
        and no "pod traffic" short-circuit for ETP=Local.
        """
        det = self._detector(family, node_pod_cidrs)
        if det is None:
            return None, None
        flag = "-s" if det[0] == "cidr" else "-i"
        return f"! {flag} {det[1]}", f"{flag} {det[1]}"

    def local_detector_nft(
        self, family: int, node_pod_cidrs: Iterable[str] = ()
    ) -> tuple[str | None, str | None]:
        """The nftables form of local_detector (≥v1.33 uses iifname for interfaces)."""
        det = self._detector(family, node_pod_cidrs)
        if det is None:
            return None, None
        if det[0] == "cidr":
            ipx = "ip" if family == 4 else "ip6"
            return f"{ipx} saddr != {det[1]}", f"{ipx} saddr {det[1]}"
        name = det[1][:-1] + "*" if det[1].endswith("+") else det[1]
        return f"iifname != {name}", f"iifname {name}"
