"""The tool pod's life cycle (cluster/podlife.py) with a mocked Api: each step's answers as
a real API server and kubelet give them."""

from __future__ import annotations

import pytest

from kubectl_clusterip.cluster import debugpod, podlife
from kubectl_clusterip.cluster.api import Api, ApiError, Forbidden
from kubectl_clusterip.model import ClusterIPError


def fake_api(mocker, states: list[dict], log: str = ""):
    a = mocker.Mock(spec=Api)
    a.get.side_effect = [{"status": s} for s in states] + [{"status": states[-1]}] * 100
    a.pod_log.return_value = log
    a.delete_pod.return_value = True
    return a


def waiting(reason: str) -> dict:
    return {"phase": "Pending", "containerStatuses": [
        {"image": "img", "state": {"waiting": {"reason": reason}}}]}


def ran(phase: str, code: int) -> dict:
    return {"phase": phase, "containerStatuses": [
        {"image": "img", "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]}


def spec() -> dict:
    return debugpod.pod_spec("n1", "img")


def test_pod_succeeds_log_returned_and_deleted(mocker):
    a = fake_api(mocker, [waiting("ContainerCreating"), {"phase": "Running"},
                          ran("Succeeded", 0)], "LOG")
    said: list[str] = []
    s = spec()
    assert debugpod.run_debug_pod(a, s, 10, said.append, sleep=lambda s: None) == "LOG"
    a.delete_pod.assert_called_once_with(s["metadata"]["name"], "kube-system")
    assert any("pulling the image" in m for m in said)
    assert said[-1].startswith("deleted debug pod kube-system/clusterip-debug-n1-")


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_image_errors_stop_at_once(mocker, reason):
    a = fake_api(mocker, [waiting(reason)])
    with pytest.raises(podlife.PodFailed, match=f"{reason}: cannot pull img"):
        debugpod.run_debug_pod(a, spec(), 10, lambda m: None, sleep=lambda s: None)
    a.delete_pod.assert_called_once()


def test_pending_times_out(mocker):
    a = fake_api(mocker, [{"phase": "Pending"}])
    with pytest.raises(ClusterIPError, match=r"still Pending after 0.05s \(Pending\)"):
        debugpod.run_debug_pod(a, spec(), 0.05, lambda m: None)
    a.delete_pod.assert_called_once()


def test_the_node_ready_question_waits_for_a_grace_period(mocker):
    """Right after the create every pod is Pending without container statuses: asking
    whether the node is Ready then would be noise on every run."""
    pending = {"status": {"phase": "Pending"}}
    assert podlife.assess(pending, 0.5) == podlife.Status("waiting", "Pending")
    late = podlife.assess(pending, podlife.PENDING_GRACE)
    assert late.state == "waiting" and "is the node Ready?" in late.why
    now = [0.0]
    a = fake_api(mocker, [{"phase": "Pending"}] * 3 + [ran("Succeeded", 0)], "LOG")
    said: list[str] = []

    def sleep(s: float) -> None:
        now[0] += 10
    debugpod.run_debug_pod(a, spec(), 100, said.append, sleep=sleep, clock=lambda: now[0])
    asked = [m for m in said if "is the node Ready?" in m]
    assert said[1].endswith(": Pending")  # at 0 s and 10 s, no question yet
    assert len(asked) == 1 and said.index(asked[0]) == 2  # at 20 s, once


def test_ctrl_c_while_waiting_deletes_and_reraises(mocker):
    a = fake_api(mocker, [{"phase": "Pending"}])

    def interrupted(_s: float) -> None:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        debugpod.run_debug_pod(a, spec(), 10, lambda m: None, sleep=interrupted)
    a.delete_pod.assert_called_once()


def test_a_refused_create_deletes_nothing_and_says_nothing_of_deleting(mocker):
    a = fake_api(mocker, [{"phase": "Pending"}])
    a.create_pod.side_effect = Forbidden("forbidden: you may not create pods in namespace x",
                                         403, "pods is forbidden")
    said: list[str] = []
    with pytest.raises(Forbidden, match="you may not create pods"):
        debugpod.run_debug_pod(a, spec(), 10, said.append)
    a.delete_pod.assert_not_called()
    assert not [m for m in said if "delete" in m]


def test_a_create_cut_short_is_deleted_anyway(mocker):
    """No answer (a timeout, Ctrl-C mid-request): the pod may exist, so it is deleted; a
    404 there is quiet."""
    a = fake_api(mocker, [{"phase": "Pending"}])
    a.create_pod.side_effect = ClusterIPError("cannot reach the API server: timed out")
    a.delete_pod.return_value = False
    said: list[str] = []
    with pytest.raises(ClusterIPError, match="timed out"):
        debugpod.run_debug_pod(a, spec(), 10, said.append)
    a.delete_pod.assert_called_once()
    assert not [m for m in said if "delete" in m]


def test_pod_security_refusal_is_not_called_rbac():
    msg = ('pods "clusterip-debug-n1-abcde" is forbidden: violates PodSecurity '
           '"baseline:latest": host namespaces (hostNetwork=true), non-default capabilities '
           '(container "debug" must not include "NET_ADMIN" in '
           'securityContext.capabilities.add)')
    e = podlife.create_refused(Forbidden("forbidden: you may not create pods (RBAC)", 403,
                                         msg), "kube-system", "the debug pod")
    text = str(e)
    assert "RBAC" not in text.replace("this is not RBAC", "")
    assert "namespace kube-system enforces the Pod Security level 'baseline'" in text
    assert "hostNetwork=true" in text and "--debug-namespace NS" in text
    assert "--via kube-proxy" in text
    plain = Forbidden("forbidden: you may not create pods (RBAC)", 403, "User cannot create")
    assert podlife.create_refused(plain, "x", "y") is plain


def test_failed_delete_is_a_warning_not_a_mask(mocker):
    a = fake_api(mocker, [waiting("ErrImagePull")])
    a.delete_pod.side_effect = ClusterIPError("delete refused")
    said: list[str] = []
    with pytest.raises(ClusterIPError, match="ErrImagePull"):
        debugpod.run_debug_pod(a, spec(), 10, said.append, sleep=lambda s: None)
    assert any(m.startswith("warning: could not delete debug pod") and "kubectl delete pod"
               in m for m in said)


def test_pod_ran_and_failed_without_dumps(mocker):
    a = fake_api(mocker, [ran("Failed", 2)], "sh: oops\n")
    with pytest.raises(podlife.PodFailed, match=r"failed \(Error, exit code 2\): sh: oops"):
        debugpod.run_debug_pod(a, spec(), 10, lambda m: None)


@pytest.mark.parametrize("status, why", [
    ({"phase": "Failed", "reason": "OutOfmemory", "message": "Pod was rejected: Node didn't "
      "have enough resource: memory, requested: 33554432, used: 8000000000, capacity: "
      "8000000000"}, "OutOfmemory: Pod was rejected: Node didn't have enough resource: memory"),
    ({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node "
      "longer than the specified deadline", "containerStatuses": [
          {"image": "img", "state": {"waiting": {"reason": "ContainerCreating"}}}]},
     "DeadlineExceeded: Pod was active on the node longer than the specified deadline"),
])
def test_a_pod_that_never_started_reports_its_reason_not_the_log_call(mocker, status, why):
    a = fake_api(mocker, [status])
    a.pod_log.side_effect = ApiError("get pods/log: the API server answered 400 BadRequest",
                                     400, "container is waiting to start")
    with pytest.raises(podlife.PodFailed, match="debug pod on n1 did not run: " + why):
        debugpod.run_debug_pod(a, spec(), 10, lambda m: None)
    a.pod_log.assert_not_called()
    a.delete_pod.assert_called_once()


def test_a_log_refused_with_400_says_the_pod_reason(mocker):
    a = fake_api(mocker, [ran("Failed", 128)])
    a.pod_log.side_effect = ApiError("400", 400, "container not found")
    with pytest.raises(podlife.PodFailed, match=r"left no log \(Error, exit code 128\)"):
        debugpod.run_debug_pod(a, spec(), 10, lambda m: None)


LONG = "ip-10-120-33-4.eu-central-1.compute.internal.nodepool-general-purpose.x"


@pytest.mark.parametrize("node", [LONG, LONG[:63], LONG[:62] + ".", "Worker_1.example.com",
                                  "n1", "a" * 253, "-x-"])
def test_names_and_labels_are_valid_for_any_node_name(node):
    label = podlife.label_value(node)
    assert len(label) <= 63 and label[0].isalnum() and label[-1].isalnum()
    assert set(label) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    name = debugpod.pod_name(node)
    assert len(name) <= 63 and name[-1].isalnum() and set(name) <= set(
        "abcdefghijklmnopqrstuvwxyz0123456789-")
    assert name.startswith("clusterip-debug-")


def test_long_names_keep_apart_and_short_ones_stay_readable():
    assert podlife.label_value("n1") == "n1"
    assert podlife.label_value(LONG) != podlife.label_value(LONG[:-1] + "y")
    assert podlife.label_value(LONG).startswith("ip-10-120-33-4.eu-central-1")
    assert debugpod.pod_name("worker-1").startswith("clusterip-debug-worker-1-")
    assert debugpod.pod_name(LONG)[:-6] != debugpod.pod_name(LONG[:-1] + "y")[:-6]
