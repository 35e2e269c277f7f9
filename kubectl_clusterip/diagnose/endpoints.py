"""Step 4 (DNAT): which endpoints this node may choose (topology) and who each candidate is."""

from __future__ import annotations

from kubectl_clusterip.diagnose.cluster import MAX_LISTED, Cluster, listed, metadata
from kubectl_clusterip.endpoints import (
    LABEL_SERVICE_NAME,
    LABEL_ZONE,
    EndpointInfo,
    canonical_ip,
)
from kubectl_clusterip.findings import finding
from kubectl_clusterip.iptables.expected import ExpectedServicePort
from kubectl_clusterip.model import Finding, Trace, join_host_port


def topology(cl: Cluster, exp: ExpectedServicePort) -> Finding | None:
    """Hints narrowing this node's endpoints, or hints kube-proxy ignores here (and why)."""
    info = exp.info
    if info.internal_local or not info.uses_cluster_endpoints(exp.family):
        return None
    ready = [e for e in exp.endpoints if e.ready]
    hinted = [e for e in ready if e.zone_hints or e.node_hints]
    if not hinted:
        return None
    node_obj = cl.node_object()
    labels = metadata(node_obj).get("labels") or {} if isinstance(node_obj, dict) else {}
    zone = labels.get(LABEL_ZONE, "")
    hints = "; ".join(f"{e.endpoint} forZones={sorted(e.zone_hints)}"
                      + (f" forNodes={sorted(e.node_hints)}" if e.node_hints else "")
                      for e in ready[:MAX_LISTED])
    evidence = f"node {cl.node} {LABEL_ZONE}={zone or '(unset)'}; {hints}"
    mode = exp.categorized.topology_mode
    if mode:
        kept = exp.categorized.cluster
        return finding("TopologyFiltered",
                       f"topology hints ({mode}) limit node {cl.node} to {len(kept)} of "
                       f"{len(ready)} ready endpoint(s) of {exp.svc_port_name}: "
                       f"{listed([e.endpoint for e in kept])}", evidence)
    if not zone:
        why = f"node {cl.node} has no {LABEL_ZONE} label"
    elif len(hinted) < len(ready):
        why = (f"{len(ready) - len(hinted)} ready endpoint(s) carry no hint "
               "(every ready endpoint must)")
    else:
        why = f"no endpoint is hinted for zone {zone}"
    return finding("TopologyHintsIgnored",
                   f"endpoints of {exp.svc_port_name} carry topology hints but kube-proxy "
                   f"ignores them on node {cl.node} ({why}): traffic goes to every zone",
                   evidence,
                   f"kubectl get endpointslices -n {info.namespace} -l "
                   f"{LABEL_SERVICE_NAME}={info.name} -o yaml")


def enrich_candidates(cl: Cluster, trace: Trace, eps: list[EndpointInfo] | None) -> None:
    """Pod, node and conditions of each DNAT candidate, from the EndpointSlices."""
    if eps is None:
        return
    by_ep = {e.endpoint: e for e in eps}
    for c in trace.candidates:
        e = by_ep.get(join_host_port(canonical_ip(c.ip) or c.ip, c.port))
        if e is None:
            c.extra["inAPI"] = False
            continue
        ns, _, name = (e.pod or "").partition("/")
        c.extra.update({"pod": name or None, "podNamespace": ns or None, "node": e.node_name,
                        "ready": e.ready, "serving": e.serving, "terminating": e.terminating,
                        "sameNode": e.node_name == cl.node if e.node_name else None,
                        "inAPI": True})
