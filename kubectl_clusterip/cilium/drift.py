"""The API's endpoints against the backends Cilium's agent holds for one frontend.

The agent turns EndpointSlice endpoints into backends (pkg/loadbalancer): ready → active,
serving-and-terminating → terminating, neither → left out. A difference means the agent
missed an update (drift, as kube-proxy's rules can lag), or kept a state the API no longer
supports (a backend stuck terminating or quarantined while its pod is ready again).
Pure over the trace's `cilium` block and the API's endpoints.
"""

from __future__ import annotations

from kubectl_clusterip.endpoints import EndpointInfo
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Finding, Trace, join_host_port


def agent_state(e: EndpointInfo) -> str | None:
    """The backend state Cilium's agent derives from an endpoint's conditions."""
    if e.ready and not e.terminating:
        return "active"
    if e.serving and e.terminating:
        return "terminating"
    return None


def backend_drift(trace: Trace, api: list[EndpointInfo], node: str) -> list[Finding]:
    info = trace.extra.get("cilium") or {}
    if not info.get("frontend") or "backends" not in info:
        return []
    agent = {join_host_port(b["ip"], b["port"]): b for b in info["backends"]}
    want = {e.endpoint: e for e in api if agent_state(e) is not None}
    svc = trace.service or info["frontend"]
    have = ", ".join(f"{k} {v['state']}" for k, v in agent.items()) or "none"
    api_has = ", ".join(f"{k} {agent_state(v)}" for k, v in want.items()) or "none"
    evidence = f"agent: {have}; API: {api_has}"
    logs = (f"kubectl -n kube-system logs <cilium pod on {node}> -c cilium-agent | grep -i "
            "'endpoint\\|service'; the agent is not following the EndpointSlices")
    out: list[Finding] = []
    missing = sorted(set(want) - set(agent))
    stale = sorted(k for k, b in agent.items() if k not in want and b["state"] == "active")
    if missing:
        out.append(finding("CiliumBackendDrift",
                           f"the API lists endpoint(s) {', '.join(missing)} for {svc} that "
                           f"Cilium's agent on {node} does not have as backends: they get no "
                           "traffic from this node", evidence, logs))
    if stale:
        out.append(finding("CiliumBackendDrift",
                           f"Cilium's agent on {node} still sends new connections for {svc} to "
                           f"{', '.join(stale)}, which the API no longer lists as endpoint(s)",
                           evidence, logs))
    for k, b in agent.items():
        e = want.get(k)
        if b["state"] == "terminating" and (e is None or agent_state(e) == "active"):
            why = ("its pod is ready again" if e is not None else
                   "the API no longer lists it at all")
            out.append(finding("CiliumBackendStuck",
                               f"backend {k} of {svc} is stuck terminating in the agent but "
                               f"{why}", evidence, logs))
        elif b["state"] == "quarantined" and e is not None and agent_state(e) == "active":
            out.append(finding("CiliumBackendStuck",
                               f"backend {k} of {svc} stays quarantined though its endpoint is "
                               "ready: the agent's health check still fails it, or a restored "
                               "quarantine was never cleared", evidence,
                               f"cilium-dbg service update --backends {k} --states active "
                               "(or restart the agent on the node)"))
    return out
