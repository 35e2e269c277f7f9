"""The node's rules, read by a short-lived debug pod (or by exec into kube-proxy).

The pod is `kubectl debug node` with least privilege: host network and CAP_NET_ADMIN alone
(every dump command, iptables-legacy-save included, needs only that: see docs/snapshot.md),
pinned to the node, tolerating every taint, never restarted, with an active deadline so it
dies even when the plugin is killed. It prints each command's output between section
markers on its log, which `parse_log` turns back into the snapshot's NODE_FILES names.
Its lifecycle (create, wait, log, delete in every case: success, error, timeout, Ctrl-C
and SIGTERM) is cluster/podlife.py's.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from kubectl_clusterip.cluster import podlife
from kubectl_clusterip.cluster.api import Api, stream_error
from kubectl_clusterip.cluster.podlife import Progress
from kubectl_clusterip.model import ClusterIPError

NAMESPACE = "kube-system"  # privileged by Pod Security Admission on kubeadm/kind/most clusters
LABELS = {"app.kubernetes.io/name": "kubectl-clusterip",
          "app.kubernetes.io/component": "node-debug"}
NODE_LABEL = "clusterip.kubectl.dev/node"
RUN_LABEL = "clusterip.kubectl.dev/run"  # one fleet run's pods, listed with one selector
MARK = "==== kubectl-clusterip"

# The script the pod (or kube-proxy exec) runs: POSIX sh, every command in its own section.
# MODE (iptables|ipvs|nftables, or empty when unsure) picks the commands; CT_ARGS, when set,
# asks conntrack for the service IP's entries.
# `run FILE CMD…` prints CMD's output as section FILE (parse_log reads it back).
RUN_SECTION = r"""
M='==== kubectl-clusterip'
T=$(mktemp -d 2>/dev/null) || T=${TMPDIR:-/tmp}  # its own: /tmp may be shared (exec)
run() {
  f=$1; shift
  echo "$M BEGIN $f ===="
  "$@" >"$T/kc.out" 2>"$T/kc.err"; rc=$?
  cat "$T/kc.out"; echo
  echo "$M END $f rc=$rc ===="
  if [ "$rc" != 0 ]; then
    echo "$M STDERR $f ===="; head -c 2000 "$T/kc.err"; echo; echo "$M END-STDERR $f ===="
  fi
}
"""
SCRIPT = RUN_SECTION + r"""
iptables_both() {
  run iptables-legacy-save iptables-legacy-save
  run iptables-nft-save iptables-nft-save
  run ip6tables-legacy-save ip6tables-legacy-save
  run ip6tables-nft-save ip6tables-nft-save
  run xt-recent.txt sh -c 'grep -H "" /proc/net/xt_recent/* 2>/dev/null; true'
}
run proxy-mode curl -s -m 2 http://127.0.0.1:10249/proxyMode
[ -n "$MODE" ] || MODE=$(cat "$T/kc.out" 2>/dev/null)
case "$MODE" in
  iptables) iptables_both ;;
  ipvs) iptables_both; run ipvsadm-save.txt ipvsadm-save -n; run ipset-save.txt ipset save ;;
  nftables) run nft-ruleset.json nft -j list ruleset ;;
  *) iptables_both; run ipvsadm-save.txt ipvsadm-save -n; run ipset-save.txt ipset save
     run nft-ruleset.json nft -j list ruleset ;;
esac
[ -z "$CT_ARGS" ] || run conntrack.txt conntrack -L $CT_ARGS
run ip-addr.json ip -j addr show
run ip-route.json sh -c 'ip -j route show table main; ip -6 -j route show table main'
run sysctl.txt sh -c 'grep -H "" /proc/sys/net/netfilter/nf_conntrack_count \
  /proc/sys/net/netfilter/nf_conntrack_max /proc/sys/net/ipv4/ip_forward \
  /proc/sys/net/ipv6/conf/all/forwarding /proc/sys/net/bridge/bridge-nf-call-iptables \
  /proc/sys/net/bridge/bridge-nf-call-ip6tables /proc/sys/net/ipv4/conf/*/rp_filter \
  2>/dev/null; true'
run conntrack-stats.txt conntrack -S
run kube-proxy-healthz.json curl -s -m 2 http://127.0.0.1:10256/healthz
run kube-proxy-metrics.txt sh -c 'curl -sf -m 2 http://127.0.0.1:10249/metrics |
  grep "^kubeproxy_sync_proxy_rules_"'
rm -f "$T/kc.out" "$T/kc.err"; [ "$T" = "${TMPDIR:-/tmp}" ] || rmdir "$T" 2>/dev/null
echo "$M DONE ===="
exit 0
"""

# The node's own state (nodefacts.py parses them): sysctls, conntrack counters, kube-proxy.
NODE_FACT_FILES = ("sysctl.txt", "conntrack-stats.txt", "kube-proxy-healthz.json",
                   "kube-proxy-metrics.txt")

_SECTION = re.compile(rf"^{re.escape(MARK)} BEGIN (\S+) ====\n(.*?)\n{re.escape(MARK)} END "
                      rf"\1 rc=(\d+) ====\n(?:{re.escape(MARK)} STDERR \1 ====\n(.*?)\n"
                      rf"{re.escape(MARK)} END-STDERR \1 ====\n)?", re.S | re.M)


@dataclass
class Sections:
    """What the node's commands printed: output per section, and failures (`rc: stderr`)."""

    output: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    complete: bool = False  # the script reached its end


def parse_log(log: str) -> Sections:
    """The log's sections; a failed command's output is kept out, its stderr kept."""
    out = Sections(complete=f"{MARK} DONE ====" in log)
    for m in _SECTION.finditer(log):
        name, text, rc, err = m.group(1), m.group(2), int(m.group(3)), m.group(4) or ""
        if rc == 0:
            out.output[name] = text
        else:
            out.errors[name] = f"exit {rc}: {err.strip().splitlines()[0] if err.strip() else ''}"
    return out


def _kube_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A KUBE-"))


def node_files(sec: Sections) -> tuple[dict[str, str], dict]:
    """NODE_FILES from the sections, and what was chosen (recorded in snapshot meta).

    Both iptables backends were dumped when unsure: the one holding kube-proxy's rules is
    the node's `iptables-save.txt` (nft wins a tie, as with kube-proxy's iptables-wrapper).
    """
    files: dict[str, str] = {}
    info: dict = {}
    for fam, name in (("iptables", "iptables-save.txt"), ("ip6tables", "ip6tables-save.txt")):
        legacy = sec.output.get(f"{fam}-legacy-save", "")
        nft = sec.output.get(f"{fam}-nft-save", "")
        text, backend = (legacy, "legacy") if _kube_lines(legacy) > _kube_lines(nft) else (
            nft, "nft")
        if not text.strip():
            text, backend = (legacy, "legacy") if legacy.strip() else ("", "")
        if text.strip():
            files[name] = text if text.endswith("\n") else text + "\n"
            info[f"{fam}Backend"] = backend
    mode = sec.output.get("proxy-mode", "").strip()
    if mode:
        files["proxy-mode"] = mode + "\n"
    for name in ("ipvsadm-save.txt", "ipset-save.txt", "nft-ruleset.json", "conntrack.txt",
                 "ip-addr.json", "ip-route.json", *NODE_FACT_FILES):
        if sec.output.get(name, "").strip():
            files[name] = sec.output[name]
    # A mode's dumps only: another mode's leftovers would be traced as a second dataplane.
    if mode in ("iptables", "ipvs") or (not mode and "iptables-save.txt" in files
                                        and "KUBE-SERVICES" in files["iptables-save.txt"]):
        files.pop("nft-ruleset.json", None)
    if mode == "nftables":
        for name in ("iptables-save.txt", "ip6tables-save.txt", "ipvsadm-save.txt"):
            files.pop(name, None)
    if mode != "ipvs" and not files.get("ipvsadm-save.txt", "").strip("\n").count("\n"):
        files.pop("ipvsadm-save.txt", None)
    if sec.errors:
        info["errors"] = dict(sec.errors)
    return files, info


def pod_name(node: str) -> str:
    """`clusterip-debug-<node>-<random>`: recognisable, unique, a valid DNS label for any
    node name (a long one is cut and given a hash)."""
    return podlife.dns_label("clusterip-debug", node, secrets.token_hex(3)[:5])


def pod_spec(node: str, image: str, mode: str = "", conntrack_args: str = "",
             namespace: str = NAMESPACE, deadline: int = podlife.ACTIVE_DEADLINE,
             run: str = "") -> dict:
    """The debug pod, as `kubectl debug node` makes one but with CAP_NET_ADMIN only."""
    labels = {**LABELS, NODE_LABEL: podlife.label_value(node)}
    if run:
        labels[RUN_LABEL] = run
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(node), "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "debug",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", SCRIPT],
                "env": [{"name": "MODE", "value": mode},
                        {"name": "CT_ARGS", "value": conntrack_args}],
                "securityContext": {
                    "privileged": False,
                    "runAsUser": 0,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                },
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                              "limits": {"memory": "512Mi"}},
            }],
        },
    }


def run_debug_pod(api: Api, pod: dict, timeout: float, progress: Progress,
                  **kw: object) -> str:
    """The dump script's log from the node (the pod deleted whatever happens)."""
    final, log = podlife.run_pod(api, pod, timeout, progress, "debug pod", **kw)  # type: ignore[arg-type]
    return checked_log(final, log, f"debug pod on {pod['spec']['nodeName']}")


def checked_log(final: dict, log: str, what: str) -> str:
    """The log of a finished debug pod; a pod that failed before the script's end is an
    error that quotes its last line."""
    if (final.get("status") or {}).get("phase") == "Failed" and f"{MARK} DONE ====" not in log:
        last = log.strip().splitlines()[-1:]
        raise podlife.PodFailed(f"{what} failed ({podlife.terminated(final)})"
                                + (f": {last[0]}" if last else ""))
    return log


def exec_script(api: Api, pod: dict, mode: str, conntrack_args: str) -> str:
    """--via kube-proxy: run the dump script inside the node's kube-proxy pod (no new pod)."""
    command = ["sh", "-c", f"MODE='{mode}' CT_ARGS='{conntrack_args}'\n{SCRIPT}"]
    return exec_in_pod(api, pod, pod["spec"]["containers"][0]["name"], command,
                       "omit --via to use a debug pod")


def exec_in_pod(api: Api, pod: dict, container: str, command: list[str], hint: str) -> str:
    """Run a command in a pod's container over the exec websocket; its stdout.

    Stdout alone is the log (stderr would interleave with the sections); the error
    channel's v1 Status says whether the command ran to a zero exit. Every failure is one
    ClusterIPError ending with `hint`."""
    from kubernetes.stream import stream

    name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
    timeout = api.kc.timeout or 120
    api.calls += 1
    try:
        ws = stream(api.core().connect_get_namespaced_pod_exec, name, ns,
                    container=container, command=command, stdin=False, stdout=True,
                    stderr=True, tty=False, _preload_content=False)
    except Exception as e:  # websocket and API errors arrive as many types
        refused = stream_error(e, f"create pods/exec in namespace {ns}")
        if refused is not None:
            raise refused from None
        why = str(getattr(e, "reason", None) or e).strip().splitlines()[0]
        raise ClusterIPError(f"exec into {ns}/{name} failed: {why}; {hint}") from None
    try:
        ws.run_forever(timeout=timeout)
        if ws.is_open():
            raise ClusterIPError(f"exec into {ns}/{name} still running after {timeout:g}s; "
                                 f"{hint}")
        out, err = ws.read_stdout(), ws.read_stderr()
        failed = _exec_failure(ws.read_channel(3))
    except ClusterIPError:
        raise
    except Exception as e:  # the connection dropped mid-stream: websocket-client's errors
        raise ClusterIPError(f"exec into {ns}/{name} failed: {str(e) or type(e).__name__}; "
                             f"{hint}") from None
    finally:
        ws.close(timeout=1)  # a hung peer does not get websocket-client's 3 s for its close
    if failed:
        last = err.strip().splitlines()[-1:] if isinstance(err, str) else []
        raise ClusterIPError(f"exec into {ns}/{name} failed: {failed}"
                             + (f" ({last[0]})" if last else "") + f"; {hint}")
    return str(out)


def _exec_failure(status: str) -> str | None:
    """None when exec's error channel (a v1 Status) says Success or nothing, else why in
    one line."""
    import json

    if not status.strip():
        return None
    try:
        st = json.loads(status)
    except ValueError:
        return status.strip().splitlines()[0]
    if not isinstance(st, dict) or st.get("status") == "Success":
        return None
    causes = (st.get("details") or {}).get("causes") or []
    code = next((c.get("message") for c in causes if c.get("reason") == "ExitCode"), None)
    if code is not None:  # the message quotes the whole script: the exit code says it all
        return f"the script exited with code {code}"
    return str(st.get("message") or st.get("reason") or "Failure").strip().splitlines()[0]
