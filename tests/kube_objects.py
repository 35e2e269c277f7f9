"""Kubernetes API objects as `kubectl get -o json` prints them, built small for tests."""

from __future__ import annotations

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules


def service(name: str, ips: str | list[str], ports: list[tuple], namespace: str = "default",
            affinity: int | None = None, itp: str = "Cluster") -> dict:
    """ports: (name, port, protocol, targetPort) tuples."""
    ips = [ips] if isinstance(ips, str) else ips
    spec: dict = {
        "type": "ClusterIP", "clusterIP": ips[0], "clusterIPs": ips,
        "ipFamilies": ["IPv6" if ":" in ip else "IPv4" for ip in ips],
        "ports": [{"name": n, "port": p, "protocol": proto.upper(), "targetPort": tp}
                  for n, p, proto, tp in ports],
        "selector": {"app": name}, "sessionAffinity": "None", "internalTrafficPolicy": itp,
    }
    if affinity is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def endpoint_slice(svc: str, endpoints: list[tuple], ports: list[tuple],
                   namespace: str = "default", family: int = 4) -> dict:
    """endpoints: (ip, nodeName[, ready]) tuples; ports: (name, port, protocol) tuples."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{svc}-{family}", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": f"IPv{family}",
        "endpoints": [{"addresses": [e[0]], "nodeName": e[1],
                       "conditions": {"ready": e[2] if len(e) > 2 else True,
                                      "serving": True, "terminating": False}}
                      for e in endpoints],
        "ports": [{"name": n, "port": p, "protocol": proto.upper()} for n, p, proto in ports],
    }


def node(name: str, ip: str, pod_cidrs: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}},
            "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def rules_for(services: list[dict], slices: list[dict], node_obj: dict | str = "node",
              family: int = 4, cluster_cidr: str | None = None, **config: object) -> str:
    """What kube-proxy (iptables mode) writes for these objects on node_obj."""
    cidr = cluster_cidr or ("10.244.0.0/16" if family == 4 else "fd00:10:244::/56")
    cfg = ProxyConfig(cluster_cidrs=[cidr] if cidr != "none" else [], **config)  # type: ignore
    return expected_rules(services, slices, node_obj, cfg, family)


# The kernel tests' node: pod addresses and the services/slices they program (IPv4 and IPv6).
LAB_PODS = {"client": "10.244.1.5", "ep1": "10.244.1.6", "ep2": "10.244.1.7", "ep3": "10.244.2.5"}
LAB_POD6 = {"client": "fd00:10:244:1::5", "ep1": "fd00:10:244:1::6", "ep2": "fd00:10:244:1::7"}


def lab_objects() -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    eps = [(LAB_PODS["ep1"], "node"), (LAB_PODS["ep2"], "node"), (LAB_PODS["ep3"], "node2")]
    http = [("http", 8080, "tcp")]
    svcs = [
        service("web", "10.96.0.20", [("http", 80, "tcp", 8080)], "shop"),
        service("empty", "10.96.0.21", [("http", 80, "tcp", 8080)], "shop"),
        service("self", "10.96.0.22", [("http", 80, "tcp", 8081)], "shop"),
        service("dns", "10.96.0.10", [("dns", 53, "udp", 5353)], "kube-system"),
        service("two", "10.96.0.23", [("http", 80, "tcp", 8080), ("metrics", 9090, "tcp", 9090)],
                "shop"),
        service("sticky", "10.96.0.24", [("http", 80, "tcp", 8080)], "shop", affinity=300),
    ]
    slices = [
        endpoint_slice("web", eps, http, "shop"),
        endpoint_slice("self", [(LAB_PODS["client"], "node")], [("http", 8081, "tcp")], "shop"),
        endpoint_slice("dns", eps[:2], [("dns", 5353, "udp")], "kube-system"),
        endpoint_slice("two", eps[:2], [*http, ("metrics", 9090, "tcp")], "shop"),
        endpoint_slice("sticky", eps, http, "shop"),
    ]
    svc6 = [service("web6", "fd00:10:96::20", [("http", 80, "tcp", 8080)], "shop")]
    slices6 = [endpoint_slice("web6", [(LAB_POD6["ep1"], "node"), (LAB_POD6["ep2"], "node")], http,
                              "shop", family=6)]
    return svcs, slices, svc6, slices6
