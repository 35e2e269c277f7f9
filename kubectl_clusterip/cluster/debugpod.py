"""The node's rules, read by a short-lived debug pod (or by exec into kube-proxy).

The pod is `kubectl debug node` with least privilege: host network and CAP_NET_ADMIN alone
(every dump command, iptables-legacy-save included, needs only that: see docs/snapshot.md),
pinned to the node, tolerating every taint, never restarted, with an active deadline so it
dies even when the plugin is killed. It prints each command's output between section
markers on its log, which `parse_log` turns back into the snapshot's NODE_FILES names.
It is deleted in every case: success, error, timeout, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import re
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from kubectl_clusterip.cluster.api import Api, stream_error
from kubectl_clusterip.model import ClusterIPError

DEFAULT_IMAGE = "nicolaka/netshoot:v0.13"  # public; iptables (both backends), nft, ipvsadm,
# ipset, conntrack, iproute2 and curl
NAMESPACE = "kube-system"  # privileged by Pod Security Admission on kubeadm/kind/most clusters
LABELS = {"app.kubernetes.io/name": "kubectl-clusterip",
          "app.kubernetes.io/component": "node-debug"}
ACTIVE_DEADLINE = 300  # seconds: the kubelet kills the pod even if nobody deletes it
MARK = "==== kubectl-clusterip"
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                "CreateContainerError", "CreateContainerConfigError", "RunContainerError")

# The script the pod (or kube-proxy exec) runs: POSIX sh, every command in its own section.
# MODE (iptables|ipvs|nftables, or empty when unsure) picks the commands; CT_ARGS, when set,
# asks conntrack for the service IP's entries.
SCRIPT = r"""
M='==== kubectl-clusterip'
T=${TMPDIR:-/tmp}
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
echo "$M DONE ===="
exit 0
"""

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
                 "ip-addr.json", "ip-route.json"):
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
    """`clusterip-debug-<node>-<random>`: recognisable, unique, a valid DNS label."""
    safe = re.sub(r"[^a-z0-9-]", "-", node.lower())[:40].strip("-") or "node"
    return f"clusterip-debug-{safe}-{secrets.token_hex(3)[:5]}"


def pod_spec(node: str, image: str, mode: str = "", conntrack_args: str = "",
             namespace: str = NAMESPACE, deadline: int = ACTIVE_DEADLINE) -> dict:
    """The debug pod, as `kubectl debug node` makes one but with CAP_NET_ADMIN only."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(node), "namespace": namespace,
                     "labels": {**LABELS, "clusterip.kubectl.dev/node": node[:63]}},
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


def describe_waiting(pod: dict) -> tuple[str, bool]:
    """What the pod waits for, and whether that is hopeless (an image or config error)."""
    st = pod.get("status") or {}
    for cs in st.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            reason = waiting.get("reason", "waiting")
            msg = waiting.get("message", "")
            if reason in IMAGE_ERRORS:
                image = cs.get("image") or "the image"
                return (f"{reason}: cannot pull {image}" + (f" ({msg})" if msg else "")
                        + "; pass --image with an image the node can pull", True)
            return (f"{reason}" + (" (pulling the image)" if reason == "ContainerCreating"
                                   else f": {msg}" if msg else ""), False)
    for c in st.get("conditions") or []:
        if c.get("status") == "False" and c.get("reason"):
            return f"{c['type']} {c['reason']}: {c.get('message', '')}".strip(": "), False
    phase = st.get("phase") or "Pending"
    if phase == "Pending" and not st.get("containerStatuses"):
        return "Pending: the node's kubelet has not started it yet (is the node Ready?)", False
    return phase, False


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, so `finally` deletes the pod as on Ctrl-C."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the cleanup short."""
    try:
        old = [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


Progress = Callable[[str], None]


def run_debug_pod(api: Api, pod: dict, timeout: float, progress: Progress,
                  poll: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> str:
    """Create the pod, wait for it to finish, return its log; delete it whatever happens."""
    name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
    node, image = pod["spec"]["nodeName"], pod["spec"]["containers"][0]["image"]
    attempted = False
    with sigterm_as_interrupt():
        try:
            progress(f"creating debug pod {ns}/{name} on node {node} (image {image})")
            attempted = True
            api.create_pod(pod)
            deadline = time.monotonic() + timeout
            said = ""
            while True:
                current = api.get("Pod", name, ns)
                if current is None:
                    raise ClusterIPError(f"debug pod {ns}/{name} disappeared before it finished")
                phase = (current.get("status") or {}).get("phase", "Pending")
                if phase in ("Succeeded", "Failed"):
                    break
                what, hopeless = describe_waiting(current)
                if hopeless:
                    raise ClusterIPError(f"debug pod on {node}: {what}")
                if phase == "Running":
                    what = "running the dump commands"
                if what != said:
                    progress(f"debug pod {name}: {what}")
                    said = what
                if time.monotonic() >= deadline:
                    raise ClusterIPError(f"debug pod on {node} still {phase} after "
                                         f"{timeout:g}s ({what}); deleted it")
                sleep(min(poll, max(deadline - time.monotonic(), 0.05)))
                poll = min(poll * 1.5, 2.0)  # quick when the image is cached, calm when not
            log = api.pod_log(name, ns)
            if phase == "Failed" and f"{MARK} DONE ====" not in log:
                reason = (current.get("status") or {}).get("reason") or _terminated(current)
                raise ClusterIPError(f"debug pod on {node} failed ({reason})"
                                     + (f": {log.strip().splitlines()[-1]}" if log.strip()
                                        else ""))
            return log
        finally:
            if attempted:
                with signals_ignored():
                    try:
                        api.delete_pod(name, ns)
                        progress(f"deleted debug pod {ns}/{name}")
                    except ClusterIPError as e:
                        progress(f"warning: could not delete debug pod {ns}/{name} ({e}); "
                                 f"it ends itself within {ACTIVE_DEADLINE}s; or run "
                                 f"kubectl delete pod -n {ns} {name}")


def _terminated(pod: dict) -> str:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        t = (cs.get("state") or {}).get("terminated")
        if t:
            return f"{t.get('reason', 'terminated')}, exit code {t.get('exitCode')}"
    return "no reason given"


def exec_script(api: Api, pod: dict, mode: str, conntrack_args: str) -> str:
    """--via kube-proxy: run the dump script inside the node's kube-proxy pod (no new pod).

    Stdout alone is the log (stderr would interleave with the sections); the error
    channel's v1 Status says whether the command ran to a zero exit."""
    from kubernetes.stream import stream

    name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
    container = pod["spec"]["containers"][0]["name"]
    command = ["sh", "-c", f"MODE='{mode}' CT_ARGS='{conntrack_args}'\n{SCRIPT}"]
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
        raise ClusterIPError(f"exec into {ns}/{name} failed: {why}; "
                             "omit --via to use a debug pod") from None
    try:
        ws.run_forever(timeout=timeout)
        if ws.is_open():
            raise ClusterIPError(f"exec into {ns}/{name} still running after {timeout:g}s; "
                                 "omit --via to use a debug pod")
        out, err = ws.read_stdout(), ws.read_stderr()
        failed = _exec_failure(ws.read_channel(3))
    except ClusterIPError:
        raise
    except Exception as e:  # the connection dropped mid-stream: websocket-client's errors
        raise ClusterIPError(f"exec into {ns}/{name} failed: {str(e) or type(e).__name__}; "
                             "omit --via to use a debug pod") from None
    finally:
        ws.close(timeout=1)  # a hung peer does not get websocket-client's 3 s for its close
    if failed:
        last = err.strip().splitlines()[-1:] if isinstance(err, str) else []
        raise ClusterIPError(f"exec into {ns}/{name} failed: {failed}"
                             + (f" ({last[0]})" if last else "")
                             + "; omit --via to use a debug pod")
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
