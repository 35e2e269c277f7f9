"""From a snapshot and what the user asked to traces: where every source and mode meet."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from kubectl_clusterip import diagnose
from kubectl_clusterip.dumps import Dataplane, build_dataplanes
from kubectl_clusterip.findings import FindingError
from kubectl_clusterip.flags import parse_host_port, parse_ip
from kubectl_clusterip.model import (
    Address,
    ClusterIPError,
    Node,
    Packet,
    ServicePort,
    Trace,
    select_ports,
)
from kubectl_clusterip.reads import cut
from kubectl_clusterip.snapshot import Snapshot


@dataclass(frozen=True)
class Request:
    """What the user asked: a service (TARGET) or an address (--to), and who asks."""

    target: str | None = None  # NAMESPACE/NAME[:PORT], or NAME[:PORT] with namespace
    namespace: str | None = None
    to: str | None = None  # IP:PORT or [IPv6]:PORT
    protocol: str | None = None
    source_ip: str | None = None
    source_port: int = 51234
    from_host: bool = False
    node: str | None = None  # whose rules; default the snapshot's client node
    node_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """One request to trace: a dataplane, a service address, and the service if known."""

    dataplane: Dataplane
    ip: str
    port: int
    protocol: str
    service: str | None = None  # ns/name:port from the API or the rule comments


def parse_target(target: str, namespace: str | None) -> tuple[str, str, str | None]:
    """`NAMESPACE/NAME[:PORT]` or `NAME[:PORT]` (namespace from -n, else default)."""
    ns, slash, rest = target.rpartition("/")
    if not slash:
        ns = namespace or "default"
    name, _, port = rest.partition(":")
    if not name or not ns or "/" in ns:
        raise ClusterIPError(f"{cut(target)}: expected NAMESPACE/NAME[:PORT]")
    return ns, name, port or None


def node_name(snap: Snapshot, req: Request) -> str:
    name = req.node if req.node is not None else snap.client_node
    if name is None or name not in snap.nodes:
        known = ", ".join(n for n in snap.nodes if n) or "none"
        raise ClusterIPError(f"no rule dumps for node {cut(repr(name))} in {snap.source} "
                             f"(nodes: {cut(known)})")
    return name


def dataplanes(snap: Snapshot, node: str) -> list[Dataplane]:
    dumps = snap.nodes[node].rule_dumps()
    if not dumps:
        raise ClusterIPError(f"node {node or '(dump)'}: no rule dumps in {snap.source}")
    dps = build_dataplanes(dumps)
    cilium_config = (snap.get("ConfigMap", None, "cilium-config") or {}).get("data") or {}
    for dp in dps:  # settings a dump does not carry (Cilium's no-backend response)
        configure = getattr(dp, "configure", None)
        if configure is not None:
            configure(cilium_config)
    return dps


def node_context(snap: Snapshot, node: str, node_ips: tuple[str, ...]) -> Node:
    base = snap.nodes[node].node()
    extra = tuple(Address(ip, 128 if ":" in ip else 32)
                  for ip in (parse_ip("--node-ip", v) for v in node_ips))
    return replace(base, name=node or None, addresses=base.addresses + extra)


def require_one_target(target: str | None, to: str | None, source_ip: str | None = None,
                       node_ips: tuple[str, ...] = ()) -> None:
    """Checked before anything is fetched, so a usage slip never starts a debug pod."""
    if target and to:
        raise ClusterIPError("give a TARGET or --to IP:PORT, not both")
    if not target and not to:
        raise ClusterIPError("give a TARGET (NAMESPACE/NAME[:PORT]) or --to IP:PORT")
    if to:
        parse_host_port("--to", to)
    if source_ip is not None:
        parse_ip("--source-ip", source_ip)
    for ip in node_ips:
        parse_ip("--node-ip", ip)


def resolve(snap: Snapshot, dps: list[Dataplane], req: Request) -> list[Target]:
    require_one_target(req.target, req.to, req.source_ip, req.node_ips)
    if req.to:
        ip, port = parse_host_port("--to", req.to)
        family = ipaddress.ip_address(ip).version
        fitting = [dp for dp in dps if dp.family == family]
        if not fitting:
            raise ClusterIPError(f"no IPv{family} rules given for {req.to}")
        return [Target(fitting[0], ip, port, req.protocol or "tcp")]
    assert req.target is not None
    ns, name, port_sel = parse_target(req.target, req.namespace)
    if snap.has_objects():
        return _resolve_from_api(snap, dps, ns, name, port_sel, req.protocol)
    out = []
    for dp in dps:
        for sp in select_ports(dp.services(f"{ns}/{name}"), ns, name, port_sel):
            if (req.protocol is None or sp.protocol == req.protocol) and sp.cluster_ip and sp.port:
                out.append(Target(dp, sp.cluster_ip, sp.port, sp.protocol, sp.name))
    if not out:
        what = f"{ns}/{name}" + (f":{port_sel}" if port_sel else "")
        raise ClusterIPError(f"service {cut(what)} not found in the rules of "
                             f"{', '.join(dp.source for dp in dps)}")
    return out


def _resolve_from_api(snap: Snapshot, dps: list[Dataplane], ns: str, name: str,
                      port_sel: str | None, protocol: str | None) -> list[Target]:
    """The Service object decides what to trace, so a service missing from the rules shows."""
    svc = snap.get("Service", ns, name)
    if svc is None:  # exit 2 (nothing to trace), with near names as the next step
        raise FindingError(diagnose.service_not_found(snap, ns, name))
    spec = svc.get("spec", {})
    if spec.get("type") == "ExternalName":
        raise ClusterIPError(f"service {ns}/{name} is ExternalName: DNS answers with a CNAME "
                             f"to {spec.get('externalName')}; no ClusterIP to trace")
    ips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None"]
    if not ips:
        raise ClusterIPError(f"service {ns}/{name} is headless (clusterIP: None): DNS returns "
                             "the pod IPs and kube-proxy does not touch its traffic")
    out = []
    wanted = [p for p in spec.get("ports") or []
              if (not port_sel or port_sel in (p.get("name") or "", str(p.get("port"))))
              and (not protocol or (p.get("protocol") or "TCP").lower() == protocol)]
    if not wanted:
        raise FindingError(diagnose.port_mismatch(svc, port_sel, protocol))
    for p in wanted:
        pname, number = p.get("name") or "", int(p.get("port", 0))
        proto = (p.get("protocol") or "TCP").lower()
        for ip in ips:
            family = ipaddress.ip_address(ip).version
            fitting = [dp for dp in dps if dp.family == family]
            if fitting:
                svc_port = f"{ns}/{name}" + (f":{pname}" if pname else "")
                out.append(Target(fitting[0], ip, number, proto, svc_port))
    if not out:
        ports = ", ".join(f"{p.get('name') or p.get('port')}/{p.get('protocol', 'TCP')}"
                          for p in spec.get("ports") or []) or "none"
        want = f" port {port_sel}" if port_sel else ""
        raise ClusterIPError(f"service {ns}/{name} has no{want} port to trace with rules of a "
                             f"matching IP family (ports: {ports})")
    return out


def pod_cidrs(snap: Snapshot, node: str) -> list[str]:
    """The node's podCIDRs from its Node object (empty when unknown)."""
    obj = snap.get("Node", None, node) if node else None
    spec = (obj or {}).get("spec") or {}
    return [c for c in spec.get("podCIDRs") or [spec.get("podCIDR")] if c]


def default_source(dp: Dataplane, avoid: set[str], node: Node, from_host: bool,
                   dst: str, node_cidrs: list[str] | None = None) -> tuple[str, str]:
    """A client address for the trace, and how it was chosen (the report says so): a pod
    of the node has an address in the node's podCIDR, else somewhere in the cluster's."""
    if from_host:
        # A host process gets the source of the route toward the Service, as the kernel picks.
        src = node.source_toward(dst)
        if src:
            return src, f"the node's source address toward {dst} (its route)"
        for a in node.addresses:
            if ipaddress.ip_address(a.ip).version == dp.family and not \
                    ipaddress.ip_address(a.ip).is_loopback:
                return a.ip, f"the node address {a.ip}"
    own = [(c, f"node {node.name}'s podCIDR") for c in node_cidrs or []]
    for cidr, what in own + [(c, "the cluster CIDR") for c in dp.cluster_cidrs()]:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version != dp.family:
            continue
        for offset in range(100, min(200, net.num_addresses - 1)):
            ip = str(net.network_address + offset)
            if ip not in avoid:
                return ip, f"an assumed pod address in {what} {cidr} (set --source-ip)"
    ip = "192.0.2.100" if dp.family == 4 else "2001:db8::100"
    return ip, "a placeholder: the rules name no cluster CIDR (set --source-ip)"


def run_trace(snap: Snapshot, req: Request) -> list[Trace]:
    node = node_name(snap, req)
    try:
        dps = dataplanes(snap, node)
    except ClusterIPError:
        # No kube-proxy rules: with API objects the diagnosis can still say why (down, or
        # replaced by a CNI), so trace the bare iptables state rather than stop here.
        dps = diagnose.dataplanes_without_proxy(snap, node)
        if not dps:
            raise
    ctx = node_context(snap, node, req.node_ips)
    cidrs = pod_cidrs(snap, node)
    traces = []
    targets = resolve(snap, dps, req)
    if req.source_ip and len({t.dataplane.family for t in targets}) > 1:
        # A dual-stack service: --source-ip picks the family to trace.
        fam = ipaddress.ip_address(req.source_ip).version
        targets = [t for t in targets if t.dataplane.family == fam] or targets
    for t in targets:
        client = (snap.meta.get("client") or {}).get("ip")
        if req.source_ip:
            src, why = parse_ip("--source-ip", req.source_ip), ""
            if ipaddress.ip_address(src).version != t.dataplane.family:
                raise ClusterIPError(f"--source-ip {src} is not IPv{t.dataplane.family} "
                                     f"like {t.ip}")
        elif client and not req.from_host and \
                ipaddress.ip_address(client).version == t.dataplane.family:
            src, why = client, ""  # the captured client pod: known, not assumed
        else:
            src, why = default_source(t.dataplane, set(), ctx, req.from_host, t.ip, cidrs)
        packet = Packet(src, t.ip, t.port, t.protocol, req.source_port, req.from_host)
        trace = t.dataplane.trace(packet, ctx)
        endpoints = {c.ip for c in trace.candidates}
        if why and src in endpoints and not req.from_host:
            # The assumed client happens to be an endpoint: pick one that is not, rather than
            # report a hairpin nobody asked about.
            src, why = default_source(t.dataplane, endpoints, ctx, req.from_host, t.ip, cidrs)
            packet = Packet(src, t.ip, t.port, t.protocol, req.source_port, req.from_host)
            trace = t.dataplane.trace(packet, ctx)
        if t.service and (trace.service is None or t.service.startswith(trace.service + ":")):
            trace.service = t.service  # the API's name, with the port name a dump may lack
        if why:
            trace.notes.insert(0, f"source {src}: {why}")
        traces.append(trace)
    if snap.has_objects():
        diagnose.apply(snap, node, traces, dps)
    if "probe" in snap.meta:  # observation beside the prediction: what real connections did
        from kubectl_clusterip.probe import apply as probe_apply
        probe_apply.apply(snap, node, traces)
    return traces


def service_ports(snap: Snapshot, node: str | None = None) -> tuple[list[str], list[ServicePort]]:
    """Every service port the node's dataplanes program, and the modes they are in."""
    name = node_name(snap, Request(node=node))
    dps = dataplanes(snap, name)
    return sorted({dp.mode for dp in dps}), [sp for dp in dps for sp in dp.services()]
