"""The client node's own state, judged: conntrack fill and drops, forwarding, br_netfilter on
a bridge CNI, kube-proxy's health, and the route to each endpoint's pod CIDR.

Thresholds (docs/findings.md): conntrack ≥ 90% of nf_conntrack_max is a warning, full an
error; a kube-proxy whose last successful sync is older than twice its syncPeriod (the
health timeout kube-proxy itself uses) is a warning.
"""

from __future__ import annotations

import ipaddress
import re

from kubectl_clusterip.diagnose.cluster import Cluster, listed
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import ClusterIPError, Finding, Route, Trace
from kubectl_clusterip.nodefacts import CONNTRACK_COUNTERS, NodeFacts, node_facts

CONNTRACK_WARN = 0.90
DEFAULT_SYNC_PERIOD = 30.0  # seconds, kube-proxy's default syncPeriod
# CNI -> interfaces its routes to other nodes' pod CIDRs may use, besides the node's uplink.
CNI_ROUTE_DEVICES = {"Flannel": ("flannel.1", "flannel-wg"), "Canal": ("flannel.1",),
                     "Calico": ("tunl0", "vxlan.calico", "wireguard.cali"),
                     "Weave Net": ("weave",), "kube-router": ("kube-bridge", "tun"),
                     "kindnet": ()}


def facts_of(cl: Cluster) -> tuple[NodeFacts | None, str]:
    """The node's facts, or None and why they could not be read."""
    if cl.node not in cl.snap.nodes:
        return None, ""
    try:
        return node_facts(cl.snap.nodes[cl.node].files), ""
    except ClusterIPError as e:
        return None, str(e)


def conntrack_fill(facts: NodeFacts, node: str) -> Finding | None:
    count = facts.sysctl_int("net.netfilter.nf_conntrack_count")
    limit = facts.sysctl_int("net.netfilter.nf_conntrack_max")
    if count is None or not limit:
        return None
    evidence = f"net.netfilter.nf_conntrack_count = {count}, nf_conntrack_max = {limit}"
    hint = (f"on node {node}: sysctl -w net.netfilter.nf_conntrack_max=… (kube-proxy's "
            "conntrack.maxPerCore / min), or find who opens so many connections: conntrack -L")
    if count >= limit:
        return finding("ConntrackTableFull",
                       f"node {node}'s conntrack table is full ({count}/{limit}): the kernel "
                       "drops every packet that would start a new connection", evidence, hint)
    if count >= CONNTRACK_WARN * limit:
        return finding("ConntrackTableNearlyFull",
                       f"node {node}'s conntrack table is {100 * count // limit}% full "
                       f"({count}/{limit}): when full, new connections are dropped",
                       evidence, hint)
    return None


def conntrack_drops(facts: NodeFacts, node: str) -> Finding | None:
    bad = {k: facts.conntrack_stats.get(k, 0) for k in CONNTRACK_COUNTERS}
    if not any(bad.values()):
        return None
    return finding("ConntrackDrops",
                   f"conntrack on node {node} has dropped or failed to insert entries since "
                   f"boot ({', '.join(f'{k}={v}' for k, v in bad.items() if v)}): "
                   "insert_failed is the UDP race that loses DNS queries; drop/early_drop a "
                   "full table",
                   f"conntrack -S summed over {facts.cpus} CPU(s): "
                   + " ".join(f"{k}={v}" for k, v in bad.items()),
                   f"on node {node}: conntrack -S (again, to see whether they grow)")


def forwarding_off(facts: NodeFacts, node: str, trace: Trace) -> Finding | None:
    """A pod's packet is routed through the node: forwarding off drops it."""
    if trace.packet.from_host:
        return None
    key = ("net.ipv4.ip_forward" if trace.packet.family == 4
           else "net.ipv6.conf.all.forwarding")
    if facts.sysctl_int(key) != 0:
        return None
    return finding("IpForwardDisabled",
                   f"{key} is 0 on node {node}: the node does not route the pod's packet to "
                   "the endpoint, so the request times out", f"{key} = 0",
                   f"on node {node}: sysctl -w {key}=1 (and persist it in /etc/sysctl.d)")


def _covering(routes: tuple[Route, ...], ip: str) -> Route | None:
    """The most specific non-default route whose destination holds ip."""
    addr = ipaddress.ip_address(ip)
    best: tuple[int, Route] | None = None
    for r in routes:
        if r.dst == "default":
            continue
        try:
            net = ipaddress.ip_network(r.dst if "/" in r.dst else
                                       f"{r.dst}/{addr.max_prefixlen}", strict=False)
        except ValueError:
            continue
        if net.version == addr.version and addr in net and (
                best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, r)
    return best[1] if best else None


def bridge_nf_off(cl: Cluster, facts: NodeFacts, trace: Trace) -> Finding | None:
    """Same-node pod -> ClusterIP -> pod over a bridge: the reply is bridged, and only
    br_netfilter (bridge-nf-call-iptables=1) shows it to conntrack to undo the DNAT."""
    if trace.packet.from_host or cl.node not in cl.snap.nodes:
        return None
    routes = cl.snap.nodes[cl.node].node().routes
    client = _covering(routes, trace.packet.src_ip)
    if client is None or client.gateway or "/" not in client.dst or \
            client.dst.endswith(("/32", "/128")):
        return None  # the client is not on a subnet bridge (ptp veths route per pod)
    same = [c for c in trace.candidates
            if (r := _covering(routes, c.ip)) is not None and r.dev == client.dev
            and r.dst == client.dst and not c.masquerade]
    if not same:
        return None
    key = ("net.bridge.bridge-nf-call-iptables" if trace.packet.family == 4
           else "net.bridge.bridge-nf-call-ip6tables")
    value = facts.sysctls.get(key)
    if value not in (None, "0") or not facts.sysctls:
        return None
    why = f"{key} = 0" if value == "0" else f"no {key} (br_netfilter is not loaded)"
    return finding("BridgeNfCallIptablesOff",
                   f"{why} on node {cl.node}, whose pods share bridge {client.dev} "
                   f"({client.dst}): the reply from {listed([c.endpoint for c in same])} is "
                   "bridged straight to the client, conntrack never undoes the DNAT, and the "
                   "client drops an answer from the pod's address instead of the ClusterIP",
                   f"{why}; route {client.dst} dev {client.dev}",
                   f"on node {cl.node}: modprobe br_netfilter; sysctl -w {key}=1")


def _go_duration(s: str) -> float | None:
    parts = re.findall(r"([\d.]+)(h|ms|m|s)", s or "")
    if not parts or "".join(a + b for a, b in parts) != s:
        return None
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(a) * scale[b] for a, b in parts)


def sync_period(cl: Cluster, mode: str) -> tuple[float, str]:
    """kube-proxy's syncPeriod for the mode (seconds) and where it came from."""
    cm = cl.snap.get("ConfigMap", "kube-system", "kube-proxy")
    conf = ((cm or {}).get("data") or {}).get("config.conf") or ""
    doc = {}
    if conf:  # a bare dump has no ConfigMap, and then no need of a YAML parser
        import yaml

        try:
            doc = yaml.safe_load(conf) or {}
        except yaml.YAMLError:
            pass
    raw = ((doc.get(mode) or {}) if isinstance(doc, dict) else {}).get("syncPeriod")
    value = _go_duration(str(raw)) if raw else None
    if value:
        return value, f"ConfigMap kube-system/kube-proxy {mode}.syncPeriod: {raw}"
    return DEFAULT_SYNC_PERIOD, "syncPeriod 30s (kube-proxy's default)"


def kube_proxy_stale(cl: Cluster, facts: NodeFacts, trace: Trace) -> Finding | None:
    h = facts.healthz
    if not h:
        return None
    period, where = sync_period(cl, trace.proxy_mode or "iptables")
    age = (h["currentTime"] - h["lastUpdated"]).total_seconds()
    if age <= 2 * period:
        return None
    evidence = [f"/healthz lastUpdated {h['lastUpdated']:%Y-%m-%d %H:%M:%S}, currentTime "
                f"{h['currentTime']:%Y-%m-%d %H:%M:%S}", where]
    last = facts.metrics.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
    if last:
        evidence.append(f"kubeproxy_sync_proxy_rules_last_timestamp_seconds "
                        f"{h['currentTime'].timestamp() - last:.0f}s ago")
    return finding("KubeProxySyncStale",
                   f"kube-proxy on node {cl.node} last synced its rules {_ago(age)} ago, more "
                   f"than twice its sync period ({period:g}s): changes to Services and "
                   "endpoints since then are not on this node (its /healthz answers 503)",
                   "; ".join(evidence),
                   f"kubectl -n kube-system logs -l k8s-app=kube-proxy --tail=100 (the pod "
                   f"on {cl.node})")


def _ago(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def pod_cidr_routes(cl: Cluster, trace: Trace) -> list[Finding]:
    """Each remote endpoint's node pod CIDR needs a route on the client node, through the
    CNI's interface or the node's uplink."""
    if cl.node not in cl.snap.nodes or not cl.snap.nodes[cl.node].files.get("ip-route.json"):
        return []
    cni = cl.cni() or ""
    family = next((k for k in CNI_ROUTE_DEVICES if cni.startswith(k)), None)
    if family is None:
        return []  # routes of other CNIs (eBPF, cloud VPC routing) are not judged
    node = cl.snap.nodes[cl.node].node()
    uplinks = {a.dev for a in node.addresses if a.ip in _internal_ips(cl, cl.node)}
    expected = uplinks | set(CNI_ROUTE_DEVICES[family])
    out = []
    seen = set()
    for c in trace.candidates:
        other = c.extra.get("node")
        if not other or other == cl.node:
            continue
        obj = cl.snap.get("Node", None, other) or {}
        spec = obj.get("spec") or {}
        cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        for cidr in cidrs:
            if (":" in cidr) != (":" in c.ip) or (other, cidr) in seen:
                continue
            seen.add((other, cidr))
            r = _covering(node.routes, c.ip)
            if r is None:
                out.append(finding(
                    "PodCidrRouteMissing",
                    f"node {cl.node} has no route for {cidr}, the pod CIDR of node {other} "
                    f"where endpoint {c.endpoint} runs: the request follows the default route "
                    f"and times out", f"Node {other} spec.podCIDRs: {cidr}; no route on "
                    f"{cl.node} holds {c.ip}", f"on node {cl.node}: ip route get {c.ip}; check "
                    f"the {cni.split(' (')[0]} pod on {cl.node} (it installs these routes)"))
            elif expected and r.dev not in expected:
                via = f" via {r.gateway}" if r.gateway else ""
                out.append(finding(
                    "PodCidrRouteUnexpectedDevice",
                    f"node {cl.node} routes {c.ip} (pod CIDR {cidr} of node {other}) through "
                    f"{r.dev}, not through {' or '.join(sorted(expected))} as "
                    f"{cni.split(' (')[0]} does", f"route {r.dst}{via} dev {r.dev}",
                    f"on node {cl.node}: ip route get {c.ip}"))
    return out


def _internal_ips(cl: Cluster, node: str) -> set[str]:
    obj = cl.snap.get("Node", None, node) or {}
    return {a.get("address") for a in (obj.get("status") or {}).get("addresses") or []
            if a.get("type") in ("InternalIP", "ExternalIP")}


def rp_filter(cl: Cluster, facts: NodeFacts, trace: Trace) -> dict[str, int]:
    """The effective rp_filter (the kernel uses max(conf.all, conf.IFACE)) of the interfaces
    the path uses on this node: toward the client and toward each endpoint."""
    if cl.node not in cl.snap.nodes or not facts.sysctls:
        return {}
    routes = cl.snap.nodes[cl.node].node().routes
    devs = {r.dev for ip in (trace.packet.src_ip, *(c.ip for c in trace.candidates))
            if (r := _covering(routes, ip)) is not None and r.dev}
    base = facts.sysctl_int("net.ipv4.conf.all.rp_filter") or 0
    return {d: max(base, v) for d in sorted(devs)
            if (v := facts.sysctl_int(f"net.ipv4.conf.{d}.rp_filter")) is not None}


def summary_of(cl: Cluster, facts: NodeFacts, trace: Trace) -> dict:
    """The facts as data for the JSON (`nodeFacts`): what was read, judged or not."""
    out: dict = {}
    count = facts.sysctl_int("net.netfilter.nf_conntrack_count")
    limit = facts.sysctl_int("net.netfilter.nf_conntrack_max")
    if count is not None and limit:
        out["conntrack"] = {"count": count, "max": limit}
    if facts.conntrack_stats:
        out.setdefault("conntrack", {}).update(
            {k: facts.conntrack_stats.get(k, 0) for k in CONNTRACK_COUNTERS})
    for key, name in (("net.ipv4.ip_forward", "ipForward"),
                      ("net.bridge.bridge-nf-call-iptables", "bridgeNfCallIptables")):
        if key in facts.sysctls:
            out[name] = facts.sysctl_int(key)
    rp = rp_filter(cl, facts, trace)
    if rp:
        out["rpFilter"] = rp
    if facts.healthz:
        h = facts.healthz
        out["kubeProxy"] = {"lastUpdated": h["lastUpdated"].isoformat(),
                            "currentTime": h["currentTime"].isoformat(),
                            "syncAgeSeconds": round((h["currentTime"] - h["lastUpdated"])
                                                    .total_seconds(), 3)}
    return out


def node_findings(cl: Cluster, trace: Trace) -> tuple[list[Finding], list[str], dict]:
    """Every node-state finding for this trace, notes on what could not be read, and the
    facts as data."""
    facts, error = facts_of(cl)
    out: list[Finding] = []
    data: dict = {}
    if facts is not None:
        data = summary_of(cl, facts, trace)
        for f in (conntrack_fill(facts, cl.node), conntrack_drops(facts, cl.node),
                  forwarding_off(facts, cl.node, trace), bridge_nf_off(cl, facts, trace),
                  kube_proxy_stale(cl, facts, trace)):
            if f is not None:
                out.append(f)
    if trace.verdict == "dnat":
        out += pod_cidr_routes(cl, trace)
    return out, [f"node facts not judged: {error}"] if error else [], data
