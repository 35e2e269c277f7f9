"""The kube-proxy settings that change the rules, read the way kube-proxy reads them."""

import pytest

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.model import ClusterIPError

KUBEADM_CONF = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
conntrack:
  maxPerCore: null
  tcpBeLiberal: false
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
kind: KubeProxyConfiguration
mode: ""
nodePortAddresses: null
"""


def cm(text):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": "kube-system", "name": "kube-proxy"},
            "data": {"config.conf": text, "kubeconfig.conf": "apiVersion: v1\nkind: Config\n"}}


def test_defaults():
    c = ProxyConfig()
    assert (c.mode, c.detect_local_mode, c.masquerade_bit, c.localhost_nodeports) == (
        "iptables", "ClusterCIDR", 14, True)
    assert c.masquerade_mark == "0x00004000"


def test_kubeadm_configmap_defaults_applied():
    c = ProxyConfig.from_configmap(cm(KUBEADM_CONF))
    assert c.mode == "iptables"
    assert c.cluster_cidrs == ["10.244.0.0/16", "fd00:10:244::/56"]
    assert c.detect_local_mode == "ClusterCIDR"
    assert not c.masquerade_all and c.masquerade_bit == 14 and c.localhost_nodeports
    assert c.local_detector(4) == ("! -s 10.244.0.0/16", "-s 10.244.0.0/16")
    assert c.local_detector(6) == ("! -s fd00:10:244::/56", "-s fd00:10:244::/56")


def test_explicit_values():
    text = KUBEADM_CONF.replace('mode: ""', "mode: nftables").replace(
        "masqueradeBit: null", "masqueradeBit: 15").replace(
        "masqueradeAll: false", "masqueradeAll: true").replace(
        "localhostNodePorts: null", "localhostNodePorts: false")
    c = ProxyConfig.from_configmap(cm(text))
    assert c.mode == "nftables"
    assert c.masquerade_bit == 15 and c.masquerade_mark == "0x00008000"
    assert c.masquerade_all is False  # nftables mode reads nftables.masqueradeAll
    c = ProxyConfig.from_configmap(cm(text.replace("mode: nftables", "mode: iptables")))
    assert c.masquerade_all is True and c.localhost_nodeports is False


def test_missing_config_gives_defaults_and_bad_yaml_raises():
    assert ProxyConfig.from_configmap({"data": {}}) == ProxyConfig()
    with pytest.raises(ClusterIPError):
        ProxyConfig.from_configmap(cm("mode: [unclosed"))


def test_detector_modes():
    assert ProxyConfig().local_detector(4) == (None, None)  # ClusterCIDR without a CIDR
    c = ProxyConfig(cluster_cidrs=["10.244.0.0/16"])
    assert c.local_detector(6) == (None, None)  # no IPv6 CIDR: no IPv6 detector
    c = ProxyConfig(detect_local_mode="NodeCIDR")
    assert c.local_detector(4, ["10.244.1.0/24", "fd00::/64"]) == (
        "! -s 10.244.1.0/24", "-s 10.244.1.0/24")
    assert c.local_detector(6, ["10.244.1.0/24", "fd00::/64"]) == ("! -s fd00::/64",
                                                                  "-s fd00::/64")
    assert c.local_detector(4, []) == (None, None)
    c = ProxyConfig(detect_local_mode="BridgeInterface", bridge_interface="cbr0")
    assert c.local_detector(4) == ("! -i cbr0", "-i cbr0")
    assert c.local_detector_nft(4) == ("iifname != cbr0", "iifname cbr0")
    c = ProxyConfig(detect_local_mode="InterfaceNamePrefix", interface_name_prefix="veth")
    assert c.local_detector(6) == ("! -i veth+", "-i veth+")
    assert c.local_detector_nft(6) == ('iifname != veth*', 'iifname veth*')
    assert ProxyConfig(detect_local_mode="BridgeInterface").local_detector(4) == (None, None)


def test_cidr_normalised_like_go():
    c = ProxyConfig(cluster_cidrs=[" 10.244.1.7/16 "])
    assert c.local_detector(4)[0] == "! -s 10.244.0.0/16"
    assert c.local_detector_nft(4) == ("ip saddr != 10.244.0.0/16", "ip saddr 10.244.0.0/16")


def test_detect_local_section_from_yaml():
    text = KUBEADM_CONF.replace('detectLocalMode: ""', "detectLocalMode: InterfaceNamePrefix") \
        .replace('interfaceNamePrefix: ""', "interfaceNamePrefix: cali")
    assert ProxyConfig.from_yaml(text).local_detector(4) == ("! -i cali+", "-i cali+")
