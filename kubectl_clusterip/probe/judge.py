"""Prediction against observation: the probe's findings and the `observed` JSON block.

Pure: the trace (what the rules predict), the probe's connections (what happened) and the
snapshot's objects and node facts (which pod, which node, which route) in; findings and a
plain dict out. Per endpoint, the Service path (connections DNAT'd to it) and the direct
path (one connection to IP:targetPort) together say where a failure lives: both fail, the
endpoint or the network; only the Service path, kube-proxy's NAT or conntrack.
"""

from __future__ import annotations

from collections import Counter

from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Candidate, Finding, Trace, join_host_port
from kubectl_clusterip.probe.fit import Fit, fit
from kubectl_clusterip.probe.observed import (
    FAILED,
    Connection,
    Observed,
    median_ms,
    outcome_text,
)
from kubectl_clusterip.snapshot import Snapshot


def _pod_of(snap: Snapshot, c: Candidate | None, ip: str) -> dict | None:
    if c is not None and c.extra.get("pod"):
        return snap.get("Pod", c.extra.get("podNamespace"), c.extra["pod"])
    return next((p for p in snap.of_kind("Pod")
                 if any(x.get("ip") == ip for x in (p.get("status") or {}).get("podIPs") or [])
                 or (p.get("status") or {}).get("podIP") == ip), None)


def declared_ports(pod: dict | None) -> str:
    """`http 8080/TCP (app)`, every container port the pod declares, or why none shows."""
    if pod is None:
        return "no pod in the snapshot has this address"
    ports = [f"{p.get('name') + ' ' if p.get('name') else ''}{p.get('containerPort')}/"
             f"{p.get('protocol') or 'TCP'} ({c.get('name')})"
             for c in (pod.get("spec") or {}).get("containers") or []
             for p in c.get("ports") or []]
    return ", ".join(ports) if ports else "none (the pod declares no container ports)"


def _who(pod: dict | None, ep: str) -> str:
    md = (pod or {}).get("metadata") or {}
    return f"{ep} (pod {md.get('namespace')}/{md.get('name')})" if md.get("name") else ep


def _node_of(pod: dict | None, c: Candidate | None) -> str | None:
    return (c.extra.get("node") if c is not None else None) or \
        ((pod or {}).get("spec") or {}).get("nodeName")


def _pod_cidr_owner(snap: Snapshot, ip: str) -> str | None:
    import ipaddress
    for n in snap.of_kind("Node"):
        for cidr in ((n.get("spec") or {}).get("podCIDRs")
                     or [(n.get("spec") or {}).get("podCIDR")]):
            try:
                if cidr and ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, False):
                    return f"{(n.get('metadata') or {}).get('name')} ({cidr})"
            except ValueError:
                continue
    return None


def judge(trace: Trace, obs: Observed, snap: Snapshot, node: str) -> tuple[list[Finding], dict]:
    """The probe's findings for one trace, and its `observed` block."""
    found: list[Finding] = []
    cands = {c.endpoint: c for c in trace.candidates}
    service = obs.service
    by_ep = obs.by_endpoint()
    direct = obs.direct
    cip = join_host_port(trace.packet.dst_ip, trace.packet.dst_port)
    client_node = obs.probe.get("node") or node
    facts = snap.nodes[node].node() if node in snap.nodes else None
    cni = trace.extra.get("cni") or "the CNI"
    checked = obs.method != "datagram"  # a datagram has no reply to judge

    # -- step 4: where the connections went ----------------------------------------------
    attributed = [c for c in service if c.endpoint]
    not_nated = [c for c in attributed if c.endpoint == "not-nated"]
    if not_nated:
        found.append(finding(
            "ProbeNotNated", f"{len(not_nated)} of {len(service)} probe connection(s) to "
            f"{cip} were not DNAT'd at all: conntrack shows the reply coming from the "
            "ClusterIP itself, so no kube-proxy rule rewrote them",
            f"conntrack: src={obs.probe.get('ip')} dst={trace.packet.dst_ip} "
            f"sport={not_nated[0].source_port} → reply from {trace.packet.dst_ip}",
            f"on node {client_node}: iptables-save -t nat | grep {trace.packet.dst_ip}"))
    unpredicted = sorted({c.endpoint for c in attributed if c.endpoint not in cands
                          and c.endpoint != "not-nated"})
    for ep in unpredicted:
        n = sum(1 for c in attributed if c.endpoint == ep)
        found.append(finding(
            "UnpredictedEndpoint", f"{n} of {len(service)} probe connection(s) went to {ep}, "
            "which the node's rules as dumped do not DNAT to: the kernel's state differs "
            "from the dump (rules changed since, or another writer of the nat table)",
            f"conntrack NEW: dst={trace.packet.dst_ip} dport={trace.packet.dst_port} → "
            f"reply src={ep}", f"rerun the trace; on node {client_node}: conntrack -L -d "
            f"{trace.packet.dst_ip}"))
    for ep, c in cands.items():
        n = sum(1 for x in attributed if x.endpoint == ep)
        if n and c.extra.get("inAPI") is False:
            found.append(finding(
                "StaleEndpointLive", f"{n} of {len(service)} probe connection(s) were DNAT'd "
                f"to {ep}, which the API no longer lists as an endpoint: the stale rules are "
                "live in the kernel, not only in the dump",
                f"conntrack NEW: dst={trace.packet.dst_ip} → reply src={ep}; "
                f"{c.extra.get('dnatChain') or 'DNAT rule'} on node {client_node}",
                f"kubectl -n kube-system logs -l k8s-app=kube-proxy --field-selector "
                f"spec.nodeName={client_node}; restart that kube-proxy pod"))
    unknown = obs.unattributed()
    if service and unknown and obs.events_read:
        found.append(finding(
            "ProbeDnatUnseen", f"conntrack showed no DNAT for {len(unknown)} of "
            f"{len(service)} probe connection(s): their endpoint is unknown",
            f"source ports {', '.join(str(c.source_port) for c in unknown[:5])} of "
            f"{obs.probe.get('ip')} not among the NEW events for {trace.packet.dst_ip}",
            f"on node {client_node}: conntrack -E -e NEW -d {trace.packet.dst_ip}"))
    split = _split(trace, attributed, cands)
    if split is not None and split.verdict == "implausible":
        found.append(finding(
            "ImplausibleSplit", f"the observed split is implausible under the predicted "
            f"probabilities: {split.describe()}", _shares(attributed, cands),
            f"on node {client_node}: iptables-save -t nat | grep -A9 {trace.service or cip} "
            "(the kernel may hold other rules than the dump); rerun with --probe 200"))
    elif split is not None and split.verdict == "too-few":
        found.append(finding("SplitUntested", split.describe(), _shares(attributed, cands),
                             f"rerun with --probe {max(split.needed, 20)}"))
    sticky = any(c.sticky for c in trace.candidates)
    if sticky and len({c.endpoint for c in attributed}) > 1:
        found.append(finding(
            "ImplausibleSplit", "session affinity should pin the probe to one endpoint, "
            f"but its connections went to {len({c.endpoint for c in attributed})}",
            _shares(attributed, cands), f"on node {client_node}: grep -H '' "
            "/proc/net/xt_recent/* (the affinity state)"))

    # -- steps 5 and 6: what each endpoint did ---------------------------------------------
    endpoints = list(dict.fromkeys([*cands, *by_ep, *direct]))
    for ep in endpoints:
        if ep == "not-nated" or not checked:
            continue
        c = cands.get(ep)
        ip = ep.rsplit(":", 1)[0].strip("[]")
        pod = _pod_of(snap, c, ip)
        counts = by_ep.get(ep, Counter())
        d = direct.get(ep)
        svc_failed = sum(counts[o] for o in FAILED)
        d_out = d.outcome if d else None
        via = (f"{svc_failed} of {sum(counts.values())} Service connection(s) DNAT'd to it "
               f"failed ({outcome_text(counts)})" if counts else "no Service connection "
               "went to it")
        direct_text = f"direct {ep}: {d_out}" + (f" ({d.detail})" if d and d.detail else "") \
            if d else "no direct check"
        if counts and not svc_failed:
            continue  # the Service path works (a failing direct path is judged below)
        kind = d_out if d_out in FAILED else next(
            (o for o in ("refused", "timeout", "unreachable", "reset", "error")
             if counts.get(o)), None)
        if kind is None:
            continue
        both = d_out in FAILED or d is None
        if not both:  # direct works, the Service path does not
            found.append(finding(
                "ServicePathFails", f"connections to {_who(pod, ep)} through the Service "
                f"fail while a direct connection works: {via}; the NAT or its reply path "
                "breaks (kube-proxy's rules, conntrack, or reverse-path filtering)",
                f"{via}; {direct_text}",
                f"on node {client_node}: conntrack -L -d {trace.packet.dst_ip}; sysctl "
                "net.ipv4.conf.all.rp_filter; check the masquerade rules"))
            continue
        evidence = f"{via}; {direct_text}"
        if kind == "refused":
            port = ep.rsplit(":", 1)[1]
            found.append(finding(
                "EndpointRefuses", f"nothing listens on {_who(pod, ep)}: connections to port "
                f"{port} are refused; the pod declares {declared_ports(pod)}",
                evidence, _refused_hint(pod, port, trace)))
        elif kind in ("timeout", "unreachable"):
            ep_node = _node_of(pod, c)
            same = ep_node is not None and ep_node == client_node
            code = "EndpointTimesOut" if kind == "timeout" else "EndpointUnreachable"
            what = "time out" if kind == "timeout" else "are unreachable (ICMP: no route)"
            if same:
                msg = (f"connections to {_who(pod, ep)} on the same node ({ep_node}) {what}: "
                       "the pod drops them (a NetworkPolicy, a firewall in the pod) or the "
                       "app hangs")
                hint = (f"kubectl get networkpolicy -n "
                        f"{((pod or {}).get('metadata') or {}).get('namespace', 'NS')}; "
                        f"on node {client_node}: ip route get {ip}")
            else:
                route = facts.route_to(ip) if facts is not None else None
                owner = _pod_cidr_owner(snap, ip)
                rtext = (f"node {client_node} routes {ip} via "
                         f"{route.gateway or 'no gateway'} dev {route.dev} ({route.dst})"
                         if route is not None else f"node {client_node} has no route to {ip}"
                         if facts is not None and facts.routes else "routes unknown")
                msg = (f"connections to {_who(pod, ep)} on another node "
                       f"({ep_node or 'unknown'}) {what}: the cross-node path is broken "
                       f"({rtext}; the pod CIDR of {owner or 'its node'} must route to that "
                       f"node through {cni})")
                evidence += f"; {rtext}"
                hint = (f"on node {client_node}: ip route get {ip}; check {cni} on "
                        f"{client_node} and {ep_node or 'the endpoint node'} (its pods' "
                        "logs, the tunnel/route for that pod CIDR)")
            found.append(finding(code, msg, evidence, hint))
        else:
            md = (pod or {}).get("metadata") or {}
            found.append(finding(
                "EndpointResets", f"{_who(pod, ep)} accepts and then resets connections",
                evidence, f"kubectl logs -n {md.get('namespace', 'NS')} {md.get('name', 'POD')}"))
    if checked:
        for ep, d in direct.items():
            counts = by_ep.get(ep, Counter())
            if d.outcome in FAILED and counts and not any(counts[o] for o in FAILED):
                found.append(finding(
                    "DirectPathFails", f"a direct connection to {ep} failed ({d.outcome}) "
                    f"while {sum(counts.values())} Service connection(s) DNAT'd to it "
                    "worked: something treats the pod address differently from the "
                    "Service path (a NetworkPolicy by source, a host firewall)",
                    f"direct {ep}: {d.outcome} {d.detail}".strip(),
                    f"kubectl get networkpolicy -A; on node {client_node}: ip route get "
                    f"{ep.rsplit(':', 1)[0].strip('[]')}"))
    found += _dns(trace, obs)
    return found, document(trace, obs, split)


def _refused_hint(pod: dict | None, port: str, trace: Trace) -> str:
    md = (pod or {}).get("metadata") or {}
    svc = trace.service.split(":")[0] if trace.service else "SERVICE"
    ns, _, name = svc.partition("/")
    return (f"kubectl exec -n {md.get('namespace', 'NS')} {md.get('name', 'POD')} -- netstat "
            f"-ltn (is the app listening on {port}, on 0.0.0.0?); compare with kubectl get "
            f"service -n {ns} {name} -o jsonpath='{{.spec.ports[*].targetPort}}'")


def _split(trace: Trace, attributed: list[Connection], cands: dict[str, Candidate]
           ) -> Fit | None:
    if len(cands) < 2 or any(c.sticky for c in trace.candidates):
        return None  # one endpoint: no split to test; affinity: judged apart
    counts = Counter(c.endpoint for c in attributed if c.endpoint in cands)
    if not counts:
        return None
    return fit([counts.get(ep, 0) for ep in cands], [c.probability for c in cands.values()])


def _shares(attributed: list[Connection], cands: dict[str, Candidate]) -> str:
    counts = Counter(c.endpoint for c in attributed)
    n = sum(counts.values()) or 1
    eps = list(dict.fromkeys([*cands, *counts]))
    return "; ".join(f"{ep}: {counts.get(ep, 0)}/{n} observed, "
                     + (f"{cands[ep].probability:.1%} predicted" if ep in cands
                        else "not predicted") for ep in eps)


def _dns(trace: Trace, obs: Observed) -> list[Finding]:
    """The probe pod's own resolver against the tool's DNS step and the ClusterIP."""
    res = obs.resolution
    if res is None:
        return []
    ours = trace.extra.get("dns") or {}
    tool = sorted({str(r) for a in ours.get("answers") or [] if isinstance(a, dict)
                   and a.get("type") in ("A", "AAAA") for r in a.get("records") or []})
    where = f"search {' '.join(res.search) or '(none)'}, ndots:{res.ndots}, nameserver " \
            f"{', '.join(res.nameservers) or '(none)'}"
    if res.error or not res.addresses:
        also = f" (the tool resolved it to {', '.join(tool)})" if tool else ""
        return [finding("ClientDnsDiffers", f"{res.name} does not resolve inside the probe "
                        f"pod{also}",
                        f"{res.error or 'no address'}; the pod's resolv.conf: {where}",
                        f"kubectl exec CLIENT_POD -- cat /etc/resolv.conf; nslookup {res.name}")]
    if trace.packet.dst_ip not in res.addresses:
        return [finding("ClientDnsDiffers", f"inside the probe pod {res.name} resolves to "
                        f"{', '.join(res.addresses)}, not the ClusterIP {trace.packet.dst_ip}",
                        f"getent hosts {res.name}: {', '.join(res.addresses)}; {where}",
                        f"kubectl exec CLIENT_POD -- nslookup {res.name}")]
    if tool and not set(res.addresses) & set(tool):
        return [finding("ClientDnsDiffers", f"the probe pod resolves {res.name} to "
                        f"{', '.join(res.addresses)}, the tool's lookup to {', '.join(tool)}",
                        where, f"kubectl exec CLIENT_POD -- nslookup {res.name}")]
    return []


def document(trace: Trace, obs: Observed, split: Fit | None) -> dict:
    """The `observed` JSON block (docs/cli.md): per connection and per endpoint."""
    cands = {c.endpoint: c for c in trace.candidates}
    by_ep = obs.by_endpoint()
    direct = obs.direct
    n = sum(sum(c.values()) for c in by_ep.values())
    rows = []
    for ep in dict.fromkeys([*cands, *by_ep, *direct]):
        c = cands.get(ep)
        conns = [x for x in obs.service if x.endpoint == ep]
        d = direct.get(ep)
        rows.append({
            "endpoint": ep, "pod": c.extra.get("pod") if c else None,
            "node": c.extra.get("node") if c else None,
            "predicted": round(c.probability, 10) if c else None,
            "connections": len(conns), "share": round(len(conns) / n, 4) if n else None,
            "outcomes": dict(by_ep.get(ep, Counter())),
            "medianLatencyMs": median_ms(conns),
            "direct": d.to_dict() if d else None})
    return {"probe": obs.probe, "protocol": obs.protocol, "method": obs.method,
            "connections": [c.to_dict() for c in obs.connections],
            "endpoints": rows, "unattributed": len(obs.unattributed()),
            "eventsRead": obs.events_read,
            "fit": split.to_dict() if split is not None else None,
            "resolution": obs.resolution.to_dict() if obs.resolution else None,
            "notes": obs.notes}
