"""Regenerate the dual-stack iptables-mode dumps here (run as root: `python generate.py`).

kube-proxy's restore input for each family comes from `iptables.expected.expected_rules`
(kube-proxy's chain hashing: the same KUBE-SVC names in both families, KUBE-SEP names
hashed over `ip:port` / `[v6]:port`), is loaded into a throwaway network namespace with
the real `iptables-restore` / `ip6tables-restore`, and read back with `iptables-save` /
`ip6tables-save`, so the files are exactly what the tools print (/128 masks and all).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.iptables.expected import expected_rules

HERE = Path(__file__).parent
CFG = ProxyConfig(cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"])
NODE = {"metadata": {"name": "worker-1", "labels": {}},
        "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                 {"type": "InternalIP", "address": "fd00:172:18::2"}]}}


def service(ns, name, ips, ports, policy="PreferDualStack"):
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ipFamilyPolicy": policy,
                     "ports": ports}}


def eps(ns, svc, family, ips, nodes, ports):
    return {"metadata": {"namespace": ns, "name": f"{svc}-v{family}",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": f"IPv{family}",
            "endpoints": [{"addresses": [ip], "nodeName": n,
                           "conditions": {"ready": True, "serving": True, "terminating": False}}
                          for ip, n in zip(ips, nodes)],
            "ports": ports}


DNS_PORTS = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]
DNS_EP_PORTS = [{"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
WEB_PORTS = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
WEB_EP_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]

SERVICES = [
    service("kube-system", "kube-dns", ["10.96.0.10", "fd00:10:96::a"], DNS_PORTS),
    service("shop", "web", ["10.96.120.7", "fd00:10:96::7:7"], WEB_PORTS),
    service("shop", "v6only", ["fd00:10:96::77"], WEB_PORTS, "SingleStack"),
]
SLICES = [
    eps("kube-system", "kube-dns", 4, ["10.244.1.3", "10.244.2.4"], ["worker-1", "worker-2"],
        DNS_EP_PORTS),
    eps("kube-system", "kube-dns", 6, ["fd00:10:244:1::3", "fd00:10:244:2::4"],
        ["worker-1", "worker-2"], DNS_EP_PORTS),
    eps("shop", "web", 4, ["10.244.1.5", "10.244.2.7"], ["worker-1", "worker-2"], WEB_EP_PORTS),
    eps("shop", "web", 6, ["fd00:10:244:1::5", "fd00:10:244:2::7"], ["worker-1", "worker-2"],
        WEB_EP_PORTS),
    eps("shop", "v6only", 6, ["fd00:10:244:3::9"], ["worker-3"], WEB_EP_PORTS),
]


def main() -> int:
    v4 = expected_rules(SERVICES, SLICES, NODE, CFG, family=4)
    v6 = expected_rules(SERVICES, SLICES, NODE, CFG, family=6)
    sep = "=====CUT====="
    out = subprocess.run(
        ["unshare", "-n", "bash", "-euc",
         f"printf %s {_sh(v4)} | iptables-restore; printf %s {_sh(v6)} | ip6tables-restore; "
         f"iptables-save; echo {sep}; ip6tables-save"],
        text=True, capture_output=True, check=True).stdout
    a, b = out.split(sep + "\n")
    (HERE / "iptables-save.txt").write_text(_strip_dates(a))
    (HERE / "ip6tables-save.txt").write_text(_strip_dates(b))
    return 0


def _strip_dates(text: str) -> str:
    return "".join(line.split(" on ")[0] + "\n" if line.startswith("# ") else line + "\n"
                   for line in text.splitlines())


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    sys.exit(main())
