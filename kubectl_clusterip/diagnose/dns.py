"""Step 3 (DNS): the capture's lookup against the Service, and CoreDNS's readiness."""

from __future__ import annotations

from kubectl_clusterip.diagnose.cluster import (
    KUBE_DNS_LABEL,
    Cluster,
    metadata,
    ns_name,
    pod_not_ready_why,
    pod_ready,
    same_ip,
)
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Finding, Trace

# -- DNS ------------------------------------------------------------------------------------------


def coredns(cl: Cluster) -> Finding | None:
    """CoreDNS pods were captured and none is ready: no name resolves in the cluster."""
    pods = [p for p in cl.pods("kube-system")
            if (metadata(p).get("labels") or {}).get(KUBE_DNS_LABEL[0]) == KUBE_DNS_LABEL[1]]
    if not pods or any(pod_ready(p) for p in pods):
        return None
    return finding("NoCoreDNSReady",
                   f"none of the {len(pods)} CoreDNS pod(s) is ready: Service names do not "
                   "resolve anywhere in the cluster",
                   "; ".join(f"pod {ns_name(p)}: {pod_not_ready_why(p)}" for p in pods[:3]),
                   "kubectl -n kube-system describe pods -l k8s-app=kube-dns; kubectl -n "
                   "kube-system logs -l k8s-app=kube-dns")


def _domain(search: list[str]) -> str:
    for s in search:
        if s.startswith("svc."):
            return s[4:].rstrip(".")
    return "cluster.local"


def dns(meta: dict, trace: Trace, svc: dict | None) -> tuple[str, list[Finding]]:
    """The DNS step from the snapshot's lookup: a one-line summary and any findings."""
    d = meta.get("dns")  # types checked where the Snapshot was made (schema.META)
    if d is None:
        why = meta.get("dnsNotChecked") or "no DNS lookup in the snapshot"
        return f"not checked ({why})", []
    looked_up = meta.get("service")
    if svc is not None and looked_up and looked_up.split(":", 1)[0] != ns_name(svc):
        return f"not checked (the snapshot's lookup is for {looked_up})", []
    query = d.get("query") or ""
    search = d.get("searchPath") or []
    ndots = d.get("ndots") or 5
    server = d.get("server") or "the cluster DNS"
    answers = d.get("answers") or []
    want_type = "A" if trace.packet.family == 4 else "AAAA"
    got = [(a, r) for a in answers if a.get("type") == want_type
           and (a.get("rcode") or "NOERROR") == "NOERROR" for r in a.get("records") or []]
    tried = "; ".join(f"{a.get('name')} {a.get('type')} {a.get('rcode') or 'NOERROR'}"
                      + (f" {','.join(a.get('records') or [])}" if a.get("records")
                         else "") for a in answers)
    svc_ns = (metadata(svc).get("namespace") or "default") if svc else None
    svc_name = metadata(svc).get("name") if svc else None
    domain = _domain(search)
    fqdn = f"{svc_name}.{svc_ns}.svc.{domain}" if svc else d.get("fqdn") or query
    if not got:
        if d.get("error") and not answers:
            return f"{query}: no answer from {server}", [finding(
                "DnsNotResolved", f"{server} gave no answer for {query}: {d['error']}",
                f"error: {d['error']}",
                "kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide")]
        first = query.rstrip(".").split(".")
        client_ns = next((s.split(".", 1)[0] for s in search
                          if s.endswith(f".svc.{domain}") and not s.startswith("svc.")), None)
        dots = query.rstrip(".").count(".")
        why = "every name tried was NXDOMAIN"
        if svc_name and first[0] != svc_name:
            why = f"{query} does not name the Service {svc_ns}/{svc_name}"
        elif svc_name and len(first) == 1 and client_ns and client_ns != svc_ns:
            why = (f"the client's namespace is {client_ns}, so {query} expands to "
                   f"{query}.{client_ns}.svc.{domain}; the Service is in {svc_ns}: ask for "
                   f"{svc_name}.{svc_ns}")
        elif svc_name and len(first) >= 2 and first[1] != svc_ns:
            why = f"{query} names namespace {first[1]}, but the Service is in {svc_ns}"
        elif query.endswith(".") or (dots >= ndots and not search):
            why = f"{query} is absolute (or has ≥ ndots={ndots} dots) and skips the search path"
        elif not search:
            why = "the client has no search path, so short names do not resolve"
        return f"{query}: does not resolve ({why})", [finding(
            "DnsNotResolved", f"{query} does not resolve to an {want_type} record: {why}",
            tried or f"search {' '.join(search)} ndots:{ndots}",
            f"kubectl exec CLIENT_POD -- nslookup {fqdn}")]
    records = sorted({r for _, r in got})
    answered = got[0][0].get("name") or query
    summary_line = f"{query} -> {answered} {want_type} {', '.join(records)} (server {server})"
    if not any(same_ip(r, trace.packet.dst_ip) for r in records):
        why = ""
        if svc and str(answered).rstrip(".") != fqdn:
            why = (f"; the answer is for {answered}, not {fqdn} (the search path with "
                   f"ndots:{ndots} matched another name first)")
        return summary_line, [finding(
            "DnsWrongAddress",
            f"{query} resolves to {', '.join(records)}, not the ClusterIP {trace.packet.dst_ip}"
            + why, tried,
            f"kubectl exec CLIENT_POD -- nslookup {fqdn}.")]
    return summary_line, []
