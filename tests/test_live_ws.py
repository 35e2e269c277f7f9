"""Live mode's websocket paths over real sockets: port-forward into dnsmasq, exec into kube-proxy.

The fake API server (tests/fakeapi.py, tests/fakews.py) accepts the upgrade the Kubernetes
client asks for. Port-forward relays the data channel to a real dnsmasq on 127.0.0.1, so
the CLI's default DNS check sends real DNS over TCP through a real websocket; exec runs the
real dump SCRIPT with `sh` against stub tools and streams its stdout back, so `--via
kube-proxy` parses what a shell printed. Failures (RBAC on the upgrade, a non-zero exit, a
runtime that cannot start `sh`, a dropped or hung stream, an unreachable pod port) end as
one line each, and no websocket is left open.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from fakeapi import DNSMASQ, Dnsmasq, DropConnection, FakeCluster, free_port, pod
from fakews import accept_key
from test_live_trace import assert_clean_error, node_log, populate, run

from kubectl_clusterip.cluster import debugpod
from kubectl_clusterip.cluster.api import Api
from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags, load

needs_dnsmasq = pytest.mark.skipif(not os.path.exists(DNSMASQ),
                                   reason="dnsmasq is not installed (/usr/sbin/dnsmasq)")
FQDN = "web.default.svc.cluster.local"
PF_SERVER = "10.244.1.2:53 (pod kube-system/coredns-abc via port-forward, TCP)"


@pytest.fixture
def cluster(tmp_path):
    with FakeCluster() as fc:
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        populate(fc)
        yield fc
        assert fc.streams_closed(), "a websocket was left open"


@pytest.fixture(scope="module")
def coredns():
    """dnsmasq as the cluster's CoreDNS: authoritative for cluster.local, knows `web`."""
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq is not installed (/usr/sbin/dnsmasq)")
    with Dnsmasq(["--address=/cluster.local/", f"--host-record={FQDN},10.96.0.50",
                  f"--srv-host=_http._tcp.{FQDN},{FQDN},80,0,100"]) as d:
        yield d


def forward_to(fc: FakeCluster, port: int) -> None:
    """The CoreDNS pod's port 53 is `port` on 127.0.0.1 (TCP)."""
    fc.port_forward_to = lambda pod_obj, pod_port: ("127.0.0.1", port)


def test_accept_key_is_rfc_6455s_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# -- (a) DNS through the port-forward into dnsmasq -------------------------------------------
@needs_dnsmasq
def test_dns_goes_through_the_port_forward_into_dnsmasq(cluster, coredns, tmp_path):
    forward_to(cluster, coredns.port)
    snap = tmp_path / "snap"
    r = run(cluster, tmp_path, "capture", "web", "-o", str(snap), "--node", "n2")
    assert r.exit_code == 0, r.stderr
    got = yaml.safe_load((snap / "snapshot.yaml").read_text())["dns"]
    assert got["server"] == PF_SERVER and got["error"] is None
    assert got["fqdn"] == f"{FQDN}." and got["expected"] == ["10.96.0.50"]
    assert got["answers"] == [
        {"name": f"{FQDN}.", "type": "A", "rcode": "NOERROR", "records": ["10.96.0.50"]},
        {"name": f"{FQDN}.", "type": "AAAA", "rcode": "NOERROR", "records": []},
        {"name": f"_http._tcp.{FQDN}.", "type": "SRV", "rcode": "NOERROR",
         "records": [f"0 100 80 {FQDN}."]}]  # dnsmasq's own SRV: nothing else knows it
    assert cluster.forwards == [{"pod": "kube-system/coredns-abc", "ports": [53],
                                 "protocol": "v4.channel.k8s.io"}]
    # the trace reads the same answer: JSON and the report's DNS step
    r = run(cluster, tmp_path, "trace", "web", "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dns"]["answers"][0]["records"] == ["10.96.0.50"]
    assert doc["dnsSummary"] == f"web -> {FQDN}. A 10.96.0.50 (server {PF_SERVER})"
    assert not [f for f in doc["findings"] if f["code"].startswith("Dns")]
    assert len(cluster.forwards) == 2 and cluster.pods_left() == []


@needs_dnsmasq
def test_nxdomain_through_the_port_forward_is_dns_not_resolved(cluster, tmp_path):
    with Dnsmasq(["--address=/cluster.local/"]) as empty:  # knows no service at all
        forward_to(cluster, empty.port)
        r = run(cluster, tmp_path, "trace", "web", "-o", "json")
    assert r.exit_code == 1, r.stderr
    doc = json.loads(r.stdout)
    assert [(a["name"], a["rcode"]) for a in doc["dns"]["answers"]][:3] == [
        (f"web.{s}.", "NXDOMAIN") for s in ("default.svc.cluster.local", "svc.cluster.local",
                                            "cluster.local")]
    assert doc["dns"]["server"] == PF_SERVER and doc["dns"]["fqdn"] is None
    (found,) = [f for f in doc["findings"] if f["code"] == "DnsNotResolved"]
    assert "does not resolve to an A record" in found["message"]


def test_port_forward_refused_by_rbac_is_said_and_the_trace_goes_on(cluster, tmp_path):
    """The 403 arrives as a refused websocket upgrade, not as an HTTP error of the client."""
    forward_to(cluster, 9)  # never dialled
    cluster.forbid("create", "pods/portforward", "kube-system")
    r = run(cluster, tmp_path, "trace", "web")
    assert r.exit_code == 0, r.stderr
    assert ("warning: DNS not checked: forbidden: you may not create pods/portforward in "
            "namespace kube-system; pass --dns-server IP") in r.stderr
    assert cluster.forwards == [] and "Traceback" not in r.stderr


def test_pod_port_unreachable_is_a_bounded_dns_error(cluster, tmp_path):
    """The kubelet cannot dial the pod's port: its error channel says so, the socket ends."""
    forward_to(cluster, free_port(1))  # SOCK_STREAM: nothing listens there
    t0 = time.monotonic()
    r = run(cluster, tmp_path, "trace", "web", "-o", "json")
    assert time.monotonic() - t0 < 10
    assert r.exit_code == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dns"]["answers"] == [] and doc["dns"]["error"]
    (found,) = [f for f in doc["findings"] if f["code"] == "DnsNotResolved"]
    assert f"{PF_SERVER} gave no answer for web" in found["message"]
    # the kubelet's reason, from the port's error channel, not a bare EOF
    assert "port-forward error: error forwarding port 53 to pod coredns-abc: " in found["message"]
    assert "Connection refused" in found["message"]


# -- (b) --via kube-proxy: the dump script through exec --------------------------------------
def stub_tools(fc: FakeCluster, node_name: str, bin_dir: Path) -> None:
    """The node's dump tools as stubs printing what kube-proxy's node would print; `sh`,
    `cat` and `head` are real, every other tool is missing."""
    bin_dir.mkdir()
    out = debugpod.parse_log(node_log(fc, {"spec": {"nodeName": node_name}})).output
    for tool, section in (("iptables-nft-save", "iptables-nft-save"),
                          ("curl", "proxy-mode")):
        (bin_dir / f"{tool}.out").write_text(out[section])
        (bin_dir / tool).write_text(f"#!/bin/sh\ncat '{bin_dir}/{tool}.out'\n")
    # curl answers the proxy mode only; nothing listens on the other ports (exit 7)
    (bin_dir / "curl").write_text(f"#!/bin/sh\ncase \"$*\" in\n  *10249/proxyMode*) "
                                  f"cat '{bin_dir}/curl.out' ;;\n  *) exit 7 ;;\nesac\n")
    (bin_dir / "iptables-legacy-save").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "addr.json").write_text(out["ip-addr.json"])
    (bin_dir / "route.json").write_text(out["ip-route.json"])
    (bin_dir / "ip").write_text(f"#!/bin/sh\ncase \"$*\" in\n  *-6*) echo '[]' ;;\n"
                                f"  *addr*) cat '{bin_dir}/addr.json' ;;\n"
                                f"  *route*) cat '{bin_dir}/route.json' ;;\nesac\n")
    for tool in ("iptables-nft-save", "curl", "iptables-legacy-save", "ip"):
        (bin_dir / tool).chmod(0o755)
    for tool in ("sh", "cat", "head"):
        (bin_dir / tool).symlink_to(subprocess.run(["sh", "-c", f"command -v {tool}"],
                                                   capture_output=True, text=True,
                                                   check=True).stdout.strip())


def run_in_kube_proxy(fc: FakeCluster, tmp_path: Path):
    """exec_for: the command as kube-proxy's container would run it, with the stub tools."""
    def run_command(pod_obj: dict, command: list[str]) -> tuple[int, str, str]:
        bin_dir = tmp_path / pod_obj["spec"]["nodeName"]
        if not bin_dir.exists():
            stub_tools(fc, pod_obj["spec"]["nodeName"], bin_dir)
        p = subprocess.run(command, capture_output=True, text=True, timeout=10,
                           env={"PATH": str(bin_dir), "TMPDIR": str(tmp_path)})
        return p.returncode, p.stdout, p.stderr + "sh: a warning on stderr\n"
    return run_command


def test_via_kube_proxy_runs_the_real_script_through_exec(cluster, tmp_path):
    cluster.exec_for = run_in_kube_proxy(cluster, tmp_path)
    snap = tmp_path / "snap"
    r = run(cluster, tmp_path, "capture", "web", "-o", str(snap), "--via", "kube-proxy")
    assert r.exit_code == 0, r.stderr
    (ex,) = cluster.execs
    assert ex["pod"] == "kube-system/kube-proxy-n2" and ex["container"] == "c"
    assert ex["command"][:2] == ["sh", "-c"] and "MODE='iptables'" in ex["command"][2]
    assert ex["protocol"] == "v5.channel.k8s.io"
    assert cluster.created == []  # no debug pod
    meta = yaml.safe_load((snap / "snapshot.yaml").read_text())
    assert meta["nodeDump"]["via"] == "kube-proxy" and meta["nodeDump"]["iptablesBackend"] == "nft"
    assert sorted(p.name for p in (snap / "nodes" / "n2").iterdir()) == [
        "ip-addr.json", "ip-route.json", "iptables-save.txt", "proxy-mode"]
    # the trace through exec is the trace through a debug pod
    via_exec = run(cluster, tmp_path, "trace", "web", "--via", "kube-proxy", "-o", "json")
    via_pod = run(cluster, tmp_path, "trace", "web", "-o", "json")
    assert via_exec.exit_code == via_pod.exit_code == 0, via_exec.stderr
    exec_doc, pod_doc = json.loads(via_exec.stdout), json.loads(via_pod.stdout)
    assert [(c["ip"], c["probability"]) for c in exec_doc["dnat"]] == [
        ("10.244.1.5", 0.5), ("10.244.1.6", 0.5)]
    assert exec_doc == pod_doc


def test_exec_returns_stdout_alone(cluster, tmp_path):
    """Stderr arrives on its own channel and stays out of the log the sections are read from."""
    cluster.exec_for = lambda pod_obj, command: (0, "the log\n", "noise\n")
    api = Api(load(ConnectionFlags(kubeconfig=str(tmp_path / "kubeconfig"))))
    proxy = cluster.objects[("pods", "kube-system", "kube-proxy-n1")]
    assert debugpod.exec_script(api, proxy, "iptables", "") == "the log\n"


def _no_shell(pod_obj: dict, command: list[str]) -> tuple[int, str, str]:
    raise RuntimeError('failed to exec in container: OCI runtime exec failed: exec failed: '
                       'unable to start container process: exec: "sh": executable file not '
                       'found in $PATH: unknown')


@pytest.mark.parametrize("case,text", [
    ("exit", "exec into kube-system/kube-proxy-n2 failed: the script exited with code 2 "
             "(sh: 1: iptables-save: Permission denied); omit --via to use a debug pod"),
    ("no-shell", 'exec into kube-system/kube-proxy-n2 failed: Internal error occurred: error '
                 'executing command in container: failed to exec in container'),
    ("forbidden", "forbidden: you may not create pods/exec in namespace kube-system (RBAC)"),
])
def test_exec_failure_is_one_line(cluster, tmp_path, case, text):
    cluster.exec_for = {
        "exit": lambda pod_obj, command: (2, "", "sh: 1: iptables-save: Permission denied\n"),
        "no-shell": _no_shell, "forbidden": _no_shell}[case]
    if case == "forbidden":
        cluster.forbid("create", "pods/exec", "kube-system")
    r = run(cluster, tmp_path, "trace", "web", "--via", "kube-proxy")
    assert_clean_error(r, cluster, text)
    assert cluster.created == [] and len(cluster.execs) == (case != "forbidden")


def test_exec_connection_lost_mid_stream_is_one_line(cluster, tmp_path):
    def dies(pod_obj: dict, command: list[str]) -> tuple[int, str, str]:
        raise DropConnection("==== kubectl-clusterip BEGIN proxy-mode ====\n")
    cluster.exec_for = dies
    r = run(cluster, tmp_path, "trace", "web", "--via", "kube-proxy")
    assert_clean_error(r, cluster, "exec into kube-system/kube-proxy-n2 failed: Connection to "
                       "remote host was lost.; omit --via to use a debug pod")


def test_exec_that_never_ends_times_out(cluster, tmp_path):
    """A script that hangs: bounded by --request-timeout, the stream closed, one line."""
    release = threading.Event()

    def hangs(pod_obj: dict, command: list[str]) -> tuple[int, str, str]:
        release.wait(10)
        return 0, "", ""
    cluster.exec_for = hangs
    t0 = time.monotonic()
    try:
        r = run(cluster, tmp_path, "trace", "web", "--via", "kube-proxy", "--request-timeout",
                "1s")
    finally:
        release.set()
    assert time.monotonic() - t0 < 5
    assert_clean_error(r, cluster, "exec into kube-system/kube-proxy-n2 still running after 1s")


def test_exec_into_a_missing_pod_is_not_found(cluster, tmp_path):
    cluster.exec_for = lambda pod_obj, command: (0, "", "")
    api = Api(load(ConnectionFlags(kubeconfig=str(tmp_path / "kubeconfig"))))
    gone = pod("kube-proxy-gone", "kube-system", "172.18.0.9", "n9")
    with pytest.raises(Exception, match='pods "kube-proxy-gone" not found'):
        debugpod.exec_script(api, gone, "", "")
