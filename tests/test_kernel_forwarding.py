"""Step 5 on the real kernel: the finding, made from a snapshot the debug pod's own script
read off a namespace-built node (tests/netlab.py), must match what the kernel then does with
real requests — NetworkPolicy rendered as a FORWARD drop rule, br_netfilter off on a bridge
CNI, a missing pod CIDR route, ip_forward off.

Needs root, iproute2, iptables-nft, conntrack and curl (the dump script's tools); skips
cleanly elsewhere. Traffic stays inside the lab's namespaces.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fakeapi import endpoint_slice, node, pod, service
from netlab import Lab, kernel_lab, tally

from kubectl_clusterip.cluster import debugpod
from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.engine import Request, run_trace
from kubectl_clusterip.iptables.expected import expected_rules
from kubectl_clusterip.model import Trace
from kubectl_clusterip.netpol import selector_matches
from kubectl_clusterip.snapshot import NodeDumps, Snapshot

pytestmark = [pytest.mark.kernel, kernel_lab("iptables-nft-restore", "iptables-nft-save",
                                             "conntrack", "curl")]

CIP = "10.96.0.50"
PORTS = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]
CONFIG = ("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
          "mode: iptables\nclusterCIDR: 10.244.0.0/16\n")


def cluster_objects(endpoints: list[tuple[str, str, str]], nodes: int) -> list[dict]:
    """The API's view of the lab: web (the endpoints), a client pod, the nodes, kindnet."""
    objs = [service("web", "default", CIP, PORTS, {"app": "web"}),
            endpoint_slice("web", "default", SLICE_PORTS, endpoints),
            pod("client", "default", "10.244.1.20", "node", {"app": "client"}),
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
             "data": {"config.conf": CONFIG}},
            {"apiVersion": "apps/v1", "kind": "DaemonSet",
             "metadata": {"name": "kindnet", "namespace": "kube-system"}, "spec": {}}]
    objs += [pod(name, "default", ip, where, {"app": "web"}) for ip, where, name in endpoints]
    objs += [node(n, f"172.18.0.{2 * i}", pod_cidr=f"10.244.{i}.0/24")
             for i, n in enumerate(("node", "node2")[:nodes], 1)]
    return objs


def load_kube_proxy(lab: Lab, objs: list[dict], nodes: list[str]) -> None:
    svcs = [o for o in objs if o["kind"] == "Service"]
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    for n in nodes:
        the_node = next(o for o in objs if o["kind"] == "Node" and o["metadata"]["name"] == n)
        lab.load_iptables(expected_rules(svcs, slices, the_node,
                                         ProxyConfig(cluster_cidrs=["10.244.0.0/16"])),
                          node=n)


def snapshot_of(lab: Lab, objs: list[dict]) -> Snapshot:
    """What `capture --from client` makes: the debug pod's real script run on the node."""
    log = lab.run("node", "sh", "-c", f"MODE=iptables CT_ARGS=''\n{debugpod.SCRIPT}",
                  timeout=60)
    files, _ = debugpod.node_files(debugpod.parse_log(log))
    assert "sysctl.txt" in files and "ip-route.json" in files
    meta = {"service": "default/web", "clientNode": "node",
            "client": {"pod": "default/client", "ip": "10.244.1.20", "node": "node"}}
    return Snapshot(meta, objs, {"node": NodeDumps("node", files)}, "netlab")


def trace(snap: Snapshot) -> Trace:
    (t,) = run_trace(snap, Request(target="default/web"))
    return t


def errors(t: Trace) -> list[str]:
    return [f.code for f in t.findings if f.severity == "error"]


# -- NetworkPolicy, enforced as a CNI would: FORWARD rules on the endpoint's node ----------


def render_ingress(policies: list[dict], pods: list[dict]) -> dict[str, str]:
    """pod -> iptables-restore text enforcing the policies' ingress at the pod's interface,
    as per-pod CNIs do (the pod sees the packet after DNAT: its own address, the
    targetPort): ACCEPT the admitted sources on the admitted ports, DROP other new
    connections. Only what these tests use: podSelector peers of the same namespace, ports.
    (In the pod's namespace, so the node's dump holds kube-proxy's rules alone.)"""
    rules: dict[str, list[str]] = {}
    for pol in policies:
        ns, spec = pol["metadata"]["namespace"], pol["spec"]
        for target in pods:
            md = target["metadata"]
            if md["namespace"] != ns or not selector_matches(spec["podSelector"],
                                                             md.get("labels") or {}):
                continue
            out = rules.setdefault(md["name"], [])
            for rule in spec.get("ingress") or []:
                ports = [p["port"] for p in rule.get("ports") or []] or [None]
                for peer in rule.get("from") or []:
                    for src in pods:
                        if src["metadata"]["namespace"] == ns and selector_matches(
                                peer["podSelector"], src["metadata"].get("labels") or {}):
                            for port in ports:
                                out.append(f"-A INPUT -s {src['status']['podIP']}/32 -p tcp"
                                           + (f" --dport {port}" if port else "") + " -j ACCEPT")
    return {name: "*filter\n:INPUT ACCEPT [0:0]\n" + "\n".join(r)
            + "\n-A INPUT -m conntrack --ctstate NEW -j DROP\nCOMMIT\n"
            for name, r in rules.items()}


def web_policy(name: str, from_labels: dict, port: int | None = None) -> dict:
    rule: dict = {"from": [{"podSelector": {"matchLabels": from_labels}}]}
    if port:
        rule["ports"] = [{"port": port, "protocol": "TCP"}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "default", "name": name},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [rule]}}


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[Lab, list[dict]]]:
    with Lab(nodes=2, ipv6=False) as lab:
        lab.add_pod("client", "10.244.1.20", node="node")
        lab.add_pod("web-1", "10.244.1.5", node="node")
        lab.add_pod("web-2", "10.244.2.7", node="node2")
        for name in ("web-1", "web-2"):
            lab.serve(name, 8080, "tcp", lifetime=300)
        objs = cluster_objects([("10.244.1.5", "node", "web-1"),
                                ("10.244.2.7", "node2", "web-2")], 2)
        yield lab, objs


def reset(lab: Lab, objs: list[dict]) -> None:
    for n in ("web-1", "web-2"):
        lab.reset_rules(node=n)
    for n in ("node", "node2"):
        lab.reset_rules(node=n)
        lab.conntrack_flush(node=n)
    load_kube_proxy(lab, objs, ["node", "node2"])


def test_policy_denial_matches_a_rendered_drop_rule(two_nodes) -> None:
    lab, objs = two_nodes
    reset(lab, objs)
    deny = web_policy("web-from-frontend", {"app": "frontend"})
    pods = [o for o in objs if o["kind"] == "Pod"]
    for name, text in render_ingress([deny], pods).items():
        lab.load_iptables(text, node=name)
    t = trace(snapshot_of(lab, [*objs, deny]))
    f = next(f for f in t.findings if f.code == "NetworkPolicyDeniesIngress")
    assert "default/web-1, default/web-2 on 8080/TCP" in f.message
    assert errors(t) == ["NetworkPolicyDeniesIngress"]
    assert tally(lab.request("client", CIP, 80, count=4, timeout=0.5)) == {"error:timeout": 4}

    # a second policy admitting the client on the targetPort: the kernel and the tool agree
    allow = web_policy("web-from-client", {"app": "client"}, port=8080)
    reset(lab, objs)
    for name, text in render_ingress([deny, allow], pods).items():
        lab.load_iptables(text, node=name)
    t = trace(snapshot_of(lab, [*objs, deny, allow]))
    assert errors(t) == [] and "NetworkPolicyAllows" in [f.code for f in t.findings]
    assert set(tally(lab.request("client", CIP, 80, count=12))) == {"web-1", "web-2"}


def test_missing_route_to_the_other_nodes_pod_cidr_times_out(two_nodes) -> None:
    lab, objs = two_nodes
    reset(lab, objs)
    lab.add_external("gw", "172.18.0.9")  # a default gateway that does not forward
    lab.run("node", "ip", "route", "add", "default", "via", "172.18.0.9")
    lab.run("node", "ip", "route", "del", "10.244.2.0/24")
    try:
        t = trace(snapshot_of(lab, objs))
        f = next(f for f in t.findings if f.code == "PodCidrRouteMissing")
        assert "no route for 10.244.2.0/24, the pod CIDR of node node2" in f.message
        assert "10.244.2.7:8080" in f.message
        replies = lab.request("client", "10.244.2.7", 8080, count=2, timeout=0.5)
        assert tally(replies) == {"error:timeout": 2}
        assert tally(lab.request("client", "10.244.1.5", 8080)) == {"web-1": 1}
    finally:
        lab.run("node", "ip", "route", "add", "10.244.2.0/24", "via", "172.18.0.4")
        lab.run("node", "ip", "route", "del", "default")
    t = trace(snapshot_of(lab, objs))
    assert "PodCidrRouteMissing" not in [f.code for f in t.findings]
    assert tally(lab.request("client", "10.244.2.7", 8080)) == {"web-2": 1}


def test_ip_forward_off_times_out(two_nodes) -> None:
    lab, objs = two_nodes
    reset(lab, objs)
    lab.sysctl("node", {"net.ipv4.ip_forward": "0"})
    try:
        t = trace(snapshot_of(lab, objs))
        f = next(f for f in t.findings if f.code == "IpForwardDisabled")
        assert f.evidence == "net.ipv4.ip_forward = 0"
        assert tally(lab.request("client", CIP, 80, count=3, timeout=0.5)) == {
            "error:timeout": 3}
    finally:
        lab.sysctl("node", {"net.ipv4.ip_forward": "1"})
    t = trace(snapshot_of(lab, objs))
    assert errors(t) == []
    assert set(tally(lab.request("client", CIP, 80, count=12))) == {"web-1", "web-2"}
