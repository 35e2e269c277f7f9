"""kube-proxy's endpoint selection, from API objects to the endpoints each chain should hold.

Inputs are plain dicts shaped like `kubectl get -o json` (Service, discovery.k8s.io/v1
EndpointSlice, Node). The rules follow kube-proxy ≥v1.33 (serviceport.go,
endpointslicecache.go, topology.go) so the tool can say which endpoints a node *should*
DNAT to, and explain why an endpoint is missing (not ready, other zone, not local…).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

from kubectl_clusterip.model import join_host_port
from kubectl_clusterip.naming import svc_port_name

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_ZONE = "topology.kubernetes.io/zone"
ANNOTATION_TOPOLOGY_MODE = "service.kubernetes.io/topology-mode"
ANNOTATION_TOPOLOGY_HINTS = "service.kubernetes.io/topology-aware-hints"  # deprecated, wins
DEFAULT_AFFINITY_SECONDS = 10800


def canonical_ip(text: str) -> str | None:
    """Go's ParseIPSloppy(ip).String(): leading-zero IPv4 octets allowed, IPv6 compressed,
    IPv4-mapped IPv6 printed as IPv4. None when not an IP."""
    text = (text or "").strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        parts = text.split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            return None
        try:
            addr = ipaddress.ip_address(".".join(str(int(p)) for p in parts))
        except ValueError:
            return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def ip_family(ip: str) -> int | None:
    c = canonical_ip(ip)
    return ipaddress.ip_address(c).version if c else None


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def ignored_by_proxy(obj: dict) -> bool:
    """kube-proxy's informers never see objects carrying these labels (any value)."""
    labels = _labels(obj)
    return LABEL_PROXY_NAME in labels or LABEL_HEADLESS in labels


@dataclass(frozen=True)
class ServicePortInfo:
    namespace: str
    name: str
    port_name: str
    svc_port_name: str
    protocol: str  # lower-case, as in rules and chain hashes
    port: int
    target_port: int | str
    node_port: int
    cluster_ips: dict[int, str] = field(hash=False)
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()  # VIP-mode ingress IPs only
    lb_source_ranges: tuple[str, ...] = ()  # trimmed, normalised; allow-all means empty
    session_affinity_seconds: int | None = None
    internal_local: bool = False
    external_local: bool = False
    traffic_distribution: str | None = None
    topology_annotation: str | None = None
    health_check_node_port: int = 0
    service_type: str = "ClusterIP"

    def cluster_ip(self, family: int) -> str | None:
        return self.cluster_ips.get(family)

    def external_ips_for(self, family: int) -> list[str]:
        return [ip for ip in self.external_ips if ip_family(ip) == family]

    def lb_ips_for(self, family: int) -> list[str]:
        return [ip for ip in self.lb_ips if ip_family(ip) == family]

    def source_ranges_for(self, family: int) -> list[str]:
        """Per-family ranges; a zero-prefix range for the family means "allow all" (none)."""
        nets = []
        for r in self.lb_source_ranges:
            try:
                nets.append(ipaddress.ip_network(r, strict=False))
            except ValueError:
                continue
        nets = [n for n in nets if n.version == family]
        if any(n.prefixlen == 0 for n in nets):
            return []
        return [str(n) for n in nets]

    def externally_accessible(self, family: int) -> bool:
        """NodePort, or any LB VIP / externalIP of this family."""
        return bool(self.node_port or self.lb_ips_for(family) or self.external_ips_for(family))

    def uses_cluster_endpoints(self, family: int) -> bool:
        """Cluster endpoints are needed for ITP=Cluster, and for ETP=Local short-circuiting."""
        return not self.internal_local or self.externally_accessible(family)

    def uses_local_endpoints(self, family: int) -> bool:
        return self.internal_local or (self.external_local and self.externally_accessible(family))


def _cluster_ips(spec: dict) -> dict[int, str]:
    ips = [ip for ip in spec.get("clusterIPs") or [] if ip] or [spec.get("clusterIP") or ""]
    out: dict[int, str] = {}
    for ip in ips:
        c = canonical_ip(ip)
        if c is None:
            continue
        out.setdefault(ipaddress.ip_address(c).version, c)
    return out


def _is_vip_mode(ingress: dict) -> bool:
    return (ingress.get("ipMode") or "VIP") == "VIP"


def service_ports(service: dict) -> list[ServicePortInfo]:
    """One ServicePortInfo per spec.ports entry, or [] when kube-proxy ignores the Service."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    if ignored_by_proxy(service):
        return []
    svc_type = spec.get("type") or "ClusterIP"
    cluster_ip = (spec.get("clusterIP") or "").strip()
    if svc_type == "ExternalName" or cluster_ip in ("", "None"):
        return []
    cluster_ips = _cluster_ips(spec)
    if not cluster_ips:
        return []

    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        affinity = int(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_SECONDS)
    external_local = (
        svc_type in ("NodePort", "LoadBalancer")
        and spec.get("externalTrafficPolicy") == "Local"
    )
    annotations = meta.get("annotations") or {}
    topo = annotations.get(ANNOTATION_TOPOLOGY_HINTS, annotations.get(ANNOTATION_TOPOLOGY_MODE))
    ext_ips = tuple(c for c in (canonical_ip(ip) for ip in spec.get("externalIPs") or []) if c)
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    lb_ips = tuple(
        c for c in (canonical_ip(i.get("ip") or "") for i in ingress if _is_vip_mode(i)) if c
    )
    ranges = tuple(r.strip() for r in spec.get("loadBalancerSourceRanges") or [] if r.strip())
    hc = 0
    if svc_type == "LoadBalancer" and external_local:
        hc = int(spec.get("healthCheckNodePort") or 0)

    namespace = meta.get("namespace") or "default"
    name = meta.get("name") or ""
    out = []
    for p in spec.get("ports") or []:
        port_name = p.get("name") or ""
        port = int(p.get("port") or 0)
        out.append(ServicePortInfo(
            namespace=namespace,
            name=name,
            port_name=port_name,
            svc_port_name=svc_port_name(namespace, name, port_name),
            protocol=(p.get("protocol") or "TCP").lower(),
            port=port,
            target_port=p.get("targetPort") if p.get("targetPort") is not None else port,
            node_port=int(p.get("nodePort") or 0),
            cluster_ips=cluster_ips,
            external_ips=ext_ips,
            lb_ips=lb_ips,
            lb_source_ranges=ranges,
            session_affinity_seconds=affinity,
            internal_local=spec.get("internalTrafficPolicy") == "Local",
            external_local=external_local,
            traffic_distribution=spec.get("trafficDistribution"),
            topology_annotation=topo,
            health_check_node_port=hc,
            service_type=svc_type,
        ))
    return out


@dataclass(frozen=True)
class EndpointInfo:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: frozenset[str] = frozenset()
    node_hints: frozenset[str] = frozenset()
    is_local: bool = False
    pod: str | None = None  # targetRef namespace/name when it is a Pod; for reports only

    @property
    def endpoint(self) -> str:
        """JoinHostPort string: the sort key, the SEP hash input and the DNAT target."""
        return join_host_port(self.ip, self.port)


_ADDRESS_TYPE = {4: "IPv4", 6: "IPv6"}


def _slice_port_number(port: ServicePortInfo, slice_: dict) -> int | None:
    """The slice port matching the service port by name and protocol, as kube-proxy keys it."""
    for sp in slice_.get("ports") or []:
        if "name" not in sp or sp.get("name") is None:
            continue  # kube-proxy ignores ports with a nil name ("" is the unnamed port)
        number = sp.get("port")
        if not number:
            continue  # nil or 0
        if sp["name"] == port.port_name and (sp.get("protocol") or "TCP").lower() == port.protocol:
            return int(number)
    return None


def endpoints_for(
    port: ServicePortInfo, slices: list[dict], family: int, node_name: str
) -> list[EndpointInfo]:
    """Every endpoint kube-proxy knows for this service port and family, sorted by
    endpoint string (the order of the iptables dispatch rules and nft vmap indexes)."""
    found: dict[str, EndpointInfo] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        if (meta.get("namespace") or "default") != port.namespace:
            continue
        if _labels(s).get(LABEL_SERVICE_NAME) != port.name or ignored_by_proxy(s):
            continue
        if s.get("addressType") != _ADDRESS_TYPE.get(family):
            continue
        number = _slice_port_number(port, s)
        if number is None:
            continue
        for ep in s.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            ip = canonical_ip(addresses[0])
            if ip is None:
                continue
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False  # nil means ready
            serving = cond.get("serving") is not False
            terminating = cond.get("terminating") is True
            hints = ep.get("hints") or {}
            ref = ep.get("targetRef") or {}
            info = EndpointInfo(
                ip=ip,
                port=number,
                ready=ready,
                serving=serving,
                terminating=terminating,
                node_name=ep.get("nodeName"),
                zone=ep.get("zone"),
                zone_hints=frozenset(z.get("name", "") for z in hints.get("forZones") or []),
                node_hints=frozenset(n.get("name", "") for n in hints.get("forNodes") or []),
                is_local=bool(node_name) and ep.get("nodeName") == node_name,
                pod=(f"{ref.get('namespace') or port.namespace}/{ref.get('name')}"
                     if ref.get("kind") == "Pod" and ref.get("name") else None),
            )
            # The same IP:port in two slices: a running endpoint replaces a terminating one.
            if info.endpoint not in found or not terminating:
                found[info.endpoint] = info
    return [found[k] for k in sorted(found)]


def family_ports(services: list[dict], slices: list[dict], family: int,
                 node_name: str) -> list[tuple[ServicePortInfo, str, list[EndpointInfo]]]:
    """Each service port with a ClusterIP of this family, its ClusterIP and its endpoints,
    in svcPortName order (kube-proxy's own order is Go map order, so any fixed one will do)."""
    ports = [(info, cip) for svc in services for info in service_ports(svc)
             if (cip := info.cluster_ip(family)) is not None]
    ports.sort(key=lambda p: (p[0].svc_port_name, p[0].protocol))
    by_service: dict[tuple[str, str], list[dict]] = {}  # endpoints_for scans what it is given
    for sl in slices:
        meta = sl.get("metadata") or {}
        key = (meta.get("namespace") or "default", _labels(sl).get(LABEL_SERVICE_NAME, ""))
        by_service.setdefault(key, []).append(sl)
    return [(info, cip, endpoints_for(info, by_service.get((info.namespace, info.name), []),
                                      family, node_name)) for info, cip in ports]


@dataclass
class Categorized:
    cluster: list[EndpointInfo] = field(default_factory=list)
    local: list[EndpointInfo] = field(default_factory=list)
    all_reachable: list[EndpointInfo] = field(default_factory=list)
    has_any: bool = False
    topology_mode: str = ""  # "", "PreferSameZone" or "PreferSameNode"


class PortPolicy(NamedTuple):
    """Which chains a service port needs, from its traffic policies and its endpoints: the
    same decisions in iptables and nftables mode, only the chain names differ."""

    uses_cluster: bool  # the Cluster-policy chain (KUBE-SVC / service-…) is written
    uses_local: bool  # the Local-policy chain (KUBE-SVL / local-…) is written
    has_eps: bool
    has_internal: bool  # ClusterIP traffic has somewhere to go (else REJECT / DROP)
    has_external: bool
    ext_ips: list[str]
    lb_ips: list[str]
    ranges: list[str]
    uses_ext: bool  # externally reachable: the external chain is written
    uses_fw: bool  # LB source ranges: the firewall chain is written


def port_policy(info: ServicePortInfo, cat: Categorized, family: int) -> PortPolicy:
    has_eps = cat.has_any
    lb_ips, ranges = info.lb_ips_for(family), info.source_ranges_for(family)
    return PortPolicy(
        uses_cluster=bool(cat.cluster) and info.uses_cluster_endpoints(family),
        uses_local=bool(cat.local) and info.uses_local_endpoints(family),
        has_eps=has_eps,
        has_internal=has_eps and not (info.internal_local and not cat.local),
        has_external=has_eps and not (info.external_local and not cat.local),
        ext_ips=info.external_ips_for(family), lb_ips=lb_ips, ranges=ranges,
        uses_ext=has_eps and info.externally_accessible(family),
        uses_fw=has_eps and bool(lb_ips) and bool(ranges),
    )


def topology_mode(
    endpoints: list[EndpointInfo], node_name: str, zone: str, prefer_same_node_gate: bool = True
) -> str:
    """Which hint kind applies: every ready endpoint must carry that kind of hint and at
    least one must name this node (zone); node hints win when their gate is on."""
    ready = [e for e in endpoints if e.ready]
    all_node = all(e.node_hints for e in ready)
    all_zone = all(e.zone_hints for e in ready)
    if prefer_same_node_gate and all_node and any(node_name in e.node_hints for e in ready):
        return "PreferSameNode"
    if all_zone and any(zone in e.zone_hints for e in ready):
        return "PreferSameZone"
    return ""


def _available(e: EndpointInfo, mode: str, node_name: str, zone: str) -> bool:
    if mode == "PreferSameNode":
        return node_name in e.node_hints
    if mode == "PreferSameZone":
        return zone in e.zone_hints
    return True


def categorize(
    port: ServicePortInfo,
    endpoints: list[EndpointInfo],
    node_name: str,
    node_labels: dict | None,
    prefer_same_node_gate: bool = True,
    family: int | None = None,
) -> Categorized:
    """CategorizeEndpoints: the Cluster list (topology-filtered, falling back to
    serving-terminating), the Local list (ready, else serving-terminating), their union,
    and whether the service has usable endpoints anywhere."""
    if family is None:
        family = ip_family(endpoints[0].ip) if endpoints else next(iter(port.cluster_ips), 4)
    zone = (node_labels or {}).get(LABEL_ZONE, "")
    out = Categorized()
    mode = ""
    if port.uses_cluster_endpoints(family):
        mode = topology_mode(endpoints, node_name, zone, prefer_same_node_gate)
        out.cluster = [e for e in endpoints if e.ready and _available(e, mode, node_name, zone)]
        if not out.cluster:
            # No ready endpoint anywhere (topology never removes all of them): keep old
            # connections' pods serving rather than reject, ignoring topology.
            out.cluster = [e for e in endpoints if e.serving and e.terminating]
        out.has_any = bool(out.cluster)
    out.topology_mode = mode

    if not port.uses_local_endpoints(family):
        out.all_reachable = list(out.cluster)
        return out

    local_ready = [e for e in endpoints if e.is_local and e.ready]
    local_term = [e for e in endpoints if e.is_local and not e.ready and e.serving
                  and e.terminating]
    if any(e.ready or (e.serving and e.terminating) for e in endpoints):
        out.has_any = True
    out.local = local_ready or local_term

    if not port.uses_cluster_endpoints(family):
        out.all_reachable = list(out.local)
        return out
    merged = {e.endpoint: e for e in out.cluster}
    merged.update({e.endpoint: e for e in out.local})
    out.all_reachable = [merged[k] for k in sorted(merged)]
    return out
