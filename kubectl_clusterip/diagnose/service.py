"""Step 1 (Service): which Service a trace is about, and why it has no endpoints."""

from __future__ import annotations

import difflib

from kubectl_clusterip.diagnose.cluster import (
    Cluster,
    fmt_labels,
    labels_match,
    listed,
    metadata,
    ns_name,
    pod_not_ready_why,
    pod_ready,
    same_ip,
)
from kubectl_clusterip.endpoints import EndpointInfo, ServicePortInfo, service_ports
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Finding, Trace
from kubectl_clusterip.naming import split_svc_port_name
from kubectl_clusterip.snapshot import Snapshot

# -- which Service a trace is about --------------------------------------------------------------


def service_port_of(snap: Snapshot, trace: Trace) -> tuple[dict | None, ServicePortInfo | None]:
    """The Service and port the trace is about: by the captured svcPortName, else by address."""
    p = trace.packet
    if trace.service:
        ns, name, _ = split_svc_port_name(trace.service)
        svc = snap.get("Service", ns, name)
        if svc is None:
            return None, None
        for info in service_ports(svc):
            if info.svc_port_name == trace.service and info.protocol == p.protocol:
                return svc, info
        return svc, None
    for svc in snap.of_kind("Service"):
        for info in service_ports(svc):
            if (info.port == p.dst_port and info.protocol == p.protocol
                    and any(same_ip(ip, p.dst_ip) for ip in info.cluster_ips.values())):
                return svc, info
    return None, None


def services_at(snap: Snapshot, ip: str) -> list[dict]:
    """Services whose ClusterIPs include ip."""
    out = []
    for svc in snap.of_kind("Service"):
        spec = svc.get("spec") or {}
        ips = spec.get("clusterIPs") or [spec.get("clusterIP") or ""]
        if any(same_ip(c, ip) for c in ips if c and c != "None"):
            out.append(svc)
    return out


def _ports_text(svc: dict) -> str:
    ports = (svc.get("spec") or {}).get("ports") or []
    return ", ".join(f"{p.get('name') + ' ' if p.get('name') else ''}{p.get('port')}/"
                     f"{p.get('protocol') or 'TCP'}" for p in ports) or "none"


# -- the service-not-found path (no trace can be made) -------------------------------------------


def service_not_found(snap: Snapshot, namespace: str, name: str) -> Finding:
    """ServiceNotFound, with the same name in other namespaces and near names as suggestions."""
    services = [(metadata(s).get("namespace") or "default", metadata(s).get("name", ""))
                for s in snap.of_kind("Service")]
    elsewhere = sorted(ns for ns, n in services if n == name and ns != namespace)
    in_ns = sorted(n for ns, n in services if ns == namespace)
    near = difflib.get_close_matches(name, in_ns, n=3, cutoff=0.6)
    near_other = [f"{ns}/{n}" for ns, n in services if ns != namespace and n != name
                  and difflib.SequenceMatcher(None, name, n).ratio() >= 0.75][:3]
    message = f"service {namespace}/{name} not found"
    if elsewhere:
        message += f"; a Service named {name} exists in namespace {', '.join(elsewhere)}"
    if near:
        message += f"; did you mean {', '.join(f'{namespace}/{n}' for n in near)}?"
    elif near_other and not elsewhere:
        message += f"; similar: {', '.join(near_other)}"
    evidence = (f"Services in namespace {namespace}: {listed(in_ns)}" if in_ns
                else f"no Service in namespace {namespace}")
    if elsewhere:
        hint = f"kubectl clusterip trace {elsewhere[0]}/{name}"
    elif near:
        hint = f"kubectl clusterip trace {namespace}/{near[0]}"
    else:
        hint = f"kubectl get services --all-namespaces | grep {name}"
    return finding("ServiceNotFound", message, evidence, hint)


def port_mismatch(svc: dict, port_sel: str | None, protocol: str | None) -> Finding:
    """The request names a port or protocol the Service does not serve."""
    want = " ".join(x for x in (f"port {port_sel}" if port_sel else "",
                                f"protocol {protocol.upper()}" if protocol else "") if x)
    return finding("PortMismatch",
                   f"service {ns_name(svc)} has no {want or 'port'}: it serves "
                   f"{_ports_text(svc)}",
                   f"spec.ports: {_ports_text(svc)}",
                   f"kubectl get service -n {metadata(svc).get('namespace') or 'default'} "
                   f"{metadata(svc).get('name')} -o yaml")


# -- why the API offers no endpoints ---------------------------------------------------------


def endpoint_causes(cl: Cluster, svc: dict, info: ServicePortInfo,
                    eps: list[EndpointInfo]) -> list[Finding]:
    """Selector, named port and readiness: the reasons a Service ends up with no endpoints."""
    out: list[Finding] = []
    spec = svc.get("spec") or {}
    ns = info.namespace
    selector = spec.get("selector") or {}
    if not selector:
        return out
    pods = cl.pods(ns)
    matching = [p for p in pods if labels_match(selector, metadata(p).get("labels") or {})]
    sel = fmt_labels(selector)
    if not matching:
        near = []
        for p in pods:
            labels = metadata(p).get("labels") or {}
            if any(k in labels for k in selector):
                near.append(f"{metadata(p).get('name')} ({fmt_labels(labels)})")
        msg = f"the selector {sel} of {ns_name(svc)} matches no pod in namespace {ns}"
        if near:
            msg += f"; pods with other values: {listed(near)}"
        out.append(finding("SelectorMatchesNoPods", msg, f"spec.selector: {sel}",
                           f"kubectl get pods -n {ns} --show-labels"))
        return out
    usable = [e for e in eps if e.ready or (e.serving and e.terminating)]
    idx = next((i for i, p in enumerate(spec.get("ports") or [])
                if (p.get("name") or "") == info.port_name), 0)
    if isinstance(info.target_port, str) and not info.target_port.isdigit():
        declared = []
        has_name = False
        for p in matching:
            for c in (p.get("spec") or {}).get("containers") or []:
                for cp in c.get("ports") or []:
                    proto = (cp.get("protocol") or "TCP").lower()
                    declared.append(f"{cp.get('name') or '-'} {cp.get('containerPort')}/"
                                    f"{proto.upper()}")
                    if cp.get("name") == info.target_port and proto == info.protocol:
                        has_name = True
        if not has_name:
            pod = metadata(matching[0]).get("name")
            out.append(finding(
                "NamedPortNotFound",
                f"targetPort {info.target_port!r} of {info.svc_port_name} names no "
                f"{info.protocol.upper()} container port in the selected pods, so they get no "
                "endpoint for this port",
                f"spec.ports[{idx}].targetPort: {info.target_port}; pod {ns}/{pod} declares: "
                f"{listed(sorted(set(declared))) or 'no ports'}",
                f"kubectl get pod -n {ns} {pod} -o jsonpath="
                "'{.spec.containers[*].ports}'"))
            return out
    if not usable and not any(pod_ready(p) for p in matching):
        why = [f"pod {ns_name(p)}: {pod_not_ready_why(p)}" for p in matching]
        out.append(finding("NoReadyPods",
                           f"{len(matching)} pod(s) match {sel} but none is ready, so "
                           f"{ns_name(svc)} has no usable endpoint", "; ".join(why[:3]),
                           f"kubectl describe pod -n {ns} {metadata(matching[0]).get('name')}"))
    return out
