"""The life of a short-lived tool pod: create, wait, read its log, delete.

Reusable by any pod the tool starts (the node debug pod, a probe pod, one per node for a
fleet). Written against what a real kube-apiserver and kubelet answer: a refused create
(RBAC or Pod Security Admission) made nothing, so nothing is deleted; a pod the kubelet
rejects or kills before its container starts has no log (asking gives a 400), its reason
is in its status; names and label values are checked by the server (422). What a pod's
status means is decided by `assess`, a pure function, so one pod polled by GET and many
polled by one LIST read the same way.
"""

from __future__ import annotations

import hashlib
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kubectl_clusterip.cluster.api import Api, ApiError, Forbidden
from kubectl_clusterip.model import ClusterIPError

ACTIVE_DEADLINE = 300  # seconds: the kubelet kills the pod even if nobody deletes it
PENDING_GRACE = 15.0  # seconds before a pod not yet started is worth a question
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                "CreateContainerError", "CreateContainerConfigError", "RunContainerError")

Progress = Callable[[str], None]


class PodFailed(ClusterIPError):
    """The pod could not do its work (not scheduled, rejected, image, deadline, timeout)."""


# -- names the API server accepts for any input -------------------------------------------
def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def label_value(text: str) -> str:
    """`text` as a valid label value (≤ 63 characters of [A-Za-z0-9._-], alphanumeric at
    both ends); a value that had to change is cut and given a hash of the original, so two
    long node names never share one."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", text)
    if safe == text and len(safe) <= 63 and re.fullmatch(r"([A-Za-z0-9](.*[A-Za-z0-9])?)?",
                                                         safe):
        return safe
    head = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", safe[:52])
    return f"{head}-{_digest(text, 10)}" if head else _digest(text, 10)


def dns_label(prefix: str, text: str, suffix: str) -> str:
    """`prefix-<text>-suffix` as a DNS-1123 label (≤ 63, [a-z0-9-], alphanumeric ends): a
    long or unusual `text` is cut and given a hash, so the name stays recognisable."""
    room = 63 - len(prefix) - len(suffix) - 2
    safe = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")
    if len(safe) > room or safe != text:
        safe = re.sub(r"-+$", "", safe[:room - 7]) + "-" + _digest(text, 6)
    return f"{prefix}-{safe.strip('-') or _digest(text, 6)}-{suffix}"


# -- what a pod's status says ---------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """One reading of a pod: `state` is waiting, running, done (a container ran; read its
    log) or failed (it never will: `why` says so)."""

    state: str
    why: str = ""


def _started(pod: dict) -> bool:
    """Whether a container of the pod ever ran (only then is there a log to read)."""
    return any((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get(
        "terminated") for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def _waiting(pod: dict, age: float) -> tuple[str, bool]:
    """What a pod not yet running waits for, and whether that is hopeless."""
    st = pod.get("status") or {}
    for cs in st.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            reason, msg = waiting.get("reason", "waiting"), waiting.get("message", "")
            if reason in IMAGE_ERRORS:
                image = cs.get("image") or "the image"
                return (f"{reason}: cannot pull {image}" + (f" ({msg})" if msg else "")
                        + "; pass --image with an image the node can pull", True)
            return (reason + (" (pulling the image)" if reason == "ContainerCreating"
                              else f": {msg}" if msg else ""), False)
    for c in st.get("conditions") or []:
        if c.get("status") == "False" and c.get("reason"):
            return f"{c['type']} {c['reason']}: {c.get('message', '')}".strip(": "), False
    if not st.get("containerStatuses") and age >= PENDING_GRACE:
        return "Pending: the node's kubelet has not started it yet (is the node Ready?)", False
    return "Pending", False


def assess(pod: dict, age: float) -> Status:
    """How the pod stands, `age` seconds after it was created."""
    st = pod.get("status") or {}
    phase = st.get("phase") or "Pending"
    if phase == "Succeeded" or (phase == "Failed" and _started(pod)):
        return Status("done")
    if phase == "Failed":  # rejected by the kubelet, or its deadline came first: no log
        reason = st.get("reason") or "Failed"
        msg = st.get("message") or "no container was started"
        return Status("failed", f"{reason}: {msg}")
    if phase == "Running":
        return Status("running", "running")
    what, hopeless = _waiting(pod, age)
    return Status("failed" if hopeless else "waiting", what)


def terminated(pod: dict) -> str:
    """Why a pod whose container ran ended: `Error, exit code 1`."""
    st = pod.get("status") or {}
    for cs in st.get("containerStatuses") or []:
        t = (cs.get("state") or {}).get("terminated")
        if t:
            return f"{t.get('reason', 'terminated')}, exit code {t.get('exitCode')}"
    return st.get("reason") or "no reason given"


# -- the refusals a create meets ------------------------------------------------------------
_PSA = re.compile(r'violates PodSecurity "([a-z]+):([^"]*)":? ?(.*)', re.S)


def create_refused(e: ApiError, namespace: str, what: str) -> ClusterIPError:
    """A refused create as the user can act on it: Pod Security Admission is not RBAC."""
    m = _PSA.search(e.server_message)
    if e.status == 403 and m:
        level, version, why = m.groups()
        return Forbidden(f"namespace {namespace} enforces the Pod Security level {level!r} "
                         f"({level}:{version}), which refuses {what}"
                         + (f" ({why.strip().rstrip('.')})" if why.strip() else "")
                         + "; this is not RBAC: pass --debug-namespace NS for a namespace "
                         "labelled pod-security.kubernetes.io/enforce=privileged (it must "
                         "allow hostNetwork and NET_ADMIN), or --via kube-proxy")
    return e


def create(api: Api, pod: dict, what: str = "the debug pod") -> None:
    """Create the pod; a refusal (any answer of the API server) raised as one line."""
    try:
        api.create_pod(pod)
    except ApiError as e:
        raise create_refused(e, pod["metadata"]["namespace"], what) from None


def delete(api: Api, name: str, namespace: str, progress: Progress, what: str = "pod"
           ) -> None:
    """Delete now; a failure is a warning with what to run, never a mask on the real error."""
    with signals_ignored():
        try:
            if api.delete_pod(name, namespace):
                progress(f"deleted {what} {namespace}/{name}")
        except ClusterIPError as e:
            progress(f"warning: could not delete {what} {namespace}/{name} ({e}); it ends "
                     f"itself within {ACTIVE_DEADLINE}s; or run kubectl delete pod -n "
                     f"{namespace} {name}")


# -- signals --------------------------------------------------------------------------------
@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, so `finally` deletes the pods as on Ctrl-C."""
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


# -- one pod, start to end -------------------------------------------------------------------
def finished_log(api: Api, name: str, namespace: str, pod: dict, where: str) -> str:
    """The log of a pod whose container ran; a 400 (no log after all) says the pod's reason."""
    try:
        return api.pod_log(name, namespace)
    except ApiError as e:
        if e.status != 400:
            raise
        raise PodFailed(f"{where} left no log ({terminated(pod)})") from None


def run_pod(api: Api, pod: dict, timeout: float, progress: Progress, what: str = "pod",
            poll: float = 0.2, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> tuple[dict, str]:
    """Create the pod, wait until it ends, return its final state and log; delete it
    whatever happens (a create the server refused made nothing to delete). `what` names
    the pod in messages ("debug pod")."""
    name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
    node = pod["spec"].get("nodeName")
    where = f"{what} on {node}" if node else f"{what} {ns}/{name}"
    made = False
    with sigterm_as_interrupt():
        try:
            progress(f"creating {what} {ns}/{name}" + (f" on node {node}" if node else ""))
            made = True  # a create cut short (timeout, Ctrl-C) may still have made it
            try:
                create(api, pod, f"the {what}")
            except ApiError:
                made = False
                raise
            start = clock()
            said = ""
            while True:
                current = api.get("Pod", name, ns)
                if current is None:
                    raise PodFailed(f"{what} {ns}/{name} disappeared before it finished")
                st = assess(current, clock() - start)
                if st.state == "done":
                    return current, finished_log(api, name, ns, current, where)
                if st.state == "failed":
                    raise PodFailed(f"{where} did not run: {st.why}")
                if st.why != said:
                    progress(f"{what} {name}: {st.why}")
                    said = st.why
                if clock() - start >= timeout:
                    phase = (current.get("status") or {}).get("phase", "Pending")
                    raise PodFailed(f"{where} still {phase} after {timeout:g}s "
                                    f"({st.why}); deleted it")
                sleep(min(poll, max(timeout - (clock() - start), 0.05)))
                poll = min(poll * 1.5, 2.0)  # quick when the image is cached, calm when not
        finally:
            if made:
                delete(api, name, ns, progress, what)
