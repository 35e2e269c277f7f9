"""Step 5 (forwarding) and step 3 (DNS): does NetworkPolicy let the client reach the
endpoints (and CoreDNS), and does the CNI found enforce NetworkPolicy at all?

Policies see the packet after DNAT: the endpoint pod's address and the targetPort. A
masqueraded request reaches the endpoint from the client node's address, not the pod's.
"""

from __future__ import annotations

import re

from kubectl_clusterip.diagnose.cluster import KUBE_DNS_LABEL, Cluster, listed, metadata
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Finding, Trace
from kubectl_clusterip.netpol import NS_NAME_LABEL, Decision, Peer, decide, pod_peer

# kind v0.24.0 added NetworkPolicy (kubernetes-sigs/kind#3612: a kube-network-policies
# DaemonSet beside kindnet); its kindnetd image is v20240813-…; earlier kindnet ignores them.
KINDNET_POLICY_SINCE = "20240813"
POLICY_AGENTS = ("calico-node", "canal", "cilium", "kube-router", "antrea-agent", "weave-net",
                 "kube-network-policies", "ovnkube-node", "kube-ovn-cni")
FLANNEL_ANNOTATION = "flannel.alpha.coreos.com/backend-type"
AGENT_ANNOTATIONS = ("projectcalico.org/", "io.cilium", "kube-router.io/")


def _ns_labels(cl: Cluster, ns: str) -> dict:
    """A Namespace's labels; without the object, the one label the API server always sets."""
    obj = cl.snap.get("Namespace", None, ns)
    if obj is not None:
        return dict(metadata(obj).get("labels") or {NS_NAME_LABEL: ns})
    return {NS_NAME_LABEL: ns}


def _pod(cl: Cluster, ns: str | None, name: str | None) -> dict | None:
    if not ns or not name:
        return None
    return cl.snap.get("Pod", ns, name)


def _peer_of(cl: Cluster, pod: dict, ip: str | None = None) -> Peer:
    """The pod as a policy peer, at the address of the traced family when known."""
    return pod_peer(pod, _ns_labels(cl, metadata(pod).get("namespace") or "default"), ip)


def _node_ip(cl: Cluster, node: str) -> str:
    obj = cl.snap.get("Node", None, node) or {}
    for a in (obj.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address"))
    return ""


def _pod_ips(pod: dict) -> set[str]:
    st = pod.get("status") or {}
    return {str(p.get("ip")) for p in st.get("podIPs") or []} | {str(st.get("podIP"))}


def client_peer(cl: Cluster, trace: Trace) -> Peer:
    """The client as policies see it: its pod (from --from, or found by address), else the
    node (host network) or an address that only ipBlock peers can match."""
    client = cl.snap.meta.get("client") or {}
    ref = client.get("pod") if isinstance(client, dict) else None
    pod = _pod(cl, *ref.split("/", 1)) if isinstance(ref, str) and "/" in ref else None
    src = trace.packet.src_ip
    if pod is None or src not in _pod_ips(pod):  # --source-ip names another sender
        pod = next((p for p in cl.snap.of_kind("Pod") if src in _pod_ips(p)
                    and not (p.get("spec") or {}).get("hostNetwork")), None)
    if pod is not None:
        return _peer_of(cl, pod, src if src in _pod_ips(pod) else None)
    if trace.packet.from_host or src == _node_ip(cl, cl.node):
        return Peer(src, f"node {cl.node} (host network)", node=cl.node)
    return Peer(src, f"{src} (no pod in the snapshot has this address)")


def _seen_source(cl: Cluster, client: Peer, masquerade: bool) -> Peer:
    if not masquerade:
        return client
    ip = _node_ip(cl, cl.node) or client.ip
    return Peer(ip, f"node {cl.node} (the request is masqueraded)", node=cl.node)


def enforcement(cl: Cluster) -> tuple[bool | None, str]:
    """(False, how the CNI was identified) when the CNI is known not to enforce
    NetworkPolicy: flannel alone, or kindnet older than kind 0.24 without its policy
    DaemonSet. (None, "") when unknown: no blanket caveat."""
    dss = cl.daemonsets()
    if not dss:
        return None, ""
    names = {metadata(d).get("name") or "": d for d in dss}
    agents = [n for n in names if any(n.startswith(a) for a in POLICY_AGENTS)]
    # agents installed outside kube-system (calico-system, cilium's) still annotate nodes
    marked = [k for n in cl.snap.of_kind("Node")
              for k in metadata(n).get("annotations") or {} if k.startswith(AGENT_ANNOTATIONS)]
    if agents or marked:
        return None, ""
    flannel_ds = next((n for n in names if "flannel" in n), None)
    annotated = [metadata(n).get("name") for n in cl.snap.of_kind("Node")
                 if FLANNEL_ANNOTATION in (metadata(n).get("annotations") or {})]
    if flannel_ds or annotated:
        how = (f"DaemonSet {flannel_ds}" if flannel_ds else
               f"node {annotated[0]} annotation {FLANNEL_ANNOTATION}")
        return False, (f"flannel ({how}) with no policy agent among the DaemonSets "
                       f"({listed(sorted(names))}); flannel never enforces NetworkPolicy")
    kindnet = next((d for n, d in names.items() if n.startswith("kindnet")), None)
    if kindnet is not None:
        spec = ((kindnet.get("spec") or {}).get("template") or {}).get("spec") or {}
        images = [str(c.get("image") or "") for c in spec.get("containers") or []]
        for image in images:
            m = re.search(r"kindnetd:v(\d{8})-", image)
            if m and m.group(1) < KINDNET_POLICY_SINCE:
                return False, (f"kindnet, image {image} (DaemonSet "
                               f"{metadata(kindnet).get('name')}): built before kind 0.24 "
                               "(kindnetd v20240813), which added NetworkPolicy; no "
                               "kube-network-policies DaemonSet")
    return None, ""


def _denied(code: str, d: Decision, src: Peer, dsts: list[str], total: int, port: int,
            proto: str) -> Finding:
    which = (f"{listed(dsts)}" if len(dsts) == total
             else f"{len(dsts)} of {total} endpoints ({listed(dsts)})")
    side = ("ingress to" if d.direction == "ingress" else f"egress of {src.name} to")
    ns = d.policies[0].split("/", 1)[0]
    names = " ".join(p.split("/", 1)[1] for p in d.policies)
    return finding(code, f"NetworkPolicy denies {side} {which} on {port}/{proto.upper()} "
                   f"(after DNAT) from {src.name}: {'; '.join(d.policies)} "
                   f"{'selects' if len(d.policies) == 1 else 'select'} "
                   f"{'the pod' if d.direction == 'ingress' else src.name} and no rule "
                   "admits this", " || ".join(d.why_not),
                   f"kubectl get networkpolicy -n {ns} {names} -o yaml")


def policy_findings(cl: Cluster, trace: Trace) -> list[Finding]:
    """Denied (ingress of each endpoint, egress of the client), allowed-by, or policies
    that the CNI found will not enforce."""
    policies = cl.snap.of_kind("NetworkPolicy")
    if not policies or trace.verdict != "dnat":
        return []
    client = client_peer(cl, trace)
    proto = trace.packet.protocol
    results: list[tuple[str, Decision, Decision, Peer]] = []
    for c in trace.candidates:
        pod = _pod(cl, c.extra.get("podNamespace"), c.extra.get("pod"))
        if pod is None:
            continue
        dst = _peer_of(cl, pod, c.ip)
        src = _seen_source(cl, client, c.masquerade)
        results.append((dst.name, decide(policies, client, dst, c.port, proto, "egress"),
                        decide(policies, src, dst, c.port, proto, "ingress"), src))
    if not results:
        return []
    enforced, how = enforcement(cl)
    out: list[Finding] = []
    port = trace.candidates[0].port
    if enforced is False:
        isolated = [r for r in results if r[1].isolated or r[2].isolated]
        if isolated:
            pols = sorted({p for r in isolated for d in r[1:3] for p in d.policies})
            would = [r[0] for r in isolated if not (r[1].allowed and r[2].allowed)]
            out.append(finding(
                "NetworkPolicyNotEnforced",
                f"NetworkPolicies {listed(pols)} select this path's pods but the CNI does not "
                "enforce NetworkPolicy: they have no effect"
                + (f" (they would deny {listed(would)})" if would else ""),
                f"CNI identified as {how}",
                "install a CNI that enforces NetworkPolicy (e.g. Calico/Canal, Cilium), or "
                "rely on something else"))
        return out
    for code, idx in (("NetworkPolicyDeniesEgress", 1), ("NetworkPolicyDeniesIngress", 2)):
        denied = [r for r in results if not r[idx].allowed]
        if denied:
            d = denied[0][idx]
            out.append(_denied(code, d, denied[0][3] if idx == 2 else client,
                               [r[0] for r in denied], len(results), port, proto))
    allowed = [(r[0], d) for r in results for d in r[1:3] if d.isolated and d.allowed]
    if allowed and not out:
        def what(n: str, d: Decision) -> str:
            side = f"ingress to {n}" if d.direction == "ingress" else f"egress of {client.name}"
            return f"{side} by {d.admitted_by}"
        out.append(finding(
            "NetworkPolicyAllows",
            "NetworkPolicy isolates this path and admits it: "
            + "; ".join(what(n, d) for n, d in allowed[:4]),
            "; ".join(sorted({p for _, d in allowed for p in d.policies}))))
    return out


def dns_policy(cl: Cluster, trace: Trace) -> Finding | None:
    """The client pod's egress to CoreDNS on 53/UDP, and CoreDNS's ingress from it."""
    policies = cl.snap.of_kind("NetworkPolicy")
    client = client_peer(cl, trace) if policies else None
    if client is None or not client.is_pod:
        return None
    dns_pods = [p for p in cl.pods("kube-system")
                if (metadata(p).get("labels") or {}).get(KUBE_DNS_LABEL[0]) == KUBE_DNS_LABEL[1]]
    if not dns_pods or enforcement(cl)[0] is False:
        return None
    verdicts = []
    for p in dns_pods:
        dst = _peer_of(cl, p)
        for d in (decide(policies, client, dst, 53, "udp", "egress"),
                  decide(policies, client, dst, 53, "udp", "ingress")):
            verdicts.append((dst.name, d))
    if any(all(d.allowed for n2, d in verdicts if n2 == n) for n, _ in verdicts):
        return None
    d = next(d for _, d in verdicts if not d.allowed)
    return finding("NetworkPolicyDeniesDns",
                   f"NetworkPolicy denies {client.name} DNS to CoreDNS "
                   f"({listed(sorted({n for n, _ in verdicts}))}) on 53/UDP: "
                   f"{'; '.join(d.policies)} ({d.direction}) "
                   f"{'admits' if len(d.policies) == 1 else 'admit'} no such traffic, so "
                   "Service names do not resolve from this pod",
                   " || ".join(d.why_not),
                   "allow egress to namespaceSelector kubernetes.io/metadata.name=kube-system, "
                   "podSelector k8s-app=kube-dns on port 53 UDP and TCP")
