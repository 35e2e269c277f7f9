"""A fake cluster of many nodes for the fleet view: each node's kubelet answers the debug
pod with the dump kube-proxy would have written there (iptables/expected.py), some nodes
stale (their rules still DNAT to an endpoint the API dropped), some whose pods never start,
one with a 70-character name."""

from __future__ import annotations

from fakeapi import FakeCluster, endpoint_slice, node, pod, section_log, service

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules

PORTS = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]
LONG = "ip-10-120-33-4.eu-central-1.compute.internal.nodepool-gen-pur1.k8s-pro"  # 70
GONE = ("10.244.0.99", "node-000", "web-gone")  # an endpoint the API no longer lists


def node_names(n: int) -> list[str]:
    return [f"node-{i:03d}" for i in range(n - 1)] + [LONG]


def populate(fc: FakeCluster, n: int, stale: set[str], never_start: dict[str, str]) -> None:
    """n nodes; `stale` nodes keep the old endpoint's rules; `never_start` maps a node to
    how its kubelet fails the pod (rejected, deadline, pending, imagepull)."""
    names = node_names(n)
    svc = fc.add(service("web", "default", "10.96.0.50", PORTS, {"app": "web"}))
    eps = [("10.244.1.5", names[1], "web-1"), ("10.244.2.6", names[2], "web-2")]
    now = fc.add(endpoint_slice("web", "default", SLICE_PORTS, eps))
    before = endpoint_slice("web", "default", SLICE_PORTS, [*eps, GONE])
    for ip, where, name in eps:
        fc.add(pod(name, "default", ip, where, {"app": "web"}))
    nodes = {}
    for i, name in enumerate(names):
        nodes[name] = fc.add(node(name, f"172.18.{i // 250}.{i % 250 + 2}",
                                  pod_cidr=f"10.{244 + i // 256}.{i % 256}.0/24"))
    fc.add({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "data": {"config.conf": "kind: KubeProxyConfiguration\nmode: iptables\n"
                                    "clusterCIDR: 10.244.0.0/14\n"}})
    config = ProxyConfig(cluster_cidrs=["10.244.0.0/14"])
    cache: dict[bool, dict[str, str]] = {}

    def log_for(created: dict) -> str:
        where = created["spec"]["nodeName"]
        old = where in stale
        rules = expected_rules([svc], [before if old else now], nodes[where], config, 4)
        cache.setdefault(old, {})[where] = rules
        return section_log({"proxy-mode": "iptables", "iptables-legacy-save": "",
                            "iptables-nft-save": rules})

    fc.log_for = log_for
    fc.debug_pod = lambda created: never_start.get(created["spec"]["nodeName"], "succeed")
