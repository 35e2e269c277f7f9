"""Putting the diagnosis together: every step's findings for one trace, attached in path
order (`apply`), with the API's facts added to the walker's own findings."""

from __future__ import annotations

from kubectl_clusterip.diagnose.cluster import Cluster, listed, metadata
from kubectl_clusterip.diagnose.conntrack import stale_conntrack
from kubectl_clusterip.diagnose.dns import coredns, dns
from kubectl_clusterip.diagnose.endpoints import enrich_candidates, topology
from kubectl_clusterip.diagnose.forwarding import forwarding
from kubectl_clusterip.diagnose.rules import (
    drift,
    expected_port,
    has_kube_proxy,
    no_kube_proxy,
    proxy_mode_mismatch,
    stale_service_rules,
)
from kubectl_clusterip.diagnose.service import (
    endpoint_causes,
    port_mismatch,
    service_port_of,
    services_at,
)
from kubectl_clusterip.endpoints import LABEL_SERVICE_NAME, EndpointInfo, endpoints_for
from kubectl_clusterip.findings import ordered, summary
from kubectl_clusterip.iptables.expected import ExpectedServicePort
from kubectl_clusterip.model import Finding, Trace, family_of, join_host_port
from kubectl_clusterip.snapshot import Snapshot


def _refine(cl: Cluster, trace: Trace, exp: ExpectedServicePort | None,
            svc: dict | None) -> None:
    """Add the API's facts to the walker's own findings (where endpoints are, affinity)."""
    for f in trace.findings:
        if f.code == "NoLocalEndpointsDrop" and exp is not None:
            where = sorted({f"{e.endpoint} on {e.node_name}" for e in exp.endpoints
                            if e.ready and e.node_name})
            if where:
                f.hint = (f"its endpoints run elsewhere ({listed(where)}): run a ready "
                          "endpoint on this node, or set internalTrafficPolicy: Cluster")
        if f.code == "SessionAffinity":
            secs = exp.info.session_affinity_seconds if exp is not None else None
            rule = next((s.rule for c in trace.candidates for s in c.steps
                         if "--set" in s.rule and "recent" in s.rule), "")
            field_ = (f"spec.sessionAffinityConfig.clientIP.timeoutSeconds: {secs}"
                      if secs else "")
            f.evidence = " | ".join(x for x in (field_, f.evidence or rule) if x)
            sep = next((c.extra.get("dnatChain") for c in trace.candidates
                        if c.extra.get("dnatChain")), None)
            if sep:
                f.hint = (f"on node {cl.node}: cat /proc/net/xt_recent/{sep} (clients "
                          "pinned to that endpoint)")
        if f.code == "NoServiceRule" and not f.evidence:
            p = trace.packet
            where = join_host_port(p.dst_ip, p.dst_port)
            f.evidence = f"no nat KUBE-SERVICES rule matches {where}/{p.protocol.upper()}"
            if cl.snap.has_objects() and not services_at(cl.snap, p.dst_ip):
                f.evidence += f"; no Service in the snapshot has ClusterIP {p.dst_ip}"
        if f.code == "NoEndpointsReject" and svc is not None and not f.hint:
            f.hint = (f"kubectl get endpointslices -n {metadata(svc).get('namespace')} -l "
                      f"{LABEL_SERVICE_NAME}={metadata(svc).get('name')} -o wide")


def _point_at_policy(cl: Cluster, trace: Trace, fwd: list[Finding]) -> None:
    """A drop after DNAT with NetworkPolicy objects in the snapshot: say whether they deny
    it (the finding that says which policy) or admit it (then the rule is not theirs)."""
    drop = next((f for f in trace.findings if f.code == "DroppedAfterDnat"), None)
    if drop is None or not cl.snap.of_kind("NetworkPolicy"):
        return
    denies = [f for f in fwd if f.code.startswith("NetworkPolicyDenies")]
    if denies:
        drop.hint = f"{denies[0].code} names the policy: {denies[0].hint}"
    else:
        drop.hint += ("; the snapshot's NetworkPolicies admit this path, so the rule is not "
                      "theirs (a host firewall, or the CNI's own policy objects)")


def diagnose_trace(snap: Snapshot, node: str, trace: Trace,
                   nat_chains: set[str] | None = None,
                   has_kube_proxy: bool = True) -> tuple[list[Finding], dict]:
    """New findings for one trace, and the keys to add to its JSON (`trace.extra`).

    Also fills each candidate's `extra` and refines the walker's findings in place.
    """
    cl = Cluster.of(snap, node)
    found: list[Finding] = []
    extra: dict = {"clientNode": node}
    if snap.meta.get("client"):
        extra["client"] = snap.meta["client"]
    cni = cl.cni()
    if cni:
        extra["cni"] = cni
    if cl.config_error:
        extra.setdefault("diagnosisNotes", []).append(cl.config_error)

    svc, info = service_port_of(snap, trace)
    cilium = trace.proxy_mode == "cilium"  # kube-proxy's own expectations do not apply
    if not has_kube_proxy:
        found.append(no_kube_proxy(cl))
    elif not cilium:
        mm = proxy_mode_mismatch(cl, trace.proxy_mode)
        if mm is not None:
            found.append(mm)
    if snap.has_objects() and svc is None and info is None:
        at = services_at(snap, trace.packet.dst_ip)
        if at:
            found.append(port_mismatch(at[0], str(trace.packet.dst_port), trace.packet.protocol))
        elif trace.service and has_kube_proxy and not cilium:
            found.append(stale_service_rules(trace))

    exp: ExpectedServicePort | None = None
    eps: list[EndpointInfo] | None = None
    if svc is not None and info is not None:
        family = family_of(trace.packet.dst_ip)
        exp = expected_port(cl, svc, info, family)
        eps = endpoints_for(info, cl.slices, family, node)
        if exp is not None:
            extra["expected"] = {
                "status": exp.status,
                "chain": exp.internal_chain,
                "endpoints": [e.endpoint for e in exp.internal_endpoints],
            }
            if has_kube_proxy and not cilium:
                found += drift(cl, trace, exp, nat_chains)
            if exp.status == "no-endpoints" or not exp.endpoints:
                found += endpoint_causes(cl, svc, info, eps)
            topo = topology(cl, exp)
            if topo is not None:
                found.append(topo)
        if cilium:  # imported here: the other modes' traces never load the cilium package
            from kubectl_clusterip.cilium.drift import backend_drift
            found += backend_drift(trace, eps, node)
        ct = stale_conntrack(cl, trace, eps)
        if ct is not None:
            found.append(ct)
    enrich_candidates(cl, trace, eps)
    _refine(cl, trace, exp, svc)

    summary_line, dns_found = dns(snap.meta, trace, svc)
    extra["dnsSummary"] = summary_line
    if isinstance(snap.meta.get("clusterDomain"), dict):  # where the search path's came from
        extra["clusterDomain"] = snap.meta["clusterDomain"]
    if snap.meta.get("dns") is not None:
        extra["dns"] = snap.meta["dns"]
    found += dns_found
    cd = coredns(cl)
    if cd is not None:
        found.append(cd)
    fwd, notes, facts = forwarding(cl, trace)
    found += fwd
    _point_at_policy(cl, trace, fwd)
    if facts:
        extra["nodeFacts"] = facts
    if notes:
        extra.setdefault("diagnosisNotes", []).extend(notes)
    return found, extra


def apply(snap: Snapshot, node: str, traces: list[Trace], dataplanes: list) -> None:
    """Attach the diagnosis to each trace: findings in path order, extra keys, summary."""
    has_proxy = has_kube_proxy(dataplanes)
    chains: dict[int, set[str]] = {}
    for dp in dataplanes:  # iptables chain names; other modes name things differently
        if getattr(dp, "mode", "") == "iptables" and hasattr(dp, "ruleset"):
            chains.setdefault(dp.family, set()).update(dp.ruleset.chains("nat"))
    for t in traces:
        found, extra = diagnose_trace(snap, node, t, chains.get(t.packet.family), has_proxy)
        kept = t.findings
        if not has_proxy:  # NoKubeProxy/KubeProxyReplaced says it; CNI chains are noise here
            kept = [f for f in kept if f.code not in ("NoServiceRule", "UndecidedMatch")]
        codes = {(f.code, f.message) for f in kept}
        t.findings = ordered(kept + [f for f in found if (f.code, f.message) not in codes])
        for k, v in extra.items():
            t.extra.setdefault(k, v)
        t.extra["summary"] = summary(t)
