"""Unit tests at the Kubernetes client boundary (pytest-mock): error mapping, the debug pod's
life cycle and cleanup, exec and port-forward, and the pure choices of the live edge."""

from __future__ import annotations

import json

import pytest
from fakeapi import endpoint_slice, node, pod, section_log
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from kubectl_clusterip.cluster import capture, debugpod
from kubectl_clusterip.cluster import dns as dnsmod
from kubectl_clusterip.cluster.api import Api, Forbidden, NotFound, api_error
from kubectl_clusterip.cluster.kubeconfig import KubeConfig
from kubectl_clusterip.model import ClusterIPError

KC = KubeConfig({}, "test", "default", 5.0, [])


def exc(status: int, reason: str = "", message: str = "") -> ApiException:
    e = ApiException(status=status, reason=reason)
    e.body = json.dumps({"kind": "Status", "reason": reason, "message": message}).encode()
    return e


@pytest.fixture
def api(mocker):
    client = mocker.MagicMock()
    client.configuration.host = "https://k8s.example:6443"
    return Api(KC, client=client)


# -- errors at the client boundary -------------------------------------------------------
def test_403_names_the_permission():
    e = api_error(exc(403, "Forbidden", 'pods is forbidden: User "u" cannot create'),
                  "create pods in namespace kube-system")
    assert isinstance(e, Forbidden)
    assert str(e).startswith("forbidden: you may not create pods in namespace kube-system")


def test_404_401_500():
    assert isinstance(api_error(exc(404, "NotFound", "x"), "get services"), NotFound)
    assert "log in again" in str(api_error(exc(401), "list nodes"))
    assert "500" in str(api_error(exc(500, "InternalError", "boom"), "list nodes"))


def test_get_returns_none_on_404_and_sets_kind(api, mocker):
    read = mocker.patch("kubernetes.client.CoreV1Api.read_namespaced_service",
                        side_effect=exc(404, "NotFound"))
    assert api.get("Service", "x", "default") is None
    read.side_effect = None
    read.return_value = mocker.Mock(data=json.dumps({"metadata": {
        "name": "x", "managedFields": [{}]}, "spec": {"clusterIP": "10.0.0.1"}}).encode())
    got = api.get("Service", "x", "default")
    assert got == {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                   "spec": {"clusterIP": "10.0.0.1"}}
    assert read.call_args.kwargs["_preload_content"] is False
    assert read.call_args.kwargs["_request_timeout"] == 5.0


def test_list_sets_kind_on_items_and_passes_the_selector(api, mocker):
    lst = mocker.patch("kubernetes.client.DiscoveryV1Api.list_namespaced_endpoint_slice")
    lst.return_value = mocker.Mock(data=json.dumps({"items": [{"metadata": {"name": "s"}}]}))
    items = api.list("EndpointSlice", "default", "kubernetes.io/service-name=web")
    assert items[0]["apiVersion"] == "discovery.k8s.io/v1" and items[0]["kind"] == "EndpointSlice"
    assert lst.call_args.kwargs["label_selector"] == "kubernetes.io/service-name=web"


def test_unreachable_server_is_one_line(api, mocker):
    mocker.patch("kubernetes.client.CoreV1Api.list_node",
                 side_effect=MaxRetryError(None, "/api/v1/nodes", "connection refused"))
    with pytest.raises(ClusterIPError, match="cannot reach the API server at https://k8s"):
        api.list("Node")


def test_pod_spec_is_least_privilege():
    spec = debugpod.pod_spec("Worker_1.example.com", "img", "ipvs", "-d 10.96.0.1")
    name = spec["metadata"]["name"]
    assert name.startswith("clusterip-debug-worker-1-example-com-") and len(name) <= 63
    sc = spec["spec"]["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]} and not sc["privileged"]
    assert spec["spec"]["automountServiceAccountToken"] is False
    assert not any(k.startswith("host") and k != "hostNetwork" for k in spec["spec"])


# -- the log's sections back into NODE_FILES ---------------------------------------------
def test_sections_keep_text_exactly_and_pick_the_backend_with_kube_rules():
    legacy = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-X\nCOMMIT\n"
    log = section_log({"proxy-mode": "iptables", "iptables-legacy-save": legacy,
                       "iptables-nft-save": "*filter\nCOMMIT\n", "ip-addr.json": "[]"},
                      {"ip6tables-nft-save": "not found"})
    sec = debugpod.parse_log(log)
    assert sec.complete and sec.output["iptables-legacy-save"] == legacy
    assert sec.errors == {"ip6tables-nft-save": "exit 1: not found"}
    files, info = debugpod.node_files(sec)
    assert files["iptables-save.txt"] == legacy and info["iptablesBackend"] == "legacy"
    assert files["proxy-mode"] == "iptables\n" and "ip6tables-save.txt" not in files


def test_nftables_mode_keeps_only_nft():
    sec = debugpod.parse_log(section_log({"proxy-mode": "nftables",
                                          "iptables-nft-save": "*nat\n-A KUBE-X\nCOMMIT\n",
                                          "nft-ruleset.json": '{"nftables": []}'}))
    files, _ = debugpod.node_files(sec)
    assert set(files) == {"proxy-mode", "nft-ruleset.json"}


def test_iptables_mode_drops_a_stray_nft_dump():
    sec = debugpod.parse_log(section_log({"iptables-nft-save": "*nat\n:KUBE-SERVICES - [0:0]\n",
                                          "nft-ruleset.json": '{"nftables": []}'}))
    assert "nft-ruleset.json" not in debugpod.node_files(sec)[0]


def test_the_real_script_runs_and_parses(tmp_path):
    """The script itself, run by sh here: every section parses, missing tools are errors."""
    import shutil
    import subprocess
    for tool in ("sh", "cat", "head"):  # only these: every dump tool is "not found"
        (tmp_path / tool).symlink_to(shutil.which(tool))
    out = subprocess.run([str(tmp_path / "sh"), "-c", debugpod.SCRIPT], capture_output=True,
                         text=True, timeout=20, env={"PATH": str(tmp_path), "MODE": "nftables",
                                                     "CT_ARGS": "", "TMPDIR": str(tmp_path)})
    sec = debugpod.parse_log(out.stdout)
    assert sec.complete and "nft-ruleset.json" in sec.errors and "ip-addr.json" in sec.errors


# -- exec and port-forward (websockets) at the client boundary ------------------------------
def test_via_kube_proxy_execs_the_script(api, mocker):
    ws = mocker.Mock(**{"is_open.return_value": False, "read_stdout.return_value": "LOG",
                        "read_stderr.return_value": "",
                        "read_channel.return_value": '{"status": "Success"}'})
    stream = mocker.patch("kubernetes.stream.stream", return_value=ws)
    proxy = pod("kube-proxy-n1", "kube-system", "172.18.0.2", "n1")
    assert debugpod.exec_script(api, proxy, "iptables", "") == "LOG"
    ws.read_channel.assert_called_once_with(3)
    ws.close.assert_called_once()
    kwargs = stream.call_args.kwargs
    assert kwargs["_preload_content"] is False  # the error channel is read, not dropped
    assert kwargs["container"] == "c" and kwargs["command"][:2] == ["sh", "-c"]
    assert "MODE='iptables'" in kwargs["command"][2]


def test_via_kube_proxy_without_a_shell(api, mocker):
    mocker.patch("kubernetes.stream.stream", side_effect=RuntimeError(
        'exec: "sh": executable file not found in $PATH'))
    with pytest.raises(ClusterIPError, match=r"executable file not found.*omit --via"):
        debugpod.exec_script(api, pod("kube-proxy-n1", "kube-system", "1.1.1.1", "n1"), "", "")


def test_via_kube_proxy_forbidden(api, mocker):
    mocker.patch("kubernetes.stream.stream", side_effect=exc(403, "Forbidden"))
    with pytest.raises(Forbidden, match="create pods/exec in namespace kube-system"):
        debugpod.exec_script(api, pod("kube-proxy-n1", "kube-system", "1.1.1.1", "n1"), "", "")


def test_port_forward_asks_over_the_forwarded_socket(api, mocker):
    import socket
    ours, theirs = socket.socketpair()
    pf = mocker.Mock()
    pf.socket.return_value = ours
    portforward = mocker.patch("kubernetes.stream.portforward", return_value=pf)
    coredns = pod("coredns-1", "kube-system", "10.244.0.2", "n1")
    with dnsmod.port_forward_asker(api, coredns, 0.2) as ask:
        theirs.close()  # nobody answers: a bounded error, not a hang
        out = dnsmod.lookup("web", ["default.svc.cluster.local"], 5, ask, "pf")
    assert out["error"] and portforward.call_args.kwargs["ports"] == "53"
    pf.close.assert_called_once()


def test_port_forward_forbidden(api, mocker):
    mocker.patch("kubernetes.stream.portforward", side_effect=exc(403, "Forbidden"))
    with pytest.raises(ClusterIPError, match=r"pods/portforward.*--dns-server"):
        with dnsmod.port_forward_asker(api, pod("coredns-1", "kube-system", "1.1.1.1", "n1"), 1):
            pass


# -- pure choices ------------------------------------------------------------------------
def test_choose_node_prefers_a_ready_worker_without_endpoints():
    nodes = [node("cp", "1.1.1.1", control_plane=True), node("a", "1.1.1.2"),
             node("b", "1.1.1.3")]
    slices = [endpoint_slice("web", "d", [], [("10.0.0.1", "a", "p")])]
    assert capture.choose_node(nodes, slices) == (
        "b", "it runs no endpoint, so the trace shows the cross-node path")
    slices = [endpoint_slice("web", "d", [], [("10.0.0.1", n, "p") for n in ("a", "b", "cp")])]
    assert capture.choose_node(nodes, slices)[0] == "a"
    nodes[1]["status"]["conditions"][0]["status"] = "False"
    assert capture.choose_node(nodes, [])[0] == "b"


def test_proxy_mode_hint():
    cm = {"data": {"config.conf": "mode: ipvs\n"}}
    assert capture.proxy_mode_hint(cm) == "ipvs"
    assert capture.proxy_mode_hint({"data": {"config.conf": 'mode: ""\n'}}) == ""
    assert capture.proxy_mode_hint(None) == ""
