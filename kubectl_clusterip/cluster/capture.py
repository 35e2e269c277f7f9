"""Gather one trace's Snapshot from a live cluster: the imperative shell around the engine.

About ten requests beside polling: the Service, its EndpointSlices, its Pods (one selector
list), the Nodes, the kube-system Pods (kube-proxy and CoreDNS from one list), the
kube-proxy ConfigMap, the kube-system DaemonSets, the client pod (with --from), the
NetworkPolicies of up to three namespaces (and those Namespaces when there are policies), and
the debug pod's create, log and delete. DNS adds one port-forward. Whatever decides (which
node, which files, which names to ask) is a pure function here or elsewhere.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from kubectl_clusterip import __version__
from kubectl_clusterip.cluster import DEFAULT_IMAGE, ciliumagent, debugpod
from kubectl_clusterip.cluster import dns as dnsmod
from kubectl_clusterip.cluster.api import Api, Forbidden
from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags, load
from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.snapshot import SNAPSHOT_API, NodeDumps, Snapshot

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LiveOptions:
    """What the user asked of the live cluster, beside the connection flags."""

    target: str | None = None  # NAMESPACE/NAME[:PORT] or NAME[:PORT]
    client_pod: str | None = None  # --from [NAMESPACE/]POD
    node: str | None = None
    source_ip: str | None = None
    image: str = DEFAULT_IMAGE
    via: str = "pod"  # pod | kube-proxy
    dns_server: str | None = None
    pod_timeout: float = 120.0
    conntrack: bool = False
    dns: bool = True
    debug_namespace: str = debugpod.NAMESPACE
    probe: int = 0  # --probe N: real connections from the client's position (0: none)
    probe_timeout: int = 2  # seconds per probe connection
    probe_in_pod: bool = False  # the probe as an ephemeral container of the --from pod


def _labels(o: dict) -> dict:
    return (o.get("metadata") or {}).get("labels") or {}


def _name(o: dict) -> str:
    return (o.get("metadata") or {}).get("name", "")


def is_kube_proxy(pod: dict) -> bool:
    lb = _labels(pod)
    return (lb.get("k8s-app") == "kube-proxy" or lb.get("component") == "kube-proxy"
            or _name(pod).startswith("kube-proxy-"))


def is_dns(pod: dict) -> bool:
    return _labels(pod).get("k8s-app") == "kube-dns" or _name(pod).startswith("coredns-")


def _ready(o: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (o.get("status") or {}).get("conditions") or [])


def endpoint_nodes(slices: list[dict]) -> set[str]:
    return {e["nodeName"] for s in slices for e in s.get("endpoints") or [] if e.get("nodeName")}


def choose_node(nodes: list[dict], slices: list[dict]) -> tuple[str, str]:
    """A client node for the trace, and why: a Ready node without the endpoints shows the
    cross-node path; a worker before a control-plane node; else any Ready node."""
    if not nodes:
        raise ClusterIPError("the cluster lists no nodes: nothing to trace on (pass --node)")
    with_eps = endpoint_nodes(slices)

    def rank(n: dict) -> tuple:
        control = any(k.startswith("node-role.kubernetes.io/control-plane") or
                      k.startswith("node-role.kubernetes.io/master") for k in _labels(n))
        return (not _ready(n), _name(n) in with_eps, control, _name(n))

    best = sorted(nodes, key=rank)[0]
    name = _name(best)
    if not _ready(best):
        why = "no node is Ready; tracing on the first one"
    elif not with_eps:
        why = "the service has no endpoints on any node"
    elif name in with_eps:
        why = "every Ready node runs an endpoint, so the trace shows a same-node path"
    else:
        why = "it runs no endpoint, so the trace shows the cross-node path"
    return name, why


def pod_ip(pod: dict, family: int | None = None) -> str | None:
    st = pod.get("status") or {}
    ips = [p.get("ip") for p in st.get("podIPs") or [] if p.get("ip")] or (
        [st["podIP"]] if st.get("podIP") else [])
    for ip in ips:
        if family is None or (":" in ip) == (family == 6):
            return ip
    return None


def proxy_mode_hint(configmap: dict | None) -> str:
    """kube-proxy's configured mode ('' when unknown: the pod then dumps every mode)."""
    if not configmap:
        return ""
    try:
        doc = yaml.safe_load((configmap.get("data") or {}).get("config.conf") or "") or {}
    except yaml.YAMLError:
        return ""
    mode = doc.get("mode") if isinstance(doc, dict) else ""
    return mode if mode in ("iptables", "ipvs", "nftables") else ""


def _split(ref: str, default_ns: str) -> tuple[str, str]:
    ns, slash, name = ref.rpartition("/")
    return (ns if slash else default_ns), name


def _selector(sel: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))


def _optional(what: str, call: Callable, progress: Progress):
    """Context the trace can do without: a 403/404 is said once and skipped."""
    try:
        return call()
    except Forbidden as e:
        progress(f"warning: {what} skipped: {e}")
        return None


def network_policy_objects(api: Api, namespaces: set[str], meta: dict,
                           progress: Progress) -> list[dict]:
    """The NetworkPolicies of the namespaces the path crosses (service, client, CoreDNS's),
    and those Namespaces, whose labels namespaceSelectors match. Refused by RBAC: one
    warning, recorded in meta, and the trace goes on without judging policy."""
    out: list[dict] = []
    try:
        for ns in sorted(namespaces):
            out += api.list("NetworkPolicy", ns)
    except Forbidden as e:
        progress(f"warning: NetworkPolicy not checked: {e}")
        meta["networkPolicyNotChecked"] = str(e)
        return []
    if not out:
        return out
    try:
        out += [o for o in (api.get("Namespace", ns) for ns in sorted(namespaces)) if o]
    except Forbidden as e:
        progress(f"warning: namespace labels not read ({e}): namespaceSelectors are matched "
                 "on kubernetes.io/metadata.name only")
    return out


def capture_snapshot(flags: ConnectionFlags, opts: LiveOptions, progress: Progress,
                     api: Api | None = None) -> Snapshot:
    """The snapshot of one trace; Ctrl-C and SIGTERM become one error line after cleanup."""
    try:
        return _capture(flags, opts, progress, api)
    except KeyboardInterrupt:
        raise ClusterIPError("interrupted; nothing was left in the cluster") from None


@dataclass
class Gathered:
    """The API objects a trace reads, fetched once whatever the number of nodes."""

    api: Api
    meta: dict
    objects: list[dict]
    svc: dict | None
    slices: list[dict]
    nodes: list[dict]
    proxies: list[dict]
    dns_pods: list[dict]
    configmap: dict | None
    client_pod: dict | None
    cilium_agents: list[dict] = field(default_factory=list)
    cilium_config: dict | None = None

    @property
    def mode(self) -> str:
        return proxy_mode_hint(self.configmap)

    def conntrack_args(self, opts: LiveOptions) -> str:
        ip0 = (self.svc or {}).get("spec", {}).get("clusterIP") or ""
        if not (opts.conntrack and ip0):
            return ""
        return f"-f ipv6 -d {ip0}" if ":" in ip0 else f"-d {ip0}"


def gather(flags: ConnectionFlags, opts: LiveOptions, progress: Progress,
           api: Api | None = None) -> Gathered:
    """The Service, its EndpointSlices and pods, the client pod, the Nodes and kube-system's
    kube-proxy, CoreDNS, ConfigMap and DaemonSets."""
    if api is None:
        api = Api(load(flags))
    kc = api.kc
    objects: list[dict] = []
    meta: dict = {"apiVersion": SNAPSHOT_API, "kind": "Snapshot",
                  "capturedAt": datetime.datetime.now(datetime.timezone.utc).strftime(
                      "%Y-%m-%dT%H:%M:%SZ"),
                  "capturedBy": f"kubectl-clusterip {__version__}",
                  "source": f"context {kc.context} ({api.server})",
                  "namespace": kc.namespace}
    svc, slices, ns, name = None, [], kc.namespace, None
    if opts.target:
        from kubectl_clusterip.engine import parse_target
        ns, name, _port = parse_target(opts.target, kc.namespace)
        meta["service"] = f"{ns}/{name}"
        svc = api.get("Service", name, ns)
        if svc is None:
            raise ClusterIPError(f"service {ns}/{name} not found (context {kc.context})")
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            raise ClusterIPError(f"service {ns}/{name} is ExternalName: DNS answers with a "
                                 f"CNAME to {spec.get('externalName')}; no ClusterIP to trace")
        if spec.get("clusterIP") in (None, "", "None"):
            raise ClusterIPError(f"service {ns}/{name} is headless (clusterIP: None): DNS "
                                 "returns the pod IPs and kube-proxy does not touch it")
        objects.append(svc)
        slices = api.list("EndpointSlice", ns, f"kubernetes.io/service-name={name}")
        objects += slices
        if spec.get("selector"):
            objects += api.list("Pod", ns, _selector(spec["selector"]))
        elif not slices:
            raise ClusterIPError(f"service {ns}/{name} has no selector and no EndpointSlices: "
                                 "nothing sends its traffic anywhere (create EndpointSlices "
                                 f"labelled kubernetes.io/service-name={name}, or add a "
                                 "selector)")
        else:
            progress(f"service {ns}/{name} has no selector: its {len(slices)} EndpointSlice(s) "
                     "are managed by hand")
        if not any(e.get("addresses") for s in slices for e in s.get("endpoints") or []):
            progress(f"warning: service {ns}/{name} has no endpoints; tracing what the node "
                     "does with it")

    client_pod = None
    if opts.client_pod:
        cns, cname = _split(opts.client_pod, kc.namespace)
        client_pod = next((o for o in objects if o.get("kind") == "Pod" and _name(o) == cname
                           and o["metadata"].get("namespace") == cns), None) or api.get(
            "Pod", cname, cns)
        if client_pod is None:
            raise ClusterIPError(f"--from pod {cns}/{cname} not found")
        if client_pod not in objects:
            objects.append(client_pod)

    nodes = api.list("Node")
    objects += nodes
    system = _optional("kube-system pods (kube-proxy, CoreDNS)",
                       lambda: api.list("Pod", "kube-system"), progress) or []
    proxies = [p for p in system if is_kube_proxy(p)]
    dns_pods = [p for p in system if is_dns(p)]
    objects += [p for p in proxies + dns_pods if p not in objects]
    cm = _optional("the kube-proxy ConfigMap",
                   lambda: api.get("ConfigMap", "kube-proxy", "kube-system"), progress)
    if cm:
        objects.append(cm)
    cilium_agents = [p for p in system if ciliumagent.is_agent(p)]
    cilium_cm = _optional("the cilium-config ConfigMap", lambda: api.get(
        "ConfigMap", "cilium-config", "kube-system"), progress) if cilium_agents else None
    if cilium_cm:
        objects.append(cilium_cm)
    objects += _optional("kube-system DaemonSets (the CNI)",
                         lambda: api.list("DaemonSet", "kube-system"), progress) or []
    path_ns = {"kube-system"} | ({ns} if svc else set()) | (
        {client_pod["metadata"]["namespace"]} if client_pod else set())
    objects += network_policy_objects(api, path_ns, meta, progress)
    return Gathered(api, meta, objects, svc, slices, nodes, proxies, dns_pods, cm, client_pod,
                    cilium_agents, cilium_cm)


def _capture(flags: ConnectionFlags, opts: LiveOptions, progress: Progress,
             api: Api | None) -> Snapshot:
    g = gather(flags, opts, progress, api)
    api, meta, objects, svc, slices, nodes = g.api, g.meta, g.objects, g.svc, g.slices, g.nodes
    proxies, dns_pods, client_pod, kc = g.proxies, g.dns_pods, g.client_pod, g.api.kc
    # -- the client: --from POD, --node, or a node chosen for the user ---------------------
    node_names = {_name(n) for n in nodes}
    if client_pod is not None:
        node = (client_pod.get("spec") or {}).get("nodeName")
        if not node:
            raise ClusterIPError(f"--from pod {opts.client_pod} is not scheduled on a node")
        family = 6 if svc and ":" in (svc["spec"].get("clusterIP") or "") else 4
        ip = opts.source_ip or pod_ip(client_pod, family)
        progress(f"client: pod {client_pod['metadata']['namespace']}/{_name(client_pod)} "
                 f"({ip}) on node {node}")
    elif opts.node:
        node, ip = opts.node, opts.source_ip
        if node not in node_names:
            raise ClusterIPError(f"node {node} not found (nodes: {', '.join(sorted(node_names))})")
    else:
        node, why = choose_node(nodes, slices)
        ip = opts.source_ip
        progress(f"tracing on node {node}: {why} (choose with --node or --from)")
    meta["clientNode"] = node
    meta["client"] = {"pod": (f"{client_pod['metadata']['namespace']}/{_name(client_pod)}"
                              if client_pod else None), "ip": ip, "node": node}

    # -- the node's rules --------------------------------------------------------------
    mode, ct_args = g.mode, g.conntrack_args(opts)
    log = _node_log(api, opts, node, mode, ct_args, proxies, progress)
    files, info = dump_files(node, log, opts.image)
    meta["nodeDump"] = {"node": node, "via": opts.via, "image": opts.image if opts.via == "pod"
                        else None, "modeHint": mode or None, **info}
    for failed, err in (info.get("errors") or {}).items():
        if failed != "proxy-mode" and failed.split("-")[0] not in ("iptables", "ip6tables",
                                                                   "kube"):  # kube-proxy-*
            progress(f"warning: on {node}, {failed}: {err}")
    agent_files, agent = cilium_files(g, opts, node, progress)
    files.update(agent_files)
    if agent:
        meta["ciliumAgent"] = agent

    # -- DNS: as the client would ask ------------------------------------------------------
    domain = dnsmod.CLUSTER_DOMAIN
    if (opts.dns or opts.probe) and svc:
        coredns = _optional("the CoreDNS ConfigMap (cluster domain)", lambda: api.get(
            "ConfigMap", "coredns", "kube-system"), progress)
        domain, source = dnsmod.cluster_domain(coredns)
        meta["clusterDomain"] = {"domain": domain, "source": source}
    if opts.dns and svc:
        try:
            meta["dns"] = _dns(api, opts, svc, client_pod, dns_pods, domain)
        except ClusterIPError as e:  # we could not ask: say so, and claim nothing about DNS
            progress(f"warning: DNS not checked: {e}")
            meta["dnsNotChecked"] = str(e)
    if opts.probe and svc and opts.target:
        from kubectl_clusterip.engine import parse_target
        from kubectl_clusterip.probe import apply as probe_apply
        from kubectl_clusterip.probe import run as probe_run
        port_sel = parse_target(opts.target, kc.namespace)[2]
        client_ns = client_pod["metadata"]["namespace"] if client_pod else kc.namespace
        plan = probe_run.plan(svc, slices, port_sel, client_ns, node, opts.probe,
                              opts.probe_timeout, opts.image, domain)
        if opts.probe_in_pod and client_pod is not None:
            log, events, meta["probe"] = probe_run.run_in_pod(
                api, plan, client_pod, opts.pod_timeout, progress, opts.debug_namespace)
        else:
            log, events, meta["probe"] = probe_run.run(api, plan, opts.pod_timeout, progress,
                                                       opts.debug_namespace)
        files[probe_apply.PROBE_LOG], files[probe_apply.EVENTS] = log, events
    return Snapshot(meta, objects, {node: NodeDumps(node, files)},
                    f"context {kc.context}")


def cilium_files(g: Gathered, opts: LiveOptions, node: str,
                 progress: Progress) -> tuple[dict[str, str], dict]:
    """Where Cilium replaces kube-proxy on the node: its agent's outputs (by exec), and what
    was read (`ciliumAgent` in the snapshot meta: pod and binary, or the error)."""
    agent = ciliumagent.agent_on(g.cilium_agents, node)
    here = any((p.get("spec") or {}).get("nodeName") == node for p in g.proxies)
    if agent is None or not ciliumagent.replaces_kube_proxy(g.cilium_config, here):
        return {}, {}
    where = f"{agent['metadata']['namespace']}/{_name(agent)}"
    progress(f"reading Cilium's services by exec into {where}")
    try:
        files, info = ciliumagent.read_agent(g.api, agent, opts.conntrack)
    except ClusterIPError as e:
        progress(f"warning: Cilium's agent on {node} not read: {e}")
        return {}, {"pod": where, "error": str(e)}
    for failed, err in (info.get("errors") or {}).items():
        progress(f"warning: on {node}, {failed}: {err}")
    return files, info


def dump_files(node: str, log: str, image: str) -> tuple[dict[str, str], dict]:
    """The node's snapshot files from the dump script's log, and how they were read."""
    sections = debugpod.parse_log(log)
    if not sections.complete and not sections.output:
        raise ClusterIPError(f"the node dump from {node} holds no sections (does image "
                             f"{image} have sh?)")
    return debugpod.node_files(sections)


def _node_log(api: Api, opts: LiveOptions, node: str, mode: str, ct_args: str,
              proxies: list[dict], progress: Progress) -> str:
    if opts.via == "kube-proxy":
        proxy = next((p for p in proxies if (p.get("spec") or {}).get("nodeName") == node), None)
        if proxy is None:
            raise ClusterIPError(f"--via kube-proxy: no kube-proxy pod on node {node} (kube-proxy "
                                 "may be replaced here); omit --via to use a debug pod")
        progress(f"reading the rules by exec into {proxy['metadata']['namespace']}/"
                 f"{_name(proxy)}")
        return debugpod.exec_script(api, proxy, mode, ct_args)
    pod = debugpod.pod_spec(node, opts.image, mode, ct_args, opts.debug_namespace)
    return debugpod.run_debug_pod(api, pod, opts.pod_timeout, progress)


def _dns(api: Api, opts: LiveOptions, svc: dict, client_pod: dict | None,
         dns_pods: list[dict], domain: str = dnsmod.CLUSTER_DOMAIN) -> dict:
    """meta["dns"]; a ClusterIPError when the server could not be asked at all."""
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    client_ns = client_pod["metadata"]["namespace"] if client_pod else ns
    query = name if client_ns == ns else f"{name}.{ns}"
    search, ndots = dnsmod.client_resolv(client_pod, client_ns, domain)
    srv = [(p["name"], p.get("protocol") or "TCP") for p in svc["spec"].get("ports") or []
           if p.get("name")]
    timeout = min(api.kc.timeout or 3.0, 5.0)
    expected = [ip for ip in svc["spec"].get("clusterIPs") or [svc["spec"].get("clusterIP")]
                if ip]
    if opts.dns_server:
        host, port = dnsmod.parse_server(opts.dns_server)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        out = dnsmod.lookup(query, search, ndots, dnsmod.udp_asker(host, port, timeout),
                            f"{where} (--dns-server, UDP)", srv)
        return {**out, "expected": expected}
    ready = [p for p in dns_pods if _ready(p)] or dns_pods
    if not ready:
        return {"query": query, "fqdn": None, "searchPath": search, "ndots": ndots,
                "server": None, "answers": [], "expected": expected,
                "error": "no CoreDNS/kube-dns pod found in kube-system"}
    target = ready[0]
    where = (f"{pod_ip(target) or '?'}:53 (pod kube-system/{_name(target)} via "
             "port-forward, TCP)")
    with dnsmod.port_forward_asker(api, target, timeout) as ask:
        out = dnsmod.lookup(query, search, ndots, ask, where, srv)
    return {**out, "expected": expected}
