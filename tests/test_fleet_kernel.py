"""The fleet view against the real kernel: three namespace-built nodes, one with stale rules.

Each node's "debug pod" log is the real dump script (debugpod.SCRIPT) run inside that
node's namespace, whose iptables hold what kube-proxy wrote there; the stale node still has
the rules of an endpoint the API has dropped. `trace --all-nodes` must name that node only.
The kernel confirms it: from a pod on the stale node some requests go to the gone endpoint.
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

TOOLS = ("iptables-nft-restore", "iptables-nft-save", "iptables-legacy-save", "curl")
PORTS = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]


@pytest.mark.kernel
@kernel_lab(*TOOLS)
def test_fleet_names_the_stale_node_from_the_kernels_dumps(tmp_path: Path) -> None:
    svc = service("web", "default", "10.96.0.50", PORTS, {"app": "web"})
    eps = [("10.244.1.6", "node", "b"), ("10.244.2.6", "node2", "c")]
    now = endpoint_slice("web", "default", SLICE_PORTS, eps)
    before = endpoint_slice("web", "default", SLICE_PORTS, [*eps, ("10.244.1.9", "node", "gone")])
    config = ProxyConfig(cluster_cidrs=["10.244.0.0/16"])
    with Lab(nodes=3, ipv6=False) as lab, FakeCluster() as fc:
        api_nodes = {}
        for name, n in lab.nodes.items():
            api_nodes[name] = fc.add(node(name, n.ip, pod_cidr=n.pod_cidr))
            rules = expected_rules([svc], [before if name == "node3" else now],
                                   api_nodes[name], config)
            lab.load_iptables(rules, backend="nft", node=name)
        lab.add_pod("b", "10.244.1.6", node="node")
        lab.add_pod("c", "10.244.2.6", node="node2")
        lab.add_pod("a", "10.244.3.5", node="node3")
        lab.serve("b", 8080)
        lab.serve("c", 8080)
        # the kernel: from the stale node some connections go to the endpoint that is gone
        seen = tally(lab.request("a", "10.96.0.50", 80, count=24, timeout=0.5))
        assert {"b", "c"} <= set(seen) and set(seen) - {"b", "c"}, seen

        for obj in (svc, now, pod("b", "default", "10.244.1.6", "node", {"app": "web"}),
                    pod("c", "default", "10.244.2.6", "node2", {"app": "web"})):
            fc.add(obj)
        fc.log_for = lambda created: lab.run(
            created["spec"]["nodeName"], "sh", "-c", f"MODE=iptables CT_ARGS=''\n{SCRIPT}",
            timeout=60)
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        r = CliRunner().invoke(main, ["trace", "web", "--all-nodes", "-o", "json"],
                               env={"KUBECONFIG": str(tmp_path / "kubeconfig")})
    assert r.exit_code == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    rows = {i["node"]: i for i in doc["items"]}
    assert {n: row["verdict"] for n, row in rows.items()} == {
        "node": "ok", "node2": "ok", "node3": "broken"}
    assert [f["code"] for f in rows["node3"]["drift"]] == ["StaleEndpointRules"]
    assert "10.244.1.9:8080" in rows["node3"]["endpoints"]["ports"][0]["programmed"]
    assert doc["summary"] == "1 of 3 nodes differ: node3 (StaleEndpointRules)"
    assert fc.pods_left() == []
