"""A bridge CNI on the real kernel: same-node pod -> ClusterIP -> pod works only when
br_netfilter shows the bridged reply to conntrack (net.bridge.bridge-nf-call-iptables=1);
the finding, made from what the debug pod's script read off the node, must say so exactly
when the kernel fails. (Its own module: netlab allows one Lab per process at a time.)

br_netfilter here: /proc/sys/net/bridge exists in every new network namespace (the module
is built in or loaded), and its sysctls are per namespace (Linux >= 5.3).
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netlab import Lab, kernel_lab, tally
from test_kernel_forwarding import CIP, cluster_objects, errors, load_kube_proxy, snapshot_of, trace

BR_NETFILTER = "/proc/sys/net/bridge/bridge-nf-call-iptables"
pytestmark = [pytest.mark.kernel,
              kernel_lab("iptables-nft-restore", "iptables-nft-save", "conntrack", "curl"),
              pytest.mark.skipif(not os.path.exists(BR_NETFILTER),
                                 reason=f"br_netfilter is not loaded ({BR_NETFILTER} missing) "
                                 "and cannot be loaded from here")]


def test_bridge_nf_call_iptables_decides_same_node_service_traffic() -> None:
    with Lab(nodes=1, ipv6=False) as lab:
        lab.add_bridge_pod("client", "10.244.1.20")
        lab.add_bridge_pod("web-1", "10.244.1.5")
        lab.serve("web-1", 8080, "tcp", lifetime=60)
        objs = cluster_objects([("10.244.1.5", "node", "web-1")], 1)
        load_kube_proxy(lab, objs, ["node"])
        assert tally(lab.request("client", "10.244.1.5", 8080)) == {"web-1": 1}  # L2 path

        lab.sysctl("node", {"net.bridge.bridge-nf-call-iptables": "0"})
        t = trace(snapshot_of(lab, objs))
        f = next(f for f in t.findings if f.code == "BridgeNfCallIptablesOff")
        assert f.message.startswith("net.bridge.bridge-nf-call-iptables = 0 on node node")
        assert "bridge cni0 (10.244.1.0/24)" in f.message
        replies = lab.request("client", CIP, 80, count=3, timeout=0.5)
        assert all(not r.ok for r in replies), replies  # the un-NATed reply is refused

        lab.conntrack_flush()
        lab.sysctl("node", {"net.bridge.bridge-nf-call-iptables": "1"})
        t = trace(snapshot_of(lab, objs))
        assert errors(t) == []
        assert tally(lab.request("client", CIP, 80, count=3)) == {"web-1": 3}
