"""Every selected node's rules at once: a debug pod per node, at most K alive at a time.

The imperative shell of `--all-nodes` / `--nodes SELECTOR`: the API objects are fetched
once (capture.gather), the pods are created as slots free up and all of them are polled
with ONE list by the run's label per round, not a GET per pod: requests for N nodes are a
constant plus three per node (create, log, delete) plus the polls. Each node's dump is
handed over as soon as its pod ends, so a trace of 200 nodes keeps one dump in memory,
not 200. A node whose pod cannot run is a result with its reason, not an abort; a refused
create (RBAC, Pod Security) is the same for every node and stops the run. Ctrl-C and
SIGTERM delete every pod created so far. What the results mean is kubectl_clusterip/fleet.py.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from kubectl_clusterip import fleet
from kubectl_clusterip.cluster import debugpod, podlife
from kubectl_clusterip.cluster.api import Api, ApiError, Forbidden
from kubectl_clusterip.cluster.capture import (
    Gathered,
    LiveOptions,
    cilium_files,
    dump_files,
    gather,
)
from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags
from kubectl_clusterip.cluster.podlife import Progress
from kubectl_clusterip.engine import Request, run_trace, service_ports
from kubectl_clusterip.findings import FindingError
from kubectl_clusterip.model import ClusterIPError, ServicePort
from kubectl_clusterip.snapshot import NodeDumps, Snapshot

DEFAULT_PARALLEL = 10
# NODE, its log (None when it has none) and why not
Done = Callable[[str, "str | None", str], None]


@dataclass
class Tally:
    total: int
    done: int = 0
    failed: int = 0
    running: int = 0

    def line(self) -> str:
        return (f"nodes: {self.done}/{self.total} done" + (f", {self.failed} failed"
                                                            if self.failed else "")
                + (f", {self.running} running" if self.running else ""))


def run_pods(api: Api, pods: list[dict], parallel: int, timeout: float, progress: Progress,
             on_done: Done, poll: float = 0.2, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> None:
    """Run one debug pod per node (all in one namespace, sharing the run label), at most
    `parallel` at once; `on_done(node, log, why)` for each as it ends. Every pod created is
    deleted whatever happens."""
    if not pods:
        return
    ns = pods[0]["metadata"]["namespace"]
    selector = f"{debugpod.RUN_LABEL}={pods[0]['metadata']['labels'][debugpod.RUN_LABEL]}"
    queue = list(reversed(pods))
    live: dict[str, tuple[dict, float]] = {}
    wait = poll
    made: list[str] = []  # created (or maybe created) and not deleted yet
    tally = Tally(len(pods))
    shown = [""]

    def say() -> None:
        if tally.line() != shown[0]:
            shown[0] = tally.line()
            progress(shown[0])

    def finish(pod: dict, log: str | None, why: str, delete: bool = True) -> None:
        name = pod["metadata"]["name"]
        live.pop(name, None)
        if delete:
            podlife.delete(api, name, ns, lambda m: None if not m.startswith("warning:")
                           else progress(m), "debug pod")
        if name in made:
            made.remove(name)
        tally.done += 1
        tally.failed += log is None
        tally.running = len(live)
        on_done(pod["spec"]["nodeName"], log, why)

    with podlife.sigterm_as_interrupt():
        try:
            while queue or live:
                while queue and len(live) < parallel:
                    pod = queue.pop()
                    made.append(pod["metadata"]["name"])
                    try:
                        podlife.create(api, pod, "the debug pod")
                    except Forbidden:
                        made.pop()
                        raise
                    except ApiError as e:  # this node's pod only (e.g. 422): its row says so
                        made.pop()
                        tally.running = len(live)
                        finish(pod, None, f"debug pod refused: {e}", delete=False)
                        continue
                    live[pod["metadata"]["name"]] = (pod, clock())
                    wait = poll  # a new pod: look soon
                tally.running = len(live)
                say()
                if not live:
                    break
                sleep(wait)
                wait = min(wait * 1.5, 1.0)  # quick when the image is cached, calm when not
                listed = {p["metadata"]["name"]: p for p in api.list("Pod", ns, selector)}
                for name, (pod, start) in list(live.items()):
                    current = listed.get(name)
                    if current is None:
                        finish(pod, None, "the debug pod disappeared before it finished")
                        continue
                    st = podlife.assess(current, clock() - start)
                    if st.state == "done":
                        try:
                            log = podlife.finished_log(api, name, ns, current, "debug pod")
                            finish(pod, debugpod.checked_log(current, log, "debug pod"), "")
                        except ClusterIPError as e:
                            finish(pod, None, str(e))
                    elif st.state == "failed":
                        finish(pod, None, f"debug pod did not run: {st.why}")
                    elif clock() - start >= timeout:
                        phase = (current.get("status") or {}).get("phase", "Pending")
                        finish(pod, None, f"debug pod still {phase} after {timeout:g}s "
                                          f"({st.why})")
                say()
        finally:
            for name in made:
                podlife.delete(api, name, ns, progress, "debug pod")


def select_nodes(g: Gathered, selector: str | None) -> list[str]:
    """The nodes to read: every node, or those the label selector picks (the API decides)."""
    nodes = g.nodes if selector is None else g.api.list("Node", label_selector=selector)
    names = sorted((n.get("metadata") or {}).get("name", "") for n in nodes)
    if not names:
        raise ClusterIPError("no node matches --nodes " + selector if selector
                             else "the cluster lists no nodes")
    return names


# the objects, a NODE, its files and dump info (or None and why not)
NodeDone = Callable[[Gathered, str, "dict[str, str] | None", dict, str], None]


def each_node(flags: ConnectionFlags, opts: LiveOptions, selector: str | None, parallel: int,
              progress: Progress, on_node: NodeDone, api: Api | None = None) -> Gathered:
    """Gather the objects once, then every selected node's dump through `on_node`."""
    if opts.via != "pod":
        raise ClusterIPError("--all-nodes and --nodes read the rules with debug pods: omit "
                             "--via")
    try:
        g = gather(flags, opts, progress, api)
        nodes = select_nodes(g, selector)
        run = secrets.token_hex(4)
        pods = [debugpod.pod_spec(n, opts.image, g.mode, g.conntrack_args(opts),
                                  opts.debug_namespace, run=run) for n in nodes]

        def done(node: str, log: str | None, why: str) -> None:
            if log is None:
                return on_node(g, node, None, {}, why)
            try:
                files, info = dump_files(node, log, opts.image)
            except ClusterIPError as e:
                return on_node(g, node, None, {}, str(e))
            agent_files, agent = cilium_files(g, opts, node, progress)
            files.update(agent_files)
            if agent:
                info["ciliumAgent"] = agent
            on_node(g, node, files, info, "")

        run_pods(g.api, pods, parallel, opts.pod_timeout, progress, done)
        return g
    except KeyboardInterrupt:
        raise ClusterIPError("interrupted; nothing was left in the cluster") from None


def trace_fleet(flags: ConnectionFlags, opts: LiveOptions, req: Request, selector: str | None,
                parallel: int, progress: Progress, api: Api | None = None) -> list[fleet.Row]:
    """A row per node: each node's dump traced once for all the service's ports and
    families, as it arrives."""
    rows: list[fleet.Row] = []

    def on_node(g: Gathered, node: str, files: dict | None, info: dict, why: str) -> None:
        if files is None:
            rows.append(fleet.failed_row(node, why))
            return
        snap = Snapshot(g.meta, g.objects, {node: NodeDumps(node, files)}, g.meta["source"])
        try:
            traces = run_trace(snap, replace(req, node=node))
        except FindingError:  # the same for every node (a port the Service lacks): stop
            raise
        except ClusterIPError as e:
            rows.append(fleet.failed_row(node, str(e)))
            return
        rows.append(fleet.node_row(node, traces))

    each_node(flags, opts, selector, parallel, progress, on_node, api)
    return sorted(rows, key=lambda r: r.node)


def capture_fleet(flags: ConnectionFlags, opts: LiveOptions, selector: str | None,
                  parallel: int, progress: Progress, api: Api | None = None) -> Snapshot:
    """One snapshot holding every selected node's dumps (nodes that could not be read are
    listed in meta.nodeFailures)."""
    dumps: dict[str, NodeDumps] = {}
    infos: dict[str, dict] = {}
    failures: dict[str, str] = {}

    def on_node(g: Gathered, node: str, files: dict | None, info: dict, why: str) -> None:
        if files is None:
            failures[node] = why
        else:
            dumps[node], infos[node] = NodeDumps(node, files), info

    g = each_node(flags, opts, selector, parallel, progress, on_node, api)
    if not dumps:
        raise ClusterIPError(f"no node could be read: {next(iter(failures.values()), '')}")
    meta = {**g.meta, "clientNode": min(dumps), "client": None,
            "nodeDump": {"via": "pod", "image": opts.image, "modeHint": g.mode or None,
                         "nodes": {n: infos[n] for n in sorted(infos)}}}
    if failures:
        meta["nodeFailures"] = dict(sorted(failures.items()))
    return Snapshot(meta, g.objects, dict(sorted(dumps.items())), g.meta["source"])


def rules_fleet(flags: ConnectionFlags, opts: LiveOptions, selector: str | None, parallel: int,
                progress: Progress, keep: Callable[[list[ServicePort]], list[ServicePort]],
                api: Api | None = None) -> list[fleet.RulesRow]:
    """Each node's programmed service ports (those `keep` keeps), against the majority."""
    per_node: dict[str, tuple[list[str], list[ServicePort]] | str] = {}

    def on_node(g: Gathered, node: str, files: dict | None, info: dict, why: str) -> None:
        if files is None:
            per_node[node] = why
            return
        snap = Snapshot(g.meta, g.objects, {node: NodeDumps(node, files)}, g.meta["source"])
        try:
            modes, ports = service_ports(snap, node)
        except ClusterIPError as e:
            per_node[node] = str(e)
            return
        per_node[node] = (modes, keep(ports))

    each_node(flags, opts, selector, parallel, progress, on_node, api)
    return fleet.rules_rows(dict(sorted(per_node.items())))
