"""The node's conntrack table: entries that keep sending to an endpoint the API dropped."""

from __future__ import annotations

import re

from kubectl_clusterip.diagnose.cluster import Cluster, listed, same_ip
from kubectl_clusterip.endpoints import EndpointInfo, canonical_ip
from kubectl_clusterip.findings import finding
from kubectl_clusterip.model import Finding, Trace

# -- conntrack ------------------------------------------------------------------------------------

_TUPLE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def parse_conntrack(text: str) -> list[dict]:
    """`conntrack -L` lines: protocol, original and reply tuples, and the line itself."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        tuples = _TUPLE.findall(line)
        if len(parts) < 2 or len(tuples) < 2:
            continue
        out.append({"proto": parts[0], "orig": tuples[0], "reply": tuples[1],
                    "line": line.strip()})
    return out


def stale_conntrack(cl: Cluster, trace: Trace, api_eps: list[EndpointInfo]) -> Finding | None:
    """UDP entries to the ClusterIP whose endpoint the API no longer has: until they expire,
    clients reusing those source ports keep sending to a dead address (kube-proxy should
    have deleted them when the endpoint went away)."""
    p = trace.packet
    text = cl.snap.nodes[cl.node].files.get("conntrack.txt", "") if cl.node in cl.snap.nodes \
        else ""
    if p.protocol != "udp" or not text:
        return None
    live = {canonical_ip(e.ip) for e in api_eps}
    stale = [e for e in parse_conntrack(text)
             if e["proto"] == "udp" and same_ip(e["orig"][1], p.dst_ip)
             and int(e["orig"][3]) == p.dst_port and canonical_ip(e["reply"][0]) not in live]
    if not stale:
        return None
    dead = sorted({e["reply"][0] for e in stale})
    not_nat = [ip for ip in dead if same_ip(ip, p.dst_ip)]
    msg = (f"{len(stale)} UDP conntrack entr{'y' if len(stale) == 1 else 'ies'} for "
           f"{p.dst_ip}:{p.dst_port} still send traffic to {listed(dead)}, "
           + ("not NATed (made while the Service had no endpoint)" if not_nat and
              len(dead) == 1 else "no longer an endpoint")
           + ": clients reusing those source ports get no answer until the entries expire")
    hint = (f"on node {cl.node}: conntrack -D -p udp --orig-dst {p.dst_ip} "
            f"--orig-port-dst {p.dst_port} --reply-src {dead[0]}")
    return finding("StaleConntrack", msg, stale[0]["line"], hint)
