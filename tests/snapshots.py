"""Test snapshots: API objects built here, node dumps made by the real kernel.

A healthy two-node cluster (kind-like names and addresses, matching tests/netlab.py's lab so
the kernel scenarios can load the very same rules) plus named mutations. `CASES` maps a case
to the objects the API holds and the objects kube-proxy last saw (they differ for drift).

`python tests/snapshots.py` (root, iptables-nft) regenerates tests/data/snapshots/<case>/:
each case's rules come from `expected_rules(...)`, are loaded into a network namespace and
read back with iptables-save, so the stored dumps are in the exact normalized form a node
prints. Tests load them with `load(case)` and may mutate the in-memory copy further.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules
from kubectl_clusterip.snapshot import (
    SNAPSHOT_API,
    NodeDumps,
    Snapshot,
    load_snapshot,
    write_snapshot,
)

DATA = Path(__file__).parent / "data" / "snapshots"
NODE, NODE2 = "kind-worker", "kind-worker2"
NODE_IP, NODE2_IP = "172.18.0.2", "172.18.0.4"
CIP, DNS_IP = "10.96.120.7", "10.96.0.10"
WEB1, WEB2, CLIENT = "10.244.1.5", "10.244.2.7", "10.244.1.20"
COREDNS = ("10.244.2.3", "10.244.2.4")
PROXY_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.244.0.0/16
mode: {mode}
detectLocalMode: {detect}
detectLocal:
  bridgeInterface: cni0
"""


# -- objects ---------------------------------------------------------------------------------


def node(name: str, ip: str, index: int, zone: str | None = "zone-a") -> dict:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]}}


def pod(ns: str, name: str, ip: str, node_name: str, labels: dict, ready: bool = True,
        ports: list[dict] | None = None) -> dict:
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    if not ready:
        cond |= {"reason": "ContainersNotReady",
                 "message": "containers with unready status: [app]"}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": node_name,
                     "containers": [{"name": "app", "image": "registry.k8s.io/e2e-test-images/"
                                     "agnhost:2.47", "ports": ports or []}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [cond]}}


def service(ns: str, name: str, cip: str, ports: list[dict], selector: dict | None,
            **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                     "ipFamilies": ["IPv4"], "ports": ports, "selector": selector,
                     "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", **spec}}


def endpoint(ip: str, pod_ns: str, pod_name: str, node_name: str, ready: bool = True,
             zone: str = "zone-a", hints: list[str] | None = None) -> dict:
    e = {"addresses": [ip], "nodeName": node_name, "zone": zone,
         "conditions": {"ready": ready, "serving": ready, "terminating": False},
         "targetRef": {"kind": "Pod", "namespace": pod_ns, "name": pod_name}}
    if hints is not None:
        e["hints"] = {"forZones": [{"name": z} for z in hints]}
    return e


def endpoint_slice(ns: str, svc: str, endpoints: list[dict], ports: list[dict],
                   suffix: str = "x7k2p") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": f"{svc}-{suffix}",
                         "labels": {"kubernetes.io/service-name": svc,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


def daemonset(name: str, ready: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"namespace": "kube-system", "name": name},
            "spec": {"template": {"spec": {"containers": [{"name": name}]}}},
            "status": {"desiredNumberScheduled": 2, "numberReady": ready}}


WEB_PORTS = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
WEB_SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]
HTTP_PORT = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
DNS_PORTS = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]


def base_objects() -> list[dict]:
    """shop/web (two ready pods, one per node), a client pod, CoreDNS, kube-proxy, kindnet."""
    return [
        node(NODE, NODE_IP, 1), node(NODE2, NODE2_IP, 2),
        service("shop", "web", CIP, copy.deepcopy(WEB_PORTS), {"app": "web"}),
        pod("shop", "web-1", WEB1, NODE, {"app": "web"}, ports=HTTP_PORT),
        pod("shop", "web-2", WEB2, NODE2, {"app": "web"}, ports=HTTP_PORT),
        pod("shop", "client", CLIENT, NODE, {"app": "client"}),
        endpoint_slice("shop", "web", [endpoint(WEB1, "shop", "web-1", NODE),
                                       endpoint(WEB2, "shop", "web-2", NODE2)],
                       copy.deepcopy(WEB_SLICE_PORTS)),
        service("kube-system", "kube-dns", DNS_IP, copy.deepcopy(DNS_PORTS),
                {"k8s-app": "kube-dns"}),
        *[pod("kube-system", f"coredns-7db6d8ff4d-{s}", ip, NODE2, {"k8s-app": "kube-dns"},
              ports=[{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                     {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}])
          for s, ip in zip(("9xw2m", "q4z7d"), COREDNS)],
        endpoint_slice("kube-system", "kube-dns",
                       [endpoint(ip, "kube-system", f"coredns-7db6d8ff4d-{s}", NODE2)
                        for s, ip in zip(("9xw2m", "q4z7d"), COREDNS)],
                       [{"name": "dns", "port": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}], "b8r5t"),
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"namespace": "kube-system", "name": "kube-proxy"},
         "data": {"config.conf": PROXY_CONFIG.format(mode="iptables", detect="ClusterCIDR")}},
        daemonset("kube-proxy"), daemonset("kindnet"),
    ]


def dns_ok(query: str = "web.shop") -> dict:
    fqdn = "web.shop.svc.cluster.local"
    return {"query": query, "fqdn": fqdn,
            "searchPath": ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            "ndots": 5, "server": DNS_IP,
            "answers": [{"name": f"{query}.shop.svc.cluster.local", "type": "A",
                         "rcode": "NXDOMAIN", "records": []},
                        {"name": f"{fqdn}", "type": "A", "rcode": "NOERROR",
                         "records": [CIP]}], "error": None}


def base_meta() -> dict:
    return {"apiVersion": SNAPSHOT_API, "kind": "Snapshot",
            "capturedAt": "2025-11-26T12:00:00Z", "capturedBy": "tests/snapshots.py",
            "service": "shop/web", "clientNode": NODE,
            "client": {"pod": "shop/client", "ip": CLIENT, "node": NODE}, "dns": dns_ok()}


# -- helpers for mutations ----------------------------------------------------------------------


def find(objects: list[dict], kind: str, ns: str | None, name: str) -> dict:
    for o in objects:
        md = o.get("metadata", {})
        if o.get("kind") == kind and md.get("name") == name and \
                (ns is None or md.get("namespace") == ns):
            return o
    raise KeyError(f"{kind} {ns}/{name}")


def drop(objects: list[dict], kind: str, ns: str | None, name: str) -> list[dict]:
    target = find(objects, kind, ns, name)
    return [o for o in objects if o is not target]


def set_web_endpoints(objects: list[dict], endpoints: list[dict]) -> list[dict]:
    find(objects, "EndpointSlice", "shop", "web-x7k2p")["endpoints"] = endpoints
    return objects


# -- cases: (API objects, objects kube-proxy wrote rules for, config of the node's rules) --------


def _healthy():
    return base_objects(), None


def _no_endpoints():
    """Both web pods not ready: the slice lists them not ready, kube-proxy writes REJECT."""
    objs = base_objects()
    for name in ("web-1", "web-2"):
        find(objs, "Pod", "shop", name)["status"]["conditions"][0] |= {
            "status": "False", "reason": "ContainersNotReady",
            "message": "containers with unready status: [app]"}
    set_web_endpoints(objs, [endpoint(WEB1, "shop", "web-1", NODE, ready=False),
                             endpoint(WEB2, "shop", "web-2", NODE2, ready=False)])
    return objs, None


def _itp_local():
    """internalTrafficPolicy Local, the only endpoint on the other node: DROP here."""
    objs = base_objects()
    find(objs, "Service", "shop", "web")["spec"]["internalTrafficPolicy"] = "Local"
    objs = drop(objs, "Pod", "shop", "web-1")
    set_web_endpoints(objs, [endpoint(WEB2, "shop", "web-2", NODE2)])
    return objs, None


STALE_OLD, STALE_NEW = "10.244.1.6", "10.244.1.9"


def _stale():
    """kube-proxy last synced when web-1 was 10.244.1.6; the pod was replaced (10.244.1.9)."""
    old = base_objects()
    find(old, "Pod", "shop", "web-1")["status"]["podIP"] = STALE_OLD
    set_web_endpoints(old, [endpoint(STALE_OLD, "shop", "web-1", NODE)])
    new = base_objects()
    new = drop(new, "Pod", "shop", "web-2")
    find(new, "Pod", "shop", "web-1")["metadata"]["name"] = "web-1b"
    find(new, "Pod", "shop", "web-1b")["status"]["podIP"] = STALE_NEW
    set_web_endpoints(new, [endpoint(STALE_NEW, "shop", "web-1b", NODE)])
    return new, old


def _affinity():
    objs = base_objects()
    find(objs, "Service", "shop", "web")["spec"] |= {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}}}
    return objs, None


def _topology():
    """PreferClose: web-1 hinted for zone-a (this node), web-2 (zone-b) for zone-b."""
    objs = base_objects()
    find(objs, "Service", "shop", "web")["spec"]["trafficDistribution"] = "PreferClose"
    find(objs, "Node", None, NODE2)["metadata"]["labels"]["topology.kubernetes.io/zone"] = \
        "zone-b"
    set_web_endpoints(objs, [endpoint(WEB1, "shop", "web-1", NODE, hints=["zone-a"]),
                             endpoint(WEB2, "shop", "web-2", NODE2, zone="zone-b",
                                      hints=["zone-b"])])
    return objs, None


def _bridge():
    """detectLocalMode BridgeInterface: the masquerade rule matches `! -i cni0`."""
    objs = base_objects()
    find(objs, "ConfigMap", "kube-system", "kube-proxy")["data"]["config.conf"] = \
        PROXY_CONFIG.format(mode="iptables", detect="BridgeInterface")
    return objs, None


CASES: dict[str, Callable[[], tuple[list[dict], list[dict] | None]]] = {
    "healthy": _healthy,
    "no-endpoints": _no_endpoints,
    "itp-local-no-local": _itp_local,
    "stale-rules": _stale,
    "session-affinity": _affinity,
    "topology": _topology,
    "bridge-detector": _bridge,
}

# kubelet's own chains, present on every node whatever proxies Services (KEP-3178).
KUBELET_ONLY = """\
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming \
localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
"""
# What Cilium with kubeProxyReplacement leaves in iptables (feeder jumps into CILIUM_*).
CILIUM_EXTRA = {
    "filter": [":CILIUM_INPUT - [0:0]", ":CILIUM_FORWARD - [0:0]",
               '-A INPUT -m comment --comment "cilium-feeder: CILIUM_INPUT" -j CILIUM_INPUT',
               '-A FORWARD -m comment --comment "cilium-feeder: CILIUM_FORWARD" '
               "-j CILIUM_FORWARD",
               '-A CILIUM_FORWARD -o cilium_host -m comment --comment "cilium: any->cluster '
               'on cilium_host forward accept" -j ACCEPT'],
    "nat": [":CILIUM_POST_nat - [0:0]", ":CILIUM_PRE_nat - [0:0]",
            '-A PREROUTING -m comment --comment "cilium-feeder: CILIUM_PRE_nat" '
            "-j CILIUM_PRE_nat",
            '-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" '
            "-j CILIUM_POST_nat"],
}


def cilium_rules() -> str:
    out = []
    table = ""
    for line in KUBELET_ONLY.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT":
            out += [x for x in CILIUM_EXTRA.get(table, []) if x.startswith(":")]
            out += [x for x in CILIUM_EXTRA.get(table, []) if not x.startswith(":")]
        out.append(line)
    return "\n".join(out) + "\n"


CILIUM_STATUS = """\
KVStore:                 Ok   Disabled
Kubernetes:              Ok   1.30 (v1.30.0) [linux/amd64]
KubeProxyReplacement:    True   [eth0   172.18.0.2 fc00:f853:ccd:e793::2 (Direct Routing)]
Cilium:                  Ok   1.17.0 (v1.17.0-c2cfe6f1)
KubeProxyReplacement Details:
  Status:                 True
  Socket LB:              Enabled
  Socket LB Tracing:      Enabled
  Socket LB Coverage:     Full
  Devices:                eth0    172.18.0.2 (Direct Routing)
  Mode:                   SNAT
  Backend Selection:      Random
  Session Affinity:       Enabled
  Graceful Termination:   Enabled
  NAT46/64 Support:       Disabled
  XDP Acceleration:       Disabled
  Services:
  - ClusterIP:      Enabled
  - NodePort:       Enabled (Range: 30000-32767)
  - LoadBalancer:   Enabled
  - externalIPs:    Enabled
  - HostPort:       Enabled
"""


def cilium_agent_files(objects: list[dict]) -> dict[str, str]:
    """What a 1.17 agent on NODE prints for these objects: `service list`, `bpf lb list`
    (IDs in Service order, the formats of cilium-dbg/cmd/service_list.go and
    bpf_lb_list.go) and `status --verbose`; ready endpoints are active, serving-and-
    terminating ones terminating (pkg/loadbalancer)."""
    slices = [o for o in objects if o.get("kind") == "EndpointSlice"]
    rows, lb = [], []
    sid = 0
    for svc in (o for o in objects if o.get("kind") == "Service"):
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            sid += 1
            proto = port.get("protocol", "TCP")
            fe = f"{svc['spec']['clusterIP']}:{port['port']}/{proto}"
            bes = []
            for sl in slices:
                if sl["metadata"].get("labels", {}).get("kubernetes.io/service-name") != name \
                        or sl["metadata"]["namespace"] != ns:
                    continue
                num = next((p["port"] for p in sl.get("ports") or []
                            if p.get("name") == port.get("name") and
                            p.get("protocol", "TCP") == proto), None)
                for ep in sl.get("endpoints") or []:
                    cond = ep.get("conditions") or {}
                    state = ("active" if cond.get("ready", True) and not cond.get("terminating")
                             else "terminating" if cond.get("serving") else None)
                    if state and num is not None:
                        bes += [(f"{ip}:{num}/{proto}", state) for ip in ep["addresses"]]
            first = f"{sid:<4} {fe:<22} ClusterIP      "
            rows.append(first + (f"1 => {bes[0][0]} ({bes[0][1]})" if bes else ""))
            rows += [" " * len(first) + f"{i} => {a} ({st})"
                     for i, (a, st) in enumerate(bes[1:], 2)]
            active = [a for a, st in bes if st == "active"] or [a for a, _ in bes]
            lb.append(f"{fe:<22}0.0.0.0:0 ({sid}) (0) [ClusterIP, non-routable]")
            lb += [f"{'':<22}{a} ({sid}) ({i})" for i, a in enumerate(active, 1)]
    svc_list = "ID   Frontend               Service Type   Backend\n" + "\n".join(rows) + "\n"
    lb_list = ("SERVICE ADDRESS       BACKEND ADDRESS (REVNAT_ID) (SLOT)\n" + "\n".join(lb)
               + "\n")
    return {"cilium-service-list.txt": svc_list, "cilium-bpf-lb-list.txt": lb_list,
            "cilium-status.txt": CILIUM_STATUS}


def without_cilium_outputs(snap: Snapshot) -> Snapshot:
    """The snapshot as captured before the agent's outputs were read (iptables only)."""
    nodes = {n: NodeDumps(n, {f: t for f, t in d.files.items() if not f.startswith("cilium-")})
             for n, d in snap.nodes.items()}
    return Snapshot(snap.meta, snap.objects, nodes, snap.source)


def _config(objects: list[dict]) -> ProxyConfig:
    return ProxyConfig.from_configmap(find(objects, "ConfigMap", "kube-system", "kube-proxy"))


def rules_text(objects: list[dict], node_name: str = NODE) -> str:
    """kube-proxy's restore input for a node (with the built-in chains' jumps)."""
    services = [o for o in objects if o.get("kind") == "Service"]
    slices = [o for o in objects if o.get("kind") == "EndpointSlice"]
    return expected_rules(services, slices, find(objects, "Node", None, node_name),
                          _config(objects))


# -- loading --------------------------------------------------------------------------------------


def load(case: str) -> Snapshot:
    """A stored case, read through the on-disk format (a fresh copy every time)."""
    return load_snapshot(str(DATA / case))


def mutate(snap: Snapshot, fn: Callable[[list[dict]], list[dict] | None]) -> Snapshot:
    """A copy whose objects `fn` changed (in place, or by returning a new list)."""
    objs = copy.deepcopy(snap.objects)
    got = fn(objs)
    return Snapshot(copy.deepcopy(snap.meta), got if got is not None else objs,
                    copy.deepcopy(snap.nodes), snap.source)


# -- generation (root; the real kernel normalizes the rules) ------------------------------------


def generate(root: Path = DATA) -> list[str]:
    sys.path.insert(0, os.path.dirname(__file__))
    from netlab import Lab

    written = []
    with Lab(nodes=2, ipv6=False) as lab:
        for name, ip in (("web-1", WEB1), ("client", CLIENT), ("web-1-old", STALE_OLD),
                         ("web-1b", STALE_NEW)):
            lab.add_pod(name, ip)  # their /32 routes on veths, as the CNI leaves them
        addr, route = lab.ip_addr_json(), lab.ip_route_json(4)

        def save(text: str) -> str:
            lab.reset_rules()
            lab.load_iptables(text, 4)
            return lab.iptables_save(4)

        def write(case: str, objects: list[dict], dump: str, kube_proxy: bool = True) -> None:
            files = {"iptables-save.txt": dump, "ip-addr.json": addr, "ip-route.json": route}
            if kube_proxy:  # its /proxyMode endpoint answered
                files["proxy-mode"] = "iptables\n"
            snap = Snapshot(base_meta(), objects, {})
            write_snapshot(snap, str(root / case))
            d = root / case / "nodes" / NODE
            d.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (d / name).write_text(text)
            written.append(case)

        for case, build in CASES.items():
            api, rules_for = build()
            write(case, api, save(rules_text(rules_for or api)))
        objs = base_objects()
        write("no-kube-proxy", objs, save(KUBELET_ONLY), kube_proxy=False)
        objs = drop(base_objects(), "DaemonSet", "kube-system", "kube-proxy")
        objs = [*drop(objs, "DaemonSet", "kube-system", "kindnet"), daemonset("cilium")]
        objs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"namespace": "kube-system", "name": "cilium-config"},
                     "data": {"kube-proxy-replacement": "true"}})
        write("cilium", objs, save(cilium_rules()), kube_proxy=False)
        for name, text in cilium_agent_files(objs).items():
            (root / "cilium" / "nodes" / NODE / name).write_text(text)
    return written


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))
    print("\n".join(generate()))
