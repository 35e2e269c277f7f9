"""Run the probe in the cluster: the watcher on the node, then the probe beside the client.

Order matters: the watcher (a node debug pod running conntrack's NEW events) must listen
before the first connection, so the probe pod is created only once the watcher's log says
WATCHING; the watcher's log is read while it still runs, then both pods are deleted —
on success, error, timeout, Ctrl-C and SIGTERM alike, as the node debug pod is.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kubectl_clusterip.cluster import debugpod, podlife
from kubectl_clusterip.cluster.api import Api, ApiError
from kubectl_clusterip.model import ClusterIPError, join_host_port
from kubectl_clusterip.probe import script

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one probe does; built by `plan` from the API objects (pure)."""

    namespace: str  # the client's
    node: str  # the client's
    cluster_ip: str
    port: int
    protocol: str
    method: str
    name: str  # the name a client types, resolved inside the probe pod
    fqdn: str  # asked by a DNS probe: NAME.NS.svc.DOMAIN.
    endpoints: tuple[str, ...]  # ip:targetPort, checked directly
    connections: int
    timeout: int  # seconds per connection
    image: str

    @property
    def target(self) -> str:
        return f"{self.cluster_ip}:{self.port}/{self.protocol}"

    def env(self, base: int) -> dict[str, str]:
        return {"METHOD": self.method, "TARGET": self.cluster_ip, "PORT": str(self.port),
                "N": str(self.connections), "PACE": f"{script.PACE:g}",
                "TIMEOUT": str(self.timeout), "BASE": str(base),
                "ENDPOINTS": " ".join(self.endpoints), "NAME": self.name,
                "QNAME": self.fqdn}

    def seconds(self) -> float:
        """The longest the probe can run: every connection timing out."""
        return (self.connections + len(self.endpoints)) * (self.timeout + script.PACE + 0.1)


def plan(svc: dict, slices: list[dict], port_sel: str | None, client_ns: str, node: str,
         connections: int, timeout: int, image: str, domain: str = "cluster.local") -> Plan:
    """The probe of one service port: the selected port (else the first), its endpoints'
    IP:targetPort from the EndpointSlices (ready or serving), nothing else."""
    if not 1 <= connections <= script.MAX_CONNECTIONS:
        raise ClusterIPError(f"--probe {connections}: give 1 to {script.MAX_CONNECTIONS} "
                             "connections")
    spec = svc.get("spec") or {}
    ports = [p for p in spec.get("ports") or []
             if not port_sel or port_sel in (p.get("name") or "", str(p.get("port")))]
    if not ports:
        raise ClusterIPError(f"--probe: the service has no port {port_sel}")
    p = ports[0]
    protocol = (p.get("protocol") or "TCP").lower()
    if protocol == "sctp":
        raise ClusterIPError("--probe: SCTP ports cannot be probed (no SCTP client in the "
                             "debug image)")
    cip = spec.get("clusterIP") or ""
    family = "IPv6" if ":" in cip else "IPv4"
    eps: list[str] = []
    for s in slices:
        if s.get("addressType", "IPv4") != family:
            continue
        sp = next((x for x in s.get("ports") or [] if (x.get("name") or "") ==
                   (p.get("name") or "") and (x.get("protocol") or "TCP").lower() == protocol),
                  None)
        if sp is None or not sp.get("port"):
            continue
        for e in s.get("endpoints") or []:
            cond = e.get("conditions") or {}
            if cond.get("ready") is False and not cond.get("serving"):
                continue
            for ip in (e.get("addresses") or [])[:1]:
                ep = join_host_port(ip, int(sp["port"]))
                if ep not in eps:
                    eps.append(ep)
    md = svc.get("metadata") or {}
    ns, name = md.get("namespace") or "default", md.get("name") or ""
    typed = name if ns == client_ns else f"{name}.{ns}"
    return Plan(client_ns, node, cip, int(p.get("port") or 0), protocol,
                script.method(protocol, p.get("name") or "", int(p.get("port") or 0)),
                typed, f"{name}.{ns}.svc.{domain}.", tuple(eps[:100]), connections, timeout,
                image)


def _pod_ip(pod: dict | None) -> str | None:
    st = (pod or {}).get("status") or {}
    return st.get("podIP") or next((x.get("ip") for x in st.get("podIPs") or []), None)


@contextmanager
def watching(api: Api, pod: dict, timeout: float, progress: Progress,
             poll: float = 0.2) -> Iterator[Callable[[], str]]:
    """A running node pod whose log says WATCHING; yields a reader of its log so far.
    Created and deleted as podlife does it, whatever happens in between."""
    name, ns, node = pod["metadata"]["name"], pod["metadata"]["namespace"], \
        pod["spec"]["nodeName"]
    what = "watcher pod"
    made = False
    with podlife.sigterm_as_interrupt():
        try:
            progress(f"creating {what} {ns}/{name} on node {node} (conntrack events)")
            made = True
            try:
                podlife.create(api, pod, f"the {what}")
            except ApiError:
                made = False
                raise
            start = time.monotonic()
            while True:
                current = api.get("Pod", name, ns)
                if current is None:
                    raise podlife.PodFailed(f"{what} {ns}/{name} disappeared")
                st = podlife.assess(current, time.monotonic() - start)
                if st.state == "running" and \
                        f"{script.MARK} WATCHING" in api.pod_log(name, ns):
                    break
                if st.state in ("done", "failed"):
                    why = st.why or podlife.terminated(current)
                    raise podlife.PodFailed(f"{what} on {node} ended before watching "
                                            f"(conntrack -E): {why}")
                if time.monotonic() - start >= timeout:
                    raise podlife.PodFailed(f"{what} on {node} not watching after {timeout:g}s "
                                            f"({st.why}); deleted it")
                time.sleep(poll)
                poll = min(poll * 1.5, 1.0)
            yield lambda: api.pod_log(name, ns)
        finally:
            if made:
                podlife.delete(api, name, ns, progress, what)


def run(api: Api, p: Plan, pod_timeout: float, progress: Progress,
        debug_namespace: str = debugpod.NAMESPACE) -> tuple[str, str, dict]:
    """The probe's log, the watcher's conntrack events, and snapshot.yaml's `probe`."""
    base = 20000 + secrets.randbelow(35000)
    budget = pod_timeout + p.seconds()
    deadline = int(budget) + 60
    ct = f"-f ipv6 -d {p.cluster_ip}" if ":" in p.cluster_ip else f"-d {p.cluster_ip}"
    watcher = script.watch_pod(p.node, p.image, f"{ct} -p {p.protocol}", deadline,
                               debug_namespace)
    probe = script.probe_pod(p.namespace, p.node, p.image, p.env(base), deadline)
    name = probe["metadata"]["name"]
    with watching(api, watcher, pod_timeout, progress) as events:
        progress(f"probing {p.target} with {p.connections} {p.method} connection(s), "
                 f"{script.PACE:g}s apart, and {len(p.endpoints)} direct one(s)")
        final, log = podlife.run_pod(api, probe, budget, progress, "probe pod")
        time.sleep(0.5)  # the last events reach the watcher's log
        text = events()
    meta = {"pod": f"{p.namespace}/{name}", "mode": "pod", "node": p.node,
            "ip": _pod_ip(final), "image": p.image, "target": p.target,
            "method": p.method, "name": p.name, "requested": p.connections,
            "paceSeconds": script.PACE, "timeoutSeconds": p.timeout,
            "endpoints": list(p.endpoints)}
    return log, text, meta


def run_in_pod(api: Api, p: Plan, client: dict, pod_timeout: float, progress: Progress,
               debug_namespace: str = debugpod.NAMESPACE) -> tuple[str, str, dict]:
    """--probe-in-pod: the probe as an ephemeral container of the client pod (its exact
    network namespace), the watcher as with a probe pod. An ephemeral container can never
    be removed: it stays in the pod's spec (stopped, once its bounded run ends) until the
    pod is deleted, and the report says so."""
    pod_name, ns = client["metadata"]["name"], client["metadata"]["namespace"]
    base = 20000 + secrets.randbelow(35000)
    budget = pod_timeout + p.seconds()
    ct = f"-f ipv6 -d {p.cluster_ip}" if ":" in p.cluster_ip else f"-d {p.cluster_ip}"
    watcher = script.watch_pod(p.node, p.image, f"{ct} -p {p.protocol}", int(budget) + 60,
                               debug_namespace)
    container = script.probe_container(p.image, p.env(base))
    name = container["name"]
    with watching(api, watcher, pod_timeout, progress) as events:
        progress(f"warning: adding ephemeral container {name} to pod {ns}/{pod_name}: it "
                 "stays in the pod's spec until the pod is deleted (ephemeral containers "
                 "cannot be removed)")
        api.add_ephemeral_container(pod_name, ns, container)
        try:
            current, log = _wait_ephemeral(api, pod_name, ns, name, p.image, budget, progress)
        except KeyboardInterrupt:  # the watcher is deleted on the way out; the container
            # cannot be: say so instead of "nothing was left"
            raise ClusterIPError(f"interrupted; ephemeral container {name} stays in pod "
                                 f"{ns}/{pod_name}'s spec and stops by itself after its "
                                 f"{p.connections} connection(s)") from None
        time.sleep(0.5)  # the last events reach the watcher's log
        text = events()
    meta = {"pod": f"{ns}/{pod_name}", "mode": "ephemeral", "container": name,
            "node": p.node, "ip": _pod_ip(current), "image": p.image, "target": p.target,
            "method": p.method, "name": p.name, "requested": p.connections,
            "paceSeconds": script.PACE, "timeoutSeconds": p.timeout,
            "endpoints": list(p.endpoints),
            "notes": [f"the probe ran as ephemeral container {name} of {ns}/{pod_name}; it "
                      "stays in the pod's spec until the pod is deleted"]}
    return log, text, meta


def _wait_ephemeral(api: Api, pod_name: str, ns: str, name: str, image: str, budget: float,
                    progress: Progress) -> tuple[dict, str]:
    """Poll the pod until the ephemeral container has terminated; its final pod and log."""
    start, poll, said = time.monotonic(), 0.2, ""
    while True:
        current = api.get("Pod", pod_name, ns)
        if current is None:
            raise podlife.PodFailed(f"pod {ns}/{pod_name} disappeared during the probe")
        st = next((c for c in (current.get("status") or {}).get(
            "ephemeralContainerStatuses") or [] if c.get("name") == name), {})
        state = st.get("state") or {}
        if state.get("terminated"):
            return current, api.pod_log(pod_name, ns, container=name)
        waiting = (state.get("waiting") or {}).get("reason", "")
        if waiting in podlife.IMAGE_ERRORS:
            raise podlife.PodFailed(f"ephemeral container {name}: {waiting}: cannot pull "
                                    f"{image}; pass --image with an image the node can pull")
        what = "running" if state.get("running") else waiting or "waiting"
        if what != said:
            progress(f"ephemeral container {name}: {what}")
            said = what
        if time.monotonic() - start >= budget:
            raise podlife.PodFailed(f"ephemeral container {name} still {what} after "
                                    f"{budget:g}s; it stops by itself after its bounded run")
        time.sleep(poll)
        poll = min(poll * 1.5, 2.0)
