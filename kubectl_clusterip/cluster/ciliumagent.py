"""Cilium's own view of a node, read by exec into the node's cilium agent pod.

Where Cilium replaces kube-proxy, the node's iptables hold no Service rules: the agent's
`service list`, its BPF service map (`bpf lb list`) and `status --verbose` are what the
`cilium` dataplane traces. One exec runs them all (container `cilium-agent`; the CLI is
`cilium-dbg` since 1.15, `cilium` before) and prints each between the debug pod's section
markers, so the same parser reads them back. Needs `create pods/exec` in the agent's
namespace; without it the trace says so in one line and stops at KubeProxyReplaced.
"""

from __future__ import annotations

from kubectl_clusterip.cluster.api import Api
from kubectl_clusterip.cluster.debugpod import RUN_SECTION, exec_in_pod, parse_log
from kubectl_clusterip.model import ClusterIPError

CONTAINER = "cilium-agent"
# kube-proxy-replacement values under which Cilium handles ClusterIP traffic on the node
# (true/false since 1.14; strict/partial/probe before; disabled was the old false).
KPR_ON = ("true", "strict", "partial", "probe")

AGENT_SCRIPT = RUN_SECTION + r"""
if command -v cilium-dbg >/dev/null 2>&1; then C=cilium-dbg; else C=cilium; fi
run cilium-binary echo "$C"
run cilium-service-list.json $C service list -o json
[ "$rc" = 0 ] || run cilium-service-list.txt $C service list
run cilium-bpf-lb-list.txt $C bpf lb list
run cilium-bpf-lb-backends.txt $C bpf lb list --backends
run cilium-status.txt $C status --verbose
[ -z "$CT" ] || run cilium-bpf-ct-global.txt sh -c \
  "$C bpf ct list global | grep -E '^(TCP|UDP|SCTP) (SVC|OUT) .*RevNAT=[1-9]' | head -n 20000"
echo "$M DONE ===="
exit 0
"""
FILES = ("cilium-service-list.json", "cilium-service-list.txt", "cilium-bpf-lb-list.txt",
         "cilium-bpf-lb-backends.txt", "cilium-status.txt", "cilium-bpf-ct-global.txt")


def is_agent(pod: dict) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get("k8s-app") == "cilium"


def agent_on(pods: list[dict], node: str) -> dict | None:
    return next((p for p in pods if is_agent(p)
                 and (p.get("spec") or {}).get("nodeName") == node), None)


def replaces_kube_proxy(config: dict | None, kube_proxy_on_node: bool) -> bool:
    """cilium-config's kube-proxy-replacement, or no kube-proxy on the node at all."""
    value = str(((config or {}).get("data") or {}).get("kube-proxy-replacement", "")).lower()
    return value in KPR_ON or (not kube_proxy_on_node and value not in ("false", "disabled"))


def container_of(pod: dict) -> str:
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    return CONTAINER if CONTAINER in names or not names else str(names[0])


def read_agent(api: Api, pod: dict, conntrack: bool) -> tuple[dict[str, str], dict]:
    """The agent's outputs as snapshot node files, and what was read (for snapshot meta)."""
    md = pod["metadata"]
    command = ["sh", "-c", f"CT='{'1' if conntrack else ''}'\n{AGENT_SCRIPT}"]
    log = exec_in_pod(api, pod, container_of(pod), command,
                      "the trace stops at KubeProxyReplaced")
    sec = parse_log(log)
    if not sec.complete and not sec.output:
        raise ClusterIPError(f"exec into {md['namespace']}/{md['name']}: no output (does its "
                             f"container {container_of(pod)} have sh?)")
    files = {f: sec.output[f] for f in FILES if sec.output.get(f, "").strip()}
    if "cilium-service-list.json" in files:
        files.pop("cilium-service-list.txt", None)
    info: dict = {"pod": f"{md['namespace']}/{md['name']}",
                  "binary": sec.output.get("cilium-binary", "").strip() or None}
    errors = {k: v for k, v in sec.errors.items()
              if not (k == "cilium-service-list.json" and "cilium-service-list.txt" in files)}
    if errors:
        info["errors"] = errors
    return files, info
