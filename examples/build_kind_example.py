"""Rebuild examples/kind-my-service: a snapshot of a three-node kind cluster.

The API objects are what `kubectl get -o yaml` prints for the classic two-replica nginx
`my-service`; the node's iptables-save output is what the kernel prints after loading the
rules kube-proxy writes for those objects (plus kind's own chains), read back from a
throwaway network namespace. Needs root and iptables; run from the repository root:

    sudo python3 examples/build_kind_example.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netlab import kernel_round_trip

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules
from kubectl_clusterip.snapshot import NodeDumps, Snapshot, write_snapshot

OUT = Path(__file__).resolve().parent / "kind-my-service"
NODE = "kind-worker"
KUBE_PROXY_CONF = """apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.244.0.0/16
mode: iptables
iptables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 1s
  syncPeriod: 0s
detectLocalMode: ""
"""
NODES = {  # name -> (InternalIP, podCIDR)
    "kind-control-plane": ("172.18.0.3", "10.244.0.0/24"),
    "kind-worker": ("172.18.0.2", "10.244.1.0/24"),
    "kind-worker2": ("172.18.0.4", "10.244.2.0/24"),
}
PODS = [  # namespace, name, ip, node, labels, container port
    ("default", "my-nginx-5b56ccd65f-8qmzx", "10.244.1.2", "kind-worker", {"app": "nginx"}, 80),
    ("default", "my-nginx-5b56ccd65f-t9v4k", "10.244.2.2", "kind-worker2", {"app": "nginx"}, 80),
    ("default", "client", "10.244.1.3", "kind-worker", {"run": "client"}, None),
    ("kube-system", "coredns-7db6d8ff4d-4zqjx", "10.244.0.2", "kind-control-plane",
     {"k8s-app": "kube-dns"}, 53),
    ("kube-system", "coredns-7db6d8ff4d-ms5cw", "10.244.0.3", "kind-control-plane",
     {"k8s-app": "kube-dns"}, 53),
]
CREATED = "2026-11-20T09:14:02Z"


def meta(name: str, namespace: str | None = None, **extra: object) -> dict:
    md: dict = {"name": name, "creationTimestamp": CREATED}
    if namespace:
        md["namespace"] = namespace
    md.update(extra)
    return md


def service(ns: str, name: str, ip: str, ports: list[dict], selector: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, ns),
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "internalTrafficPolicy": "Cluster",
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "ports": ports,
                     "selector": selector, "sessionAffinity": "None", "type": "ClusterIP"},
            "status": {"loadBalancer": {}}}


def endpoint_slice(ns: str, svc: str, suffix: str, endpoints: list[dict],
                   ports: list[dict]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta(f"{svc}-{suffix}", ns, labels={
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}),
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


def pod_endpoint(ns: str, name: str, ip: str, node: str) -> dict:
    return {"addresses": [ip], "conditions": {"ready": True, "serving": True,
                                              "terminating": False},
            "nodeName": node, "targetRef": {"kind": "Pod", "name": name, "namespace": ns}}


def objects() -> list[dict]:
    dns_ports = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                 {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                 {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]
    kube_dns = service("kube-system", "kube-dns", "10.96.0.10", dns_ports, {"k8s-app": "kube-dns"})
    kube_dns["metadata"]["labels"] = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    kubernetes = service("default", "kubernetes", "10.96.0.1",
                         [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                         {})
    del kubernetes["spec"]["selector"]
    my_service = service("default", "my-service", "10.96.144.131",
                         [{"port": 80, "protocol": "TCP", "targetPort": 80}], {"app": "nginx"})
    items: list[dict] = [kubernetes, my_service, kube_dns]
    items.append(endpoint_slice("default", "kubernetes", "", [
        {"addresses": ["172.18.0.3"], "conditions": {"ready": True, "serving": True,
                                                      "terminating": False}}],
        [{"name": "https", "port": 6443, "protocol": "TCP"}]))
    items[-1]["metadata"]["name"] = "kubernetes"
    items.append(endpoint_slice("default", "my-service", "x7k2p", [
        pod_endpoint("default", p[1], p[2], p[3]) for p in PODS if p[4] == {"app": "nginx"}],
        [{"name": "", "port": 80, "protocol": "TCP"}]))
    items.append(endpoint_slice("kube-system", "kube-dns", "q8w5n", [
        pod_endpoint("kube-system", p[1], p[2], p[3]) for p in PODS if p[0] == "kube-system"],
        [{"name": "dns", "port": 53, "protocol": "UDP"},
         {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
         {"name": "metrics", "port": 9153, "protocol": "TCP"}]))
    for ns, name, ip, node, labels, port in PODS:
        container = {"name": name.split("-")[0], "image": "nginx:1.27" if "nginx" in name else
                     "registry.k8s.io/coredns/coredns:v1.11.3" if "coredns" in name else
                     "busybox:1.36"}
        if port:
            container["ports"] = [{"containerPort": port, "protocol": "TCP"}]
        items.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta(name, ns, labels=labels),
                      "spec": {"nodeName": node, "containers": [container],
                               "dnsPolicy": "ClusterFirst"},
                      "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                                 "hostIP": NODES[node][0],
                                 "conditions": [{"type": "Ready", "status": "True"}]}})
    for name, (ip, cidr) in NODES.items():
        items.append({"apiVersion": "v1", "kind": "Node", "metadata": meta(name, labels={
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}),
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": f"kind://docker/kind/{name}"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True"}]}})
    items.append({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": meta("kube-proxy", "kube-system", labels={"app": "kube-proxy"}),
                  "data": {"config.conf": KUBE_PROXY_CONF}})
    items.append({"apiVersion": "apps/v1", "kind": "DaemonSet",
                  "metadata": meta("kindnet", "kube-system", labels={"app": "kindnet"}),
                  "spec": {"selector": {"matchLabels": {"app": "kindnet"}}},
                  "status": {"desiredNumberScheduled": 3, "numberReady": 3}})
    items.append({"apiVersion": "apps/v1", "kind": "DaemonSet",
                  "metadata": meta("kube-proxy", "kube-system", labels={"k8s-app": "kube-proxy"}),
                  "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}}},
                  "status": {"desiredNumberScheduled": 3, "numberReady": 3}})
    return items


# kind's own rules beside kube-proxy's: Docker's embedded DNS and kindnet's masquerade agent.
KIND_NAT = """-A PREROUTING -d 172.18.0.1/32 -j DOCKER_OUTPUT
-A OUTPUT -d 172.18.0.1/32 -j DOCKER_OUTPUT
-A POSTROUTING -d 172.18.0.1/32 -j DOCKER_POSTROUTING
-A POSTROUTING -m addrtype ! --dst-type LOCAL -m comment --comment "kind-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom KIND-MASQ-AGENT chain" -j KIND-MASQ-AGENT
-A DOCKER_OUTPUT -d 172.18.0.1/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.11:37511
-A DOCKER_OUTPUT -d 172.18.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:47809
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p tcp -m tcp --sport 37511 -j SNAT --to-source 172.18.0.1:53
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 47809 -j SNAT --to-source 172.18.0.1:53
-A KIND-MASQ-AGENT -d 10.244.0.0/16 -m comment --comment "kind-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A KIND-MASQ-AGENT -m comment --comment "kind-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE
"""
KIND_NAT_CHAINS = ("DOCKER_OUTPUT", "DOCKER_POSTROUTING", "KIND-MASQ-AGENT")


def iptables_dump(objs: list[dict]) -> str:
    svcs = [o for o in objs if o["kind"] == "Service"]
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    node = next(o for o in objs if o["kind"] == "Node" and o["metadata"]["name"] == NODE)
    text = expected_rules(svcs, slices, node, ProxyConfig(cluster_cidrs=["10.244.0.0/16"]))
    nat_decl = "".join(f":{c} - [0:0]\n" for c in KIND_NAT_CHAINS)
    text = text.replace("*nat\n", "*nat\n" + nat_decl, 1)
    text = text.replace("COMMIT\n", KIND_NAT + "COMMIT\n") if text.count("COMMIT") == 1 else (
        text[: text.rindex("COMMIT\n")] + KIND_NAT + "COMMIT\n")
    (saved,) = kernel_round_trip(text, ["iptables-restore"], ["iptables-save"])
    return saved


def ip_addr() -> list[dict]:
    def link(index: int, name: str, addrs: list[tuple[str, int, str]], **kw: object) -> dict:
        return {"ifindex": index, "ifname": name, "flags": ["BROADCAST", "MULTICAST", "UP",
                                                            "LOWER_UP"], "mtu": 1500,
                "operstate": "UP", **kw,
                "addr_info": [{"family": fam, "local": ip, "prefixlen": plen, "scope": "global"}
                              for ip, plen, fam in addrs]}
    lo = link(1, "lo", [("127.0.0.1", 8, "inet")])
    lo["addr_info"][0]["scope"] = "host"
    return [lo, link(2, "veth5f1e2c0a", [("10.244.1.1", 32, "inet")], link_type="ether"),
            link(3, "veth9b0d7e41", [("10.244.1.1", 32, "inet")], link_type="ether"),
            link(14, "eth0", [("172.18.0.2", 16, "inet")], link_type="ether")]


def ip_route() -> list[dict]:
    return [
        {"dst": "default", "gateway": "172.18.0.1", "dev": "eth0", "flags": []},
        {"dst": "10.244.0.0/24", "gateway": "172.18.0.3", "dev": "eth0", "flags": []},
        {"dst": "10.244.1.2", "dev": "veth5f1e2c0a", "scope": "host", "flags": []},
        {"dst": "10.244.1.3", "dev": "veth9b0d7e41", "scope": "host", "flags": []},
        {"dst": "10.244.2.0/24", "gateway": "172.18.0.4", "dev": "eth0", "flags": []},
        {"dst": "172.18.0.0/16", "dev": "eth0", "protocol": "kernel", "scope": "link",
         "prefsrc": "172.18.0.2", "flags": []},
    ]


def main() -> None:
    objs = objects()
    dumps = NodeDumps(NODE, {
        "iptables-save.txt": iptables_dump(objs),
        "proxy-mode": "iptables\n",
        "ip-addr.json": json.dumps(ip_addr(), indent=1) + "\n",
        "ip-route.json": json.dumps(ip_route(), indent=1) + "\n",
    })
    snap = Snapshot({
        "apiVersion": "clusterip.kubectl.dev/v1alpha1", "kind": "Snapshot",
        "capturedAt": "2026-11-20T09:30:00Z", "capturedBy": "kubectl-clusterip (example)",
        "context": "kind-kind", "service": "default/my-service", "clientNode": NODE,
        "client": {"pod": "default/client", "ip": "10.244.1.3", "node": NODE},
        "dns": {"query": "my-service", "fqdn": "my-service.default.svc.cluster.local.",
                "searchPath": ["default.svc.cluster.local", "svc.cluster.local",
                               "cluster.local"], "ndots": 5,
                "server": "10.96.0.10:53 (kube-system/kube-dns)",
                "answers": [{"name": "my-service.default.svc.cluster.local.", "type": "A",
                             "rcode": "NOERROR", "records": ["10.96.144.131"]}],
                "error": None},
    }, objs, {NODE: dumps})
    write_snapshot(snap, str(OUT))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
