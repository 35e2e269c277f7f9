"""Step 2 (kube-proxy's rules): is kube-proxy there, in the mode asked, and do its rules
match what it should have programmed from the API (drift)?"""

from __future__ import annotations

from collections.abc import Iterable

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.diagnose.cluster import (
    Cluster,
    listed,
    metadata,
    ns_name,
    pod_not_ready_why,
)
from kubectl_clusterip.endpoints import EndpointInfo, ServicePortInfo
from kubectl_clusterip.findings import finding
from kubectl_clusterip.iptables.dataplane import IptablesDataplane
from kubectl_clusterip.iptables.expected import ExpectedServicePort, expected_chains
from kubectl_clusterip.iptables.shapes import read_rulesets
from kubectl_clusterip.model import Finding, Trace
from kubectl_clusterip.naming import endpoint_chain, nft_endpoint_chain
from kubectl_clusterip.snapshot import Snapshot

# -- kube-proxy present? ---------------------------------------------------------------------------


def dataplanes_without_proxy(snap: Snapshot, node: str) -> list[IptablesDataplane]:
    """The node's iptables state even when kube-proxy wrote none of it, so that a trace can
    still be made and the diagnosis can say who (if anyone) handles Services there."""
    from kubectl_clusterip.dumps import classify  # dumps imports the dataplanes; stay lazy

    if not snap.has_objects() or node not in snap.nodes:
        return []
    dumps = snap.nodes[node].rule_dumps()
    if not dumps:
        return []
    by_format = classify(dumps)
    if set(by_format) - {"iptables", "ipset", "conntrack", "proxy-mode"}:
        return []  # another mode's dumps: its own error is the right answer
    dps = [IptablesDataplane(rs) for rs in read_rulesets(by_format.get("iptables", []))]
    return [] if has_kube_proxy(dps) else dps


def has_kube_proxy(dps: Iterable[object]) -> bool:
    return any(getattr(dp, "has_kube_proxy", lambda: True)() for dp in dps)


def _dump_text(snap: Snapshot, node: str) -> str:
    return "\n".join(t for _, t in snap.nodes[node].rule_dumps()) if node in snap.nodes else ""


def _ds_status(ds: dict) -> str:
    st = ds.get("status") or {}
    return f"ready {st.get('numberReady', '?')}/{st.get('desiredNumberScheduled', '?')}"


def _ds_args(ds: dict) -> str:
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    return " ".join(str(a) for c in spec.get("containers") or []
                    for a in (c.get("command") or []) + (c.get("args") or []))


def no_kube_proxy(cl: Cluster) -> Finding:
    """No kube-proxy rule on the node: say whether a CNI replaces kube-proxy or it is down."""
    text = _dump_text(cl.snap, cl.node)
    dss = {(metadata(d).get("name") or ""): d for d in cl.daemonsets()}
    kp = dss.get("kube-proxy")
    cilium = next((d for n, d in dss.items() if n == "cilium" or n.startswith("cilium-agent")),
                  None)
    cilium_cm = cl.snap.get("ConfigMap", None, "cilium-config")
    kpr = str(((cilium_cm or {}).get("data") or {}).get("kube-proxy-replacement", "")).lower()
    evidence = ["no KUBE-SERVICES chain in the node's nat table"]
    if cilium is not None or "CILIUM_" in text:
        if cilium is not None:
            evidence.append(f"DaemonSet {ns_name(cilium)} ({_ds_status(cilium)})")
        if "CILIUM_" in text:
            evidence.append("CILIUM_* chains in the dump")
        if kpr:
            evidence.append(f"cilium-config kube-proxy-replacement: {kpr}")
        agent = cl.snap.meta.get("ciliumAgent") or {}
        if agent.get("error"):
            evidence.append(f"Cilium's agent not read: {agent['error']}")
        if kp is None or kpr in ("true", "strict"):
            return finding(
                "KubeProxyReplaced",
                "Cilium's kube-proxy replacement handles Services on this node in eBPF and "
                "none of its agent's outputs were read to trace it with",
                "; ".join(evidence),
                f"capture again (live capture execs into the node's cilium agent; needs "
                f"pods/exec), or save `kubectl -n kube-system exec <cilium pod on {cl.node}> "
                "-c cilium-agent -- cilium-dbg service list` (`cilium` on 1.14 and older), "
                "`… bpf lb list` and `… status --verbose` as nodes/"
                f"{cl.node}/cilium-service-list.txt, cilium-bpf-lb-list.txt, "
                "cilium-status.txt")
    replacements = (("ovnkube-node", "OVN-Kubernetes load balancers",
                     "ovn-nbctl lb-list (in the ovnkube pods)"),
                    ("kube-router", "kube-router's IPVS service proxy",
                     "ipvsadm -Ln on the node"),
                    ("antrea-agent", "Antrea Proxy (OVS flows)",
                     "kubectl -n kube-system exec ds/antrea-agent -- antctl get serviceexternalip"),
                    ("calico-node", "Calico's eBPF dataplane",
                     "kubectl get felixconfiguration default -o yaml (bpfEnabled)"))
    for prefix, what, cmd in replacements:
        ds = next((d for n, d in dss.items() if n.startswith(prefix)), None)
        if ds is None or kp is not None:
            continue
        if prefix == "kube-router" and "--run-service-proxy=true" not in _ds_args(ds):
            continue
        evidence.append(f"DaemonSet {ns_name(ds)} ({_ds_status(ds)}), no kube-proxy DaemonSet")
        return finding("KubeProxyReplaced",
                       f"no kube-proxy rules on this node; {what} appears to replace kube-proxy",
                       "; ".join(evidence), cmd)
    node = cl.node
    if kp is not None:
        evidence.append(f"DaemonSet {ns_name(kp)} ({_ds_status(kp)})")
        pods = [p for p in cl.pods(metadata(kp).get("namespace") or "kube-system")
                if (metadata(p).get("labels") or {}).get("k8s-app") == "kube-proxy"
                and (p.get("spec") or {}).get("nodeName") == node]
        for p in pods:
            evidence.append(f"pod {ns_name(p)}: {pod_not_ready_why(p)}")
        return finding("NoKubeProxy",
                       f"kube-proxy has written no rules on node {node}: its pod there is not "
                       "running or cannot program iptables, so no ClusterIP works from this node",
                       "; ".join(evidence),
                       f"kubectl -n kube-system get pods -l k8s-app=kube-proxy -o wide "
                       f"--field-selector spec.nodeName={node}; then kubectl -n kube-system "
                       "logs POD")
    if cl.daemonsets():
        evidence.append("no kube-proxy DaemonSet in kube-system")
    return finding("NoKubeProxy",
                   f"no kube-proxy rules on node {node} and nothing visible replaces kube-proxy: "
                   "ClusterIPs are not translated here",
                   "; ".join(evidence),
                   "kubectl -n kube-system get daemonsets; install kube-proxy or enable your "
                   "CNI's kube-proxy replacement")


def proxy_mode_mismatch(cl: Cluster, actual: str) -> Finding | None:
    """The node runs another mode than its ConfigMap asks: kube-proxy not restarted, or flags."""
    if cl.config is None:
        return None
    files = cl.snap.nodes[cl.node].files if cl.node in cl.snap.nodes else {}
    reported = (files.get("proxy-mode") or "").strip()
    mode = reported or actual
    if not mode or mode == cl.config.mode:
        return None
    where = f"nodes/{cl.node}/proxy-mode: {reported}" if reported else \
        f"the node's rules are {actual} mode"
    return finding("ProxyModeMismatch",
                   f"kube-proxy on node {cl.node} runs in {mode} mode but its ConfigMap asks for "
                   f"{cl.config.mode}: it was not restarted after the change, or flags override "
                   "the ConfigMap",
                   f"ConfigMap kube-system/kube-proxy config.conf mode: "
                   f"{cl.config.mode or '(empty: iptables)'}; {where}",
                   "kubectl -n kube-system rollout restart daemonset/kube-proxy")


# -- expectation vs the node ----------------------------------------------------------------------


def expected_port(cl: Cluster, svc: dict, info: ServicePortInfo,
                  family: int) -> ExpectedServicePort | None:
    """What kube-proxy should program on this node for the service port (expected.py)."""
    config = cl.config or ProxyConfig()
    ers = expected_chains([svc], cl.slices, cl.node_object(), config, family)
    return ers.by_name().get((info.svc_port_name, info.protocol))


def _dnat_rule(trace: Trace, endpoint: str) -> str:
    for c in trace.candidates:
        if c.endpoint == endpoint:
            for s in c.steps:
                if s.effect.startswith("DNAT"):
                    return s.rule
    return ""


def _who(ep: EndpointInfo) -> str:
    parts = [f"pod {ep.pod}" if ep.pod else "", f"on {ep.node_name}" if ep.node_name else ""]
    return " ".join(p for p in parts if p)


def drift(cl: Cluster, trace: Trace, exp: ExpectedServicePort,
          nat_chains: set[str] | None) -> list[Finding]:
    """Endpoints the API has that the node lacks, and rules for endpoints the API dropped."""
    out: list[Finding] = []
    spn, proto = exp.svc_port_name, exp.protocol
    logs = (f"kubectl -n kube-system logs -l k8s-app=kube-proxy --tail=100 (the pod on "
            f"{cl.node}); kube-proxy is not syncing this node")
    actual = {c.endpoint for c in trace.candidates} if trace.verdict == "dnat" else set()
    expected = {e.endpoint: e for e in exp.internal_endpoints}

    mode = trace.proxy_mode
    if trace.verdict == "no-match" and mode != "iptables":
        out.append(finding("ServiceNotProgrammed",
                           f"kube-proxy has not programmed {spn} ({exp.cluster_ip}:"
                           f"{exp.info.port}/{proto.upper()}) on node {cl.node}, though the API "
                           "has the Service",
                           f"the {mode} dataplane has no entry for {exp.cluster_ip}:"
                           f"{exp.info.port}/{proto.upper()}", logs))
        return out
    if trace.verdict == "no-match":
        missing = [c for c in exp.chains if nat_chains is not None and c not in nat_chains]
        if exp.status == "ok":
            want = f"a nat KUBE-SERVICES rule jumping to {exp.internal_chain}"
        elif exp.status == "no-endpoints":
            want = f'a filter KUBE-SERVICES "{spn} has no endpoints" REJECT rule'
        else:
            want = f'a filter KUBE-SERVICES "{spn} has no local endpoints" DROP rule'
        evidence = f"expected {want}" + (f"; missing nat chains: {listed(missing)}"
                                         if missing else "")
        out.append(finding("ServiceNotProgrammed",
                           f"kube-proxy has not programmed {spn} ({exp.cluster_ip}:"
                           f"{exp.info.port}/{proto.upper()}) on node {cl.node}, though the API "
                           "has the Service", evidence, logs))
        return out

    stale = sorted(actual - set(expected))
    if stale:
        why = {"ok": "which the API no longer lists as usable",
               "no-endpoints": "though the API has no usable endpoint for it",
               "no-local-endpoints": "though the API has no usable endpoint on this node"}
        rules = [r for r in (_dnat_rule(trace, ep) for ep in stale) if r]
        out.append(finding("StaleEndpointRules",
                           f"node {cl.node} DNATs {spn} to {listed(stale)}, "
                           f"{why.get(exp.status, why['ok'])}: connections sent there fail or "
                           "reach the wrong pod", " | ".join(rules), logs))
    missing_eps = [e for k, e in expected.items() if k not in actual]
    if missing_eps:
        chains = [endpoint_chain(spn, proto, e.endpoint) for e in missing_eps]
        absent = [c for c in chains if nat_chains is not None and c not in nat_chains]
        names = [f"{e.endpoint}" + (f" ({_who(e)})" if _who(e) else "") for e in missing_eps]
        if mode == "nftables":
            nft = [nft_endpoint_chain(spn, proto, e.endpoint) for e in missing_eps]
            evidence = f"expected nft chains: {listed(nft)}"
        elif mode != "iptables":
            evidence = (f"no {mode} destination for {listed([e.endpoint for e in missing_eps])}"
                        f" under {exp.cluster_ip}:{exp.info.port}")
        elif nat_chains is None:
            evidence = f"expected chains: {listed(chains)}"
        elif absent:
            evidence = f"missing nat chains: {listed(absent)}"
        else:
            evidence = f"chains {listed(chains)} exist but the dispatch rules skip them"
        if trace.verdict in ("reject", "drop") and trace.steps:
            evidence += f"; instead: {trace.steps[-1].rule}"
        out.append(finding("MissingEndpointRules",
                           f"the API lists {len(missing_eps)} usable endpoint(s) of {spn} that "
                           f"node {cl.node} does not DNAT to: {listed(names)}", evidence, logs))
    return out


def stale_service_rules(trace: Trace) -> Finding:
    return finding("StaleEndpointRules",
                   f"the node still has rules for {trace.service}, a Service the API no longer "
                   "has: kube-proxy is not syncing this node",
                   trace.capture[-1].rule if trace.capture else "",
                   "kubectl -n kube-system logs -l k8s-app=kube-proxy --tail=100")
