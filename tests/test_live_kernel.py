"""Live mode against the real kernel: the debug pod's script runs in a namespace-built node.

The fake API server serves the objects; the "debug pod" log is the real output of the dump
script (debugpod.SCRIPT) run inside the netlab node, whose iptables hold the rules
kube-proxy would write. The live trace's prediction is then checked against what the kernel
does with real requests: the endpoints that answer, and the conntrack entry it leaves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeapi import FakeCluster, endpoint_slice, node, pod, service
from netlab import Lab, kernel_lab, tally

from kubectl_clusterip.cli import main
from kubectl_clusterip.cluster.debugpod import SCRIPT
from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules
from kubectl_clusterip.nodefacts import node_facts

TOOLS = ("iptables-nft-restore", "iptables-nft-save", "iptables-legacy-save", "conntrack",
         "curl")


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_live_trace_matches_the_kernel(tmp_path: Path) -> None:
    svc = service("web", "default", "10.96.0.50",
                  [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                  {"app": "web"})
    eps = endpoint_slice("web", "default", [{"name": "http", "port": 8080, "protocol": "TCP"}],
                         [("10.244.1.6", "node", "b"), ("10.244.1.7", "node", "c")])
    the_node = node("node", "172.18.0.2")
    with Lab() as lab, FakeCluster() as fc:
        lab.add_pod("a", "10.244.1.5")
        lab.add_pod("b", "10.244.1.6")
        lab.add_pod("c", "10.244.1.7")
        lab.serve("b", 8080)
        lab.serve("c", 8080)
        lab.load_iptables(expected_rules([svc], [eps], the_node,
                                         ProxyConfig(cluster_cidrs=["10.244.0.0/16"])),
                          backend="nft")
        replies = lab.request("a", "10.96.0.50", 80, count=30)
        assert set(tally(replies)) == {"b", "c"}  # the kernel's answer

        for obj in (svc, eps, the_node, pod("a", "default", "10.244.1.5", "node"),
                    pod("b", "default", "10.244.1.6", "node", {"app": "web"}),
                    pod("c", "default", "10.244.1.7", "node", {"app": "web"}),
                    pod("coredns-1", "kube-system", "10.244.1.2", "node",
                        {"k8s-app": "kube-dns"})):
            fc.add(obj)
        fc.log_for = lambda created: lab.run(
            "node", "sh", "-c", f"MODE=iptables CT_ARGS='-d 10.96.0.50'\n{SCRIPT}",
            timeout=60)
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        r = CliRunner().invoke(main, ["trace", "web", "--from", "a", "--conntrack", "-o",
                                      "json"], env={"KUBECONFIG": str(tmp_path / "kubeconfig")})
        cap = CliRunner().invoke(main, ["capture", "web", "--from", "a", "--conntrack", "-o",
                                        str(tmp_path / "snap")],
                                 env={"KUBECONFIG": str(tmp_path / "kubeconfig")})
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "dnat"
    assert {c["ip"] for c in doc["dnat"]} == {"10.244.1.6", "10.244.1.7"}
    assert doc["request"]["source"]["ip"] == "10.244.1.5"
    assert fc.pods_left() == []
    files = sorted(p.name for p in (tmp_path / "snap" / "nodes" / "node").iterdir())
    assert files == ["conntrack-stats.txt", "conntrack.txt", "ip-addr.json", "ip-route.json",
                     "iptables-save.txt", "sysctl.txt"]
    # the node facts as this kernel printed them parse, and say what the lab set
    facts = node_facts({f: (tmp_path / "snap" / "nodes" / "node" / f).read_text()
                        for f in ("sysctl.txt", "conntrack-stats.txt")})
    assert facts.sysctl_int("net.ipv4.ip_forward") == 1
    assert facts.sysctl_int("net.netfilter.nf_conntrack_max") > 0
    assert facts.sysctl_int("net.ipv4.conf.all.rp_filter") == 0
    assert facts.cpus >= 1 and "insert_failed" in facts.conntrack_stats
    ct = (tmp_path / "snap" / "nodes" / "node" / "conntrack.txt").read_text()
    assert "dst=10.96.0.50" in ct and ("src=10.244.1.6" in ct or "src=10.244.1.7" in ct)
    assert cap.exit_code == 0, cap.stderr
