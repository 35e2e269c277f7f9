"""Diagnosis: compare what kube-proxy should have written with what the node holds, and the
API's view of a Service with the request, its DNS answer and its conntrack state.

The walk (trace.py) says *what* the node does with one request; this module says *why*:
every finding names the object field or the exact rule line it rests on and the command to
run next. Everything here is pure over a Snapshot and the traces (`diagnose_trace`,
`enrich_candidates`, ...); `apply` only attaches the results to the traces.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.endpoints import (
    LABEL_SERVICE_NAME,
    LABEL_ZONE,
    EndpointInfo,
    ServicePortInfo,
    canonical_ip,
    endpoints_for,
    service_ports,
)
from kubectl_clusterip.findings import finding, ordered, summary
from kubectl_clusterip.iptables.dataplane import IptablesDataplane
from kubectl_clusterip.iptables.expected import ExpectedServicePort, expected_chains
from kubectl_clusterip.model import ClusterIPError, Finding, Trace, family_of, join_host_port
from kubectl_clusterip.naming import endpoint_chain, nft_endpoint_chain, split_svc_port_name
from kubectl_clusterip.snapshot import Snapshot

# DaemonSet name prefix -> the CNI it belongs to (the forwarding step names it).
CNI_DAEMONSETS = (
    ("calico-node", "Calico"), ("cilium", "Cilium"), ("kindnet", "kindnet"),
    ("kube-flannel", "Flannel"), ("flannel", "Flannel"), ("canal", "Canal"),
    ("weave-net", "Weave Net"), ("antrea-agent", "Antrea"), ("kube-router", "kube-router"),
    ("ovnkube-node", "OVN-Kubernetes"), ("kube-ovn-cni", "Kube-OVN"),
    ("aws-node", "Amazon VPC CNI"), ("azure-cns", "Azure CNI"),
)
KUBE_DNS_LABEL = ("k8s-app", "kube-dns")
MAX_LISTED = 8


# -- the API objects one diagnosis reads ------------------------------------------------------


def _meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def _ns_name(obj: dict) -> str:
    md = _meta(obj)
    return f"{md.get('namespace') or 'default'}/{md.get('name', '')}"


def pod_ready(pod: dict) -> bool:
    """The Ready condition, which is what the EndpointSlice controller reports as ready."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _pod_not_ready_why(pod: dict) -> str:
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            why = c.get("reason") or ""
            if c.get("message"):
                why += f": {c['message']}" if why else c["message"]
            return f"Ready={c.get('status')}" + (f" ({why})" if why else "")
    return f"phase {status.get('phase') or 'unknown'}, no Ready condition"


def _labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _fmt_labels(labels: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _listed(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


@dataclass
class Cluster:
    """The objects of a snapshot, sorted by what the diagnosis asks of them."""

    snap: Snapshot
    node: str
    config: ProxyConfig | None = None
    config_error: str = ""
    slices: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, snap: Snapshot, node: str) -> Cluster:
        cm = snap.get("ConfigMap", "kube-system", "kube-proxy")
        config, error = None, ""
        if cm is not None:
            try:
                config = ProxyConfig.from_configmap(cm)
            except ClusterIPError as e:
                error = str(e)
        return cls(snap, node, config, error, snap.of_kind("EndpointSlice"))

    def node_object(self) -> dict | str:
        return self.snap.get("Node", None, self.node) or self.node

    def pods(self, namespace: str) -> list[dict]:
        return [p for p in self.snap.of_kind("Pod")
                if (_meta(p).get("namespace") or "default") == namespace]

    def daemonsets(self) -> list[dict]:
        return self.snap.of_kind("DaemonSet")

    def cni(self) -> str | None:
        """The CNI named by its DaemonSet, e.g. "kindnet (DaemonSet kube-system/kindnet)"."""
        for ds in self.daemonsets():
            name = _meta(ds).get("name", "")
            for prefix, label in CNI_DAEMONSETS:
                if name.startswith(prefix):
                    return f"{label} (DaemonSet {_ns_name(ds)})"
        return None


# -- which Service a trace is about --------------------------------------------------------------


def _same_ip(a: str, b: str) -> bool:
    ca, cb = canonical_ip(a), canonical_ip(b)
    return ca is not None and ca == cb


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
                    and any(_same_ip(ip, p.dst_ip) for ip in info.cluster_ips.values())):
                return svc, info
    return None, None


def services_at(snap: Snapshot, ip: str) -> list[dict]:
    """Services whose ClusterIPs include ip."""
    out = []
    for svc in snap.of_kind("Service"):
        spec = svc.get("spec") or {}
        ips = spec.get("clusterIPs") or [spec.get("clusterIP") or ""]
        if any(_same_ip(c, ip) for c in ips if c and c != "None"):
            out.append(svc)
    return out


def _ports_text(svc: dict) -> str:
    ports = (svc.get("spec") or {}).get("ports") or []
    return ", ".join(f"{p.get('name') + ' ' if p.get('name') else ''}{p.get('port')}/"
                     f"{p.get('protocol') or 'TCP'}" for p in ports) or "none"


# -- the service-not-found path (no trace can be made) -------------------------------------------


def service_not_found(snap: Snapshot, namespace: str, name: str) -> Finding:
    """ServiceNotFound, with the same name in other namespaces and near names as suggestions."""
    services = [(_meta(s).get("namespace") or "default", _meta(s).get("name", ""))
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
    evidence = (f"Services in namespace {namespace}: {_listed(in_ns)}" if in_ns
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
                   f"service {_ns_name(svc)} has no {want or 'port'}: it serves "
                   f"{_ports_text(svc)}",
                   f"spec.ports: {_ports_text(svc)}",
                   f"kubectl get service -n {_meta(svc).get('namespace') or 'default'} "
                   f"{_meta(svc).get('name')} -o yaml")


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
    dps = [IptablesDataplane.from_text(t, s) for s, t in by_format.get("iptables", [])]
    return [] if _has_kube_proxy(dps) else dps


def _has_kube_proxy(dps: Iterable[object]) -> bool:
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
    dss = {(_meta(d).get("name") or ""): d for d in cl.daemonsets()}
    kp = dss.get("kube-proxy")
    cilium = next((d for n, d in dss.items() if n == "cilium" or n.startswith("cilium-agent")),
                  None)
    cilium_cm = cl.snap.get("ConfigMap", None, "cilium-config")
    kpr = str(((cilium_cm or {}).get("data") or {}).get("kube-proxy-replacement", "")).lower()
    evidence = ["no KUBE-SERVICES chain in the node's nat table"]
    if cilium is not None or "CILIUM_" in text:
        if cilium is not None:
            evidence.append(f"DaemonSet {_ns_name(cilium)} ({_ds_status(cilium)})")
        if "CILIUM_" in text:
            evidence.append("CILIUM_* chains in the dump")
        if kpr:
            evidence.append(f"cilium-config kube-proxy-replacement: {kpr}")
        if kp is None or kpr in ("true", "strict"):
            return finding(
                "KubeProxyReplaced",
                "Cilium's kube-proxy replacement handles Services on this node in eBPF; "
                "there are no kube-proxy rules to follow", "; ".join(evidence),
                "kubectl -n kube-system exec ds/cilium -- cilium-dbg service list")
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
        evidence.append(f"DaemonSet {_ns_name(ds)} ({_ds_status(ds)}), no kube-proxy DaemonSet")
        return finding("KubeProxyReplaced",
                       f"no kube-proxy rules on this node; {what} appears to replace kube-proxy",
                       "; ".join(evidence), cmd)
    node = cl.node
    if kp is not None:
        evidence.append(f"DaemonSet {_ns_name(kp)} ({_ds_status(kp)})")
        pods = [p for p in cl.pods(_meta(kp).get("namespace") or "kube-system")
                if (_meta(p).get("labels") or {}).get("k8s-app") == "kube-proxy"
                and (p.get("spec") or {}).get("nodeName") == node]
        for p in pods:
            evidence.append(f"pod {_ns_name(p)}: {_pod_not_ready_why(p)}")
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
        evidence = f"expected {want}" + (f"; missing nat chains: {_listed(missing)}"
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
                           f"node {cl.node} DNATs {spn} to {_listed(stale)}, "
                           f"{why.get(exp.status, why['ok'])}: connections sent there fail or "
                           "reach the wrong pod", " | ".join(rules), logs))
    missing_eps = [e for k, e in expected.items() if k not in actual]
    if missing_eps:
        chains = [endpoint_chain(spn, proto, e.endpoint) for e in missing_eps]
        absent = [c for c in chains if nat_chains is not None and c not in nat_chains]
        names = [f"{e.endpoint}" + (f" ({_who(e)})" if _who(e) else "") for e in missing_eps]
        if mode == "nftables":
            nft = [nft_endpoint_chain(spn, proto, e.endpoint) for e in missing_eps]
            evidence = f"expected nft chains: {_listed(nft)}"
        elif mode != "iptables":
            evidence = (f"no {mode} destination for {_listed([e.endpoint for e in missing_eps])}"
                        f" under {exp.cluster_ip}:{exp.info.port}")
        elif nat_chains is None:
            evidence = f"expected chains: {_listed(chains)}"
        elif absent:
            evidence = f"missing nat chains: {_listed(absent)}"
        else:
            evidence = f"chains {_listed(chains)} exist but the dispatch rules skip them"
        if trace.verdict in ("reject", "drop") and trace.steps:
            evidence += f"; instead: {trace.steps[-1].rule}"
        out.append(finding("MissingEndpointRules",
                           f"the API lists {len(missing_eps)} usable endpoint(s) of {spn} that "
                           f"node {cl.node} does not DNAT to: {_listed(names)}", evidence, logs))
    return out


def stale_service_rules(trace: Trace) -> Finding:
    return finding("StaleEndpointRules",
                   f"the node still has rules for {trace.service}, a Service the API no longer "
                   "has: kube-proxy is not syncing this node",
                   trace.capture[-1].rule if trace.capture else "",
                   "kubectl -n kube-system logs -l k8s-app=kube-proxy --tail=100")


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
    matching = [p for p in pods if _labels_match(selector, _meta(p).get("labels") or {})]
    sel = _fmt_labels(selector)
    if not matching:
        near = []
        for p in pods:
            labels = _meta(p).get("labels") or {}
            if any(k in labels for k in selector):
                near.append(f"{_meta(p).get('name')} ({_fmt_labels(labels)})")
        msg = f"the selector {sel} of {_ns_name(svc)} matches no pod in namespace {ns}"
        if near:
            msg += f"; pods with other values: {_listed(near)}"
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
            pod = _meta(matching[0]).get("name")
            out.append(finding(
                "NamedPortNotFound",
                f"targetPort {info.target_port!r} of {info.svc_port_name} names no "
                f"{info.protocol.upper()} container port in the selected pods, so they get no "
                "endpoint for this port",
                f"spec.ports[{idx}].targetPort: {info.target_port}; pod {ns}/{pod} declares: "
                f"{_listed(sorted(set(declared))) or 'no ports'}",
                f"kubectl get pod -n {ns} {pod} -o jsonpath="
                "'{.spec.containers[*].ports}'"))
            return out
    if not usable and not any(pod_ready(p) for p in matching):
        why = [f"pod {_ns_name(p)}: {_pod_not_ready_why(p)}" for p in matching]
        out.append(finding("NoReadyPods",
                           f"{len(matching)} pod(s) match {sel} but none is ready, so "
                           f"{_ns_name(svc)} has no usable endpoint", "; ".join(why[:3]),
                           f"kubectl describe pod -n {ns} {_meta(matching[0]).get('name')}"))
    return out


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
    labels = _meta(node_obj).get("labels") or {} if isinstance(node_obj, dict) else {}
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
                       f"{_listed([e.endpoint for e in kept])}", evidence)
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


# -- conntrack ------------------------------------------------------------------------------------

_TUPLE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def parse_conntrack(text: str) -> list[dict]:
    """`conntrack -L` lines: protocol, original and reply tuples, and the line itself."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        tuples = _TUPLE.findall(line)
        if len(parts) < 2 or len(tuples) < 2:
            continue
        out.append({"proto": parts[0], "orig": tuples[0], "reply": tuples[1],
                    "line": line.strip()})
    return out


def stale_conntrack(cl: Cluster, trace: Trace, api_eps: list[EndpointInfo]) -> Finding | None:
    """UDP entries to the ClusterIP whose endpoint the API no longer has: until they expire,
    clients reusing those source ports keep sending to a dead address (kube-proxy should
    have deleted them when the endpoint went away)."""
    p = trace.packet
    text = cl.snap.nodes[cl.node].files.get("conntrack.txt", "") if cl.node in cl.snap.nodes \
        else ""
    if p.protocol != "udp" or not text:
        return None
    live = {canonical_ip(e.ip) for e in api_eps}
    stale = [e for e in parse_conntrack(text)
             if e["proto"] == "udp" and _same_ip(e["orig"][1], p.dst_ip)
             and int(e["orig"][3]) == p.dst_port and canonical_ip(e["reply"][0]) not in live]
    if not stale:
        return None
    dead = sorted({e["reply"][0] for e in stale})
    not_nat = [ip for ip in dead if _same_ip(ip, p.dst_ip)]
    msg = (f"{len(stale)} UDP conntrack entr{'y' if len(stale) == 1 else 'ies'} for "
           f"{p.dst_ip}:{p.dst_port} still send traffic to {_listed(dead)}, "
           + ("not NATed (made while the Service had no endpoint)" if not_nat and
              len(dead) == 1 else "no longer an endpoint")
           + ": clients reusing those source ports get no answer until the entries expire")
    hint = (f"on node {cl.node}: conntrack -D -p udp --orig-dst {p.dst_ip} "
            f"--orig-port-dst {p.dst_port} --reply-src {dead[0]}")
    return finding("StaleConntrack", msg, stale[0]["line"], hint)


# -- DNS ------------------------------------------------------------------------------------------


def coredns(cl: Cluster) -> Finding | None:
    """CoreDNS pods were captured and none is ready: no name resolves in the cluster."""
    pods = [p for p in cl.pods("kube-system")
            if (_meta(p).get("labels") or {}).get(KUBE_DNS_LABEL[0]) == KUBE_DNS_LABEL[1]]
    if not pods or any(pod_ready(p) for p in pods):
        return None
    return finding("NoCoreDNSReady",
                   f"none of the {len(pods)} CoreDNS pod(s) is ready: Service names do not "
                   "resolve anywhere in the cluster",
                   "; ".join(f"pod {_ns_name(p)}: {_pod_not_ready_why(p)}" for p in pods[:3]),
                   "kubectl -n kube-system describe pods -l k8s-app=kube-dns; kubectl -n "
                   "kube-system logs -l k8s-app=kube-dns")


def _domain(search: list[str]) -> str:
    for s in search:
        if s.startswith("svc."):
            return s[4:].rstrip(".")
    return "cluster.local"


def dns(meta: dict, trace: Trace, svc: dict | None) -> tuple[str, list[Finding]]:
    """The DNS step from the snapshot's lookup: a one-line summary and any findings."""
    d = meta.get("dns")
    if not isinstance(d, dict):
        why = meta.get("dnsNotChecked") or "no DNS lookup in the snapshot"
        return f"not checked ({why})", []
    looked_up = meta.get("service")
    if svc is not None and isinstance(looked_up, str) and looked_up \
            and looked_up.split(":", 1)[0] != _ns_name(svc):
        return f"not checked (the snapshot's lookup is for {looked_up})", []
    query = str(d.get("query") or "")
    search = [str(s) for s in d.get("searchPath") or []]
    ndots = int(d.get("ndots") or 5)
    server = d.get("server") or "the cluster DNS"
    answers = [a for a in d.get("answers") or [] if isinstance(a, dict)]
    want_type = "A" if trace.packet.family == 4 else "AAAA"
    got = [(a, r) for a in answers if a.get("type") == want_type
           and (a.get("rcode") or "NOERROR") == "NOERROR" for r in a.get("records") or []]
    tried = "; ".join(f"{a.get('name')} {a.get('type')} {a.get('rcode') or 'NOERROR'}"
                      + (f" {','.join(map(str, a.get('records') or []))}" if a.get("records")
                         else "") for a in answers)
    svc_ns = (_meta(svc).get("namespace") or "default") if svc else None
    svc_name = _meta(svc).get("name") if svc else None
    domain = _domain(search)
    fqdn = f"{svc_name}.{svc_ns}.svc.{domain}" if svc else str(d.get("fqdn") or query)
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
    records = sorted({str(r) for _, r in got})
    answered = got[0][0].get("name") or query
    summary_line = f"{query} -> {answered} {want_type} {', '.join(records)} (server {server})"
    if not any(_same_ip(r, trace.packet.dst_ip) for r in records):
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


# -- putting it together ------------------------------------------------------------------------


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


def _refine(cl: Cluster, trace: Trace, exp: ExpectedServicePort | None,
            svc: dict | None) -> None:
    """Add the API's facts to the walker's own findings (where endpoints are, affinity)."""
    for f in trace.findings:
        if f.code == "NoLocalEndpointsDrop" and exp is not None:
            where = sorted({f"{e.endpoint} on {e.node_name}" for e in exp.endpoints
                            if e.ready and e.node_name})
            if where:
                f.hint = (f"its endpoints run elsewhere ({_listed(where)}): run a ready "
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
            f.hint = (f"kubectl get endpointslices -n {_meta(svc).get('namespace')} -l "
                      f"{LABEL_SERVICE_NAME}={_meta(svc).get('name')} -o wide")


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
    if not has_kube_proxy:
        found.append(no_kube_proxy(cl))
    else:
        mm = proxy_mode_mismatch(cl, trace.proxy_mode)
        if mm is not None:
            found.append(mm)
    if snap.has_objects() and svc is None and info is None:
        at = services_at(snap, trace.packet.dst_ip)
        if at:
            found.append(port_mismatch(at[0], str(trace.packet.dst_port), trace.packet.protocol))
        elif trace.service and has_kube_proxy:
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
            if has_kube_proxy:
                found += drift(cl, trace, exp, nat_chains)
            if exp.status == "no-endpoints" or not exp.endpoints:
                found += endpoint_causes(cl, svc, info, eps)
            topo = topology(cl, exp)
            if topo is not None:
                found.append(topo)
        ct = stale_conntrack(cl, trace, eps)
        if ct is not None:
            found.append(ct)
    enrich_candidates(cl, trace, eps)
    _refine(cl, trace, exp, svc)

    summary_line, dns_found = dns(snap.meta, trace, svc)
    extra["dnsSummary"] = summary_line
    if isinstance(snap.meta.get("dns"), dict):
        extra["dns"] = snap.meta["dns"]
    found += dns_found
    cd = coredns(cl)
    if cd is not None:
        found.append(cd)
    return found, extra


def apply(snap: Snapshot, node: str, traces: list[Trace], dataplanes: list) -> None:
    """Attach the diagnosis to each trace: findings in path order, extra keys, summary."""
    has_proxy = _has_kube_proxy(dataplanes)
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

