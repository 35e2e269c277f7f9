"""Regenerate the IPVS-mode test dumps in this directory (run as root: `python generate.py`).

What is real and what is printed by us:

* `ipset-save.txt`, `ipset-list.txt`, `iptables-save.txt`, `ip6tables-save.txt`: the sets and
  rules are loaded into a throwaway network namespace with the real `ipset` (v7.x) and
  `iptables-restore` / `ip6tables-restore`, and read back with `ipset save`, `ipset list`,
  `iptables-save` and `ip6tables-save`. The rules are kube-proxy's IPVS-mode rules
  (pkg/proxy/ipvs/proxier.go `writeIptablesRules`, `createAndLinkKubeChain`, ≈v1.33), the
  sets are kube-proxy's (`ipsetInfo`, created as pkg/util/ipset `createSet` does).
* `ipvsadm-save.txt` (`ipvsadm-save -n`, i.e. `ipvsadm -S -n`) and `ipvsadm-Ln.txt`
  (`ipvsadm -Ln`): this machine's kernel has no IPVS, so these are printed here with the
  printf formats of ipvsadm 1.31 (`print_title`, `print_service_entry`: service
  "%s  %s" + scheduler, `persistent %u`, scheduler flags in parentheses / `-b`; real servers
  "  -> %-28s %-7s %-6d %-10u %-10u"; save lines `-A -t|-u|--sctp-service ADDR -s SCHED
  [-p N] [-b FLAGS]` and `-a … -r ADDR -m|-g|-i -w N`; IPv6 as `[addr]:port`; services
  sorted by protocol, family, address, port; real servers by address, port).

The scenario is one worker node (172.18.0.2, pod CIDR 10.244.1.0/24, cluster CIDR
10.244.0.0/16 and fd00:10:244::/56) with kube-proxy in IPVS mode, scheduler rr.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
PROTO_NUM = {"TCP": 6, "UDP": 17, "SCTP": 132}
SAVE_FLAG = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
FWD = {"Masq": "-m", "Route": "-g", "Local": "-g", "Tunnel": "-i"}

# (protocol, vip, port, scheduler, persistent timeout, scheduler flags,
#  [(rs ip, rs port, forward, weight, active, inactive)])
IPVS = [
    ("TCP", "10.96.0.1", 443, "rr", None, "", [("172.18.0.10", 6443, "Masq", 1, 3, 0)]),
    ("TCP", "10.96.0.10", 53, "rr", None, "",
     [("10.244.1.3", 53, "Masq", 1, 0, 0), ("10.244.2.4", 53, "Masq", 1, 0, 0)]),
    ("TCP", "10.96.0.10", 9153, "rr", None, "",
     [("10.244.1.3", 9153, "Masq", 1, 0, 0), ("10.244.2.4", 9153, "Masq", 1, 0, 0)]),
    ("TCP", "10.96.33.3", 8080, "rr", 10800, "",
     [("10.244.2.8", 8080, "Masq", 1, 1, 2), ("10.244.3.2", 8080, "Masq", 1, 0, 1)]),
    ("TCP", "10.96.55.5", 8080, "rr", None, "", []),
    ("TCP", "10.96.120.7", 80, "rr", None, "",
     [("10.244.1.5", 8080, "Masq", 1, 2, 14), ("10.244.2.7", 8080, "Masq", 1, 1, 12),
      ("10.244.3.9", 8080, "Masq", 0, 1, 3)]),
    ("TCP", "172.18.0.2", 30080, "rr", None, "",
     [("10.244.1.5", 8080, "Masq", 1, 0, 0), ("10.244.2.7", 8080, "Masq", 1, 0, 0),
      ("10.244.3.9", 8080, "Masq", 0, 0, 0)]),
    ("TCP", "fd00:10:96::a", 53, "rr", None, "",
     [("fd00:10:244:1::3", 53, "Masq", 1, 0, 0), ("fd00:10:244:2::4", 53, "Masq", 1, 0, 0)]),
    ("UDP", "10.96.0.10", 53, "rr", None, "",
     [("10.244.1.3", 53, "Masq", 1, 0, 0), ("10.244.2.4", 53, "Masq", 1, 0, 0)]),
    ("UDP", "fd00:10:96::a", 53, "rr", None, "",
     [("fd00:10:244:1::3", 53, "Masq", 1, 0, 0), ("fd00:10:244:2::4", 53, "Masq", 1, 0, 0)]),
    ("SCTP", "10.96.44.4", 9999, "rr", None, "", [("10.244.2.11", 9999, "Masq", 1, 0, 0)]),
]

# Not kube-proxy's (it always writes weight 1 and one scheduler): other schedulers and
# weights an operator or another tool may have set, to exercise the predictor.
IPVS_OTHER = [
    ("TCP", "10.96.77.7", 80, "wrr", None, "",
     [("10.244.1.31", 80, "Masq", 1, 0, 0), ("10.244.2.32", 80, "Masq", 2, 0, 0),
      ("10.244.3.33", 80, "Masq", 3, 0, 0)]),
    ("TCP", "10.96.78.8", 80, "lc", None, "",
     [("10.244.1.41", 80, "Masq", 1, 7, 0), ("10.244.2.42", 80, "Masq", 1, 2, 0)]),
    ("TCP", "10.96.79.9", 80, "mh", None, "mh-port",
     [("10.244.1.51", 80, "Masq", 1, 0, 0), ("10.244.2.52", 80, "Masq", 1, 0, 0)]),
    ("TCP", "10.96.80.10", 80, "wrr", None, "",
     [("10.244.2.61", 80, "Masq", 0, 4, 0), ("172.18.0.2", 8080, "Local", 0, 0, 0)]),
]


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _order(table):
    def key(vs):
        af = 10 if ":" in vs[1] else 2
        return (PROTO_NUM[vs[0]], af, ipaddress.ip_address(vs[1]).packed, vs[2])
    return sorted(table, key=key)


def ipvsadm_save(table) -> str:
    out = []
    for proto, vip, port, sched, timeout, flags, rss in _order(table):
        svc = f"{SAVE_FLAG[proto]} {_addr(vip, port)}"
        line = f"-A {svc} -s {sched}"
        if timeout is not None:
            line += f" -p {timeout}"
        if flags:
            line += f" -b {flags}"
        out.append(line)
        for ip, rport, fwd, weight, _a, _i in sorted(
                rss, key=lambda r: (ipaddress.ip_address(r[0]).packed, r[1])):
            out.append(f"-a {svc} -r {_addr(ip, rport)} {FWD[fwd]} -w {weight}")
    return "\n".join(out) + "\n"


def ipvsadm_list(table) -> str:
    out = ["IP Virtual Server version 1.2.1 (size=4096)",
           "Prot LocalAddress:Port Scheduler Flags",
           "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for proto, vip, port, sched, timeout, flags, rss in _order(table):
        name = f"{proto}  {_addr(vip, port)}"
        if ":" not in vip:
            name = name[:33]
        line = f"{name} {sched}"
        if flags:
            line += f" ({flags})"
        if timeout is not None:
            line += f" persistent {timeout}"
        out.append(line)
        for ip, rport, fwd, weight, active, inact in sorted(
                rss, key=lambda r: (ipaddress.ip_address(r[0]).packed, r[1])):
            d = _addr(ip, rport)
            if ":" not in ip:
                d = d[:28]
            # ipvsadm's "  -> %-28s %-7s %-6d %-10u %-10u"
            out.append(f"  -> {d:<28} {fwd:<7} {weight:<6} {active:<10} {inact:<10}")
    return "\n".join(out) + "\n"


# -- ipsets (as kube-proxy's syncProxyRules fills them for the table above) -----------------

SETS_V4 = [  # (name, type, members)
    ("KUBE-LOOP-BACK", "hash:ip,port,ip", [
        "10.244.1.3,tcp:53,10.244.1.3", "10.244.1.3,udp:53,10.244.1.3",
        "10.244.1.3,tcp:9153,10.244.1.3", "10.244.1.5,tcp:8080,10.244.1.5"]),
    ("KUBE-CLUSTER-IP", "hash:ip,port", [
        "10.96.0.1,tcp:443", "10.96.0.10,tcp:53", "10.96.0.10,udp:53", "10.96.0.10,tcp:9153",
        "10.96.33.3,tcp:8080", "10.96.55.5,tcp:8080", "10.96.120.7,tcp:80",
        "10.96.44.4,sctp:9999"]),
    ("KUBE-EXTERNAL-IP", "hash:ip,port", []),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip", []),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net", []),
    ("KUBE-NODE-PORT-TCP", "bitmap:port", ["30080"]),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", []),
    ("KUBE-NODE-PORT-UDP", "bitmap:port", []),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", []),
    ("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port", []),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port", []),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", []),
    ("KUBE-IPVS-IPS", "hash:ip", [
        "10.96.0.1", "10.96.0.10", "10.96.33.3", "10.96.55.5", "10.96.120.7", "10.96.44.4"]),
]
SETS_V6 = [
    ("KUBE-6-LOOP-BACK", "hash:ip,port,ip", [
        "fd00:10:244:1::3,tcp:53,fd00:10:244:1::3", "fd00:10:244:1::3,udp:53,fd00:10:244:1::3"]),
    ("KUBE-6-CLUSTER-IP", "hash:ip,port", ["fd00:10:96::a,tcp:53", "fd00:10:96::a,udp:53"]),
    ("KUBE-6-EXTERNAL-IP", "hash:ip,port", []),
    ("KUBE-6-EXTERNAL-IP-LOCAL", "hash:ip,port", []),
    ("KUBE-6-LOAD-BALANCER", "hash:ip,port", []),
    ("KUBE-6-NODE-PORT-TCP", "bitmap:port", []),
    ("KUBE-6-NODE-PORT-UDP", "bitmap:port", []),
    ("KUBE-6-HEALTH-CHECK-NODE-PORT", "bitmap:port", []),
    ("KUBE-6-IPVS-IPS", "hash:ip", ["fd00:10:96::a"]),
]


def _ipset_script() -> str:
    lines = []
    for sets, family in ((SETS_V4, "inet"), (SETS_V6, "inet6")):
        for name, typ, members in sets:
            if typ.startswith("bitmap:port"):
                lines.append(f"create {name} {typ} range 0-65535")
            else:
                lines.append(f"create {name} {typ} family {family} hashsize 1024 maxelem 65536")
            lines.extend(f"add {name} {m}" for m in members)
    return "\n".join(lines) + "\n"


# -- iptables (kube-proxy IPVS mode, plus kubelet's canaries) -----------------------------

def _iptables(v6: bool) -> str:
    p = "KUBE-6-" if v6 else "KUBE-"
    lo, cidr = ("::1/128", "fd00:10:244::/56") if v6 else ("127.0.0.0/8", "10.244.0.0/16")
    node_port_sets = "" if v6 else f"""\
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade \
purpose" -m set --match-set {p}NODE-PORT-TCP dst -j KUBE-MARK-MASQ
"""
    return f"""\
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -s {lo} -j RETURN
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for \
solving hairpin purpose" -m set --match-set {p}LOOP-BACK dst,dst,src -j MASQUERADE
{node_port_sets}\
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade \
purpose" -m set --match-set {p}CLUSTER-IP dst,dst ! -s {cidr} -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set {p}CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" \
-j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
COMMIT
*filter
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark \
--mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack \
--ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set \
--match-set {p}HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set {p}LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set {p}CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set {p}EXTERNAL-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set {p}EXTERNAL-IP-LOCAL dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set {p}HEALTH-CHECK-NODE-PORT dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {p}IPVS-IPS dst -j REJECT
COMMIT
"""


def _in_netns(script: str, stdin: str = "") -> str:
    return subprocess.run(["unshare", "-n", "bash", "-euc", script], input=stdin, text=True,
                          capture_output=True, check=True).stdout


def _strip_dates(text: str) -> str:
    """iptables-save stamps its header and footer with the time; keep the rest exact."""
    return "".join(line.split(" on ")[0] + "\n" if line.startswith("# ") else line + "\n"
                   for line in text.splitlines())


def main() -> int:
    (HERE / "ipvsadm-save.txt").write_text(ipvsadm_save(IPVS))
    (HERE / "ipvsadm-Ln.txt").write_text(ipvsadm_list(IPVS))
    (HERE / "ipvsadm-other-save.txt").write_text(ipvsadm_save(IPVS_OTHER))
    (HERE / "ipvsadm-other-Ln.txt").write_text(ipvsadm_list(IPVS_OTHER))
    sep = "=====CUT====="
    v4, v6 = _iptables(False), _iptables(True)
    out = _in_netns(
        f"ipset restore\n"
        f"printf %s {_sh(v4)} | iptables-restore\n"
        f"printf %s {_sh(v6)} | ip6tables-restore\n"
        f"ipset save; echo {sep}; ipset list; echo {sep}; iptables-save; echo {sep}; "
        f"ip6tables-save\n", _ipset_script())
    save, listing, ipt4, ipt6 = out.split(sep + "\n")
    (HERE / "ipset-save.txt").write_text(_fixed_initval(save))
    (HERE / "ipset-list.txt").write_text(_fixed_initval(listing))
    (HERE / "iptables-save.txt").write_text(_strip_dates(ipt4))
    (HERE / "ip6tables-save.txt").write_text(_strip_dates(ipt6))
    return 0


def _fixed_initval(text: str) -> str:
    """`initval` is a random hash seed per set; fix it so regenerating gives the same file."""
    import re
    return re.sub(r"initval 0x[0-9a-f]+", "initval 0x5ee0b1d5", text)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    sys.exit(main())
