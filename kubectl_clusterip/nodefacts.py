"""The node's own state, parsed at the boundary from what the debug pod printed.

    sysctl.txt               grep -H "" /proc/sys/net/... : conntrack fill, forwarding,
                             bridge-nf-call-*, rp_filter per interface
    conntrack-stats.txt      conntrack -S: per-CPU counters (drop, early_drop, insert_failed)
    kube-proxy-healthz.json  curl 127.0.0.1:10256/healthz: {"lastUpdated", "currentTime"}
    kube-proxy-metrics.txt   kube-proxy's /metrics, its kubeproxy_sync_* lines

Every parser takes the raw text and returns plain data, or raises ClusterIPError naming the
file and the bad line; judging is in diagnose/node.py.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field

from kubectl_clusterip.model import ClusterIPError

SYSCTL_PATHS = ("/proc/sys/net/netfilter/nf_conntrack_count",
                "/proc/sys/net/netfilter/nf_conntrack_max",
                "/proc/sys/net/ipv4/ip_forward",
                "/proc/sys/net/ipv6/conf/all/forwarding",
                "/proc/sys/net/bridge/bridge-nf-call-iptables",
                "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
                "/proc/sys/net/ipv4/conf/*/rp_filter")
CONNTRACK_COUNTERS = ("drop", "early_drop", "insert_failed")


@dataclass
class NodeFacts:
    sysctls: dict[str, str] = field(default_factory=dict)  # net.ipv4.ip_forward -> "1"
    conntrack_stats: dict[str, int] = field(default_factory=dict)  # summed over CPUs
    cpus: int = 0
    healthz: dict | None = None  # lastUpdated, currentTime (datetime), nodeEligible
    metrics: dict[str, float] = field(default_factory=dict)

    def sysctl_int(self, key: str) -> int | None:
        v = self.sysctls.get(key)
        return int(v) if v is not None and v.lstrip("-").isdigit() else None


def parse_sysctls(text: str, where: str = "sysctl.txt") -> dict[str, str]:
    """`grep -H "" FILE...` lines (`/proc/sys/net/ipv4/ip_forward:1`) as dotted keys."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        path, sep, value = line.partition(":")
        if not sep or not path.startswith("/proc/sys/"):
            raise ClusterIPError(f"{where}:{n}: not a `grep -H` line of /proc/sys: {line[:80]!r}")
        out[path[len("/proc/sys/"):].replace("/", ".")] = value.strip()
    return out


_CPU = re.compile(r"^cpu=(\d+)\s+(.*)$")


def parse_conntrack_stats(text: str, where: str = "conntrack-stats.txt") -> tuple[dict, int]:
    """`conntrack -S`: one `cpu=N key=value ...` line per CPU; the counters summed, and the
    number of CPUs."""
    totals: dict[str, int] = {}
    cpus = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _CPU.match(line.strip())
        if not m:
            raise ClusterIPError(f"{where}:{n}: not a `conntrack -S` line: {line[:80]!r}")
        cpus += 1
        for item in m.group(2).split():
            k, sep, v = item.partition("=")
            if not sep or not v.isdigit():
                raise ClusterIPError(f"{where}:{n}: bad counter {item!r}")
            totals[k] = totals.get(k, 0) + int(v)
    return totals, cpus


_GO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d+))? ([+-]\d{4}) \S+"
                      r"(?: m=[+-][\d.]+)?$")


def parse_go_time(s: str) -> datetime.datetime:
    """Go's time.Time.String(): `2020-06-03 23:59:53.688063083 +0000 UTC m=+202.63`."""
    m = _GO_TIME.match(s.strip())
    if not m:
        raise ValueError(f"not a Go time: {s!r}")
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    return datetime.datetime.strptime(f"{m.group(1)}.{frac} {m.group(3)}",
                                      "%Y-%m-%d %H:%M:%S.%f %z")


def parse_healthz(text: str, where: str = "kube-proxy-healthz.json") -> dict:
    """kube-proxy's /healthz body (pkg/proxy/healthcheck/proxy_health.go)."""
    try:
        doc = json.loads(text)
        out = {"lastUpdated": parse_go_time(doc["lastUpdated"]),
               "currentTime": parse_go_time(doc["currentTime"])}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ClusterIPError(f"{where}: not kube-proxy's /healthz answer ({e})") from None
    if "nodeEligible" in doc:
        out["nodeEligible"] = bool(doc["nodeEligible"])
    return out


def parse_metrics(text: str, where: str = "kube-proxy-metrics.txt") -> dict[str, float]:
    """Prometheus text lines `name{labels} value`; comments skipped; labels kept in the key."""
    out: dict[str, float] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            raise ClusterIPError(f"{where}:{n}: not a metric line: {line[:80]!r}") from None
    return out


def node_facts(files: dict[str, str]) -> NodeFacts:
    """The facts among a node directory's files (absent files: unknown)."""
    facts = NodeFacts()
    if files.get("sysctl.txt", "").strip():
        facts.sysctls = parse_sysctls(files["sysctl.txt"])
    if files.get("conntrack-stats.txt", "").strip():
        facts.conntrack_stats, facts.cpus = parse_conntrack_stats(files["conntrack-stats.txt"])
    if files.get("kube-proxy-healthz.json", "").strip():
        facts.healthz = parse_healthz(files["kube-proxy-healthz.json"])
    if files.get("kube-proxy-metrics.txt", "").strip():
        facts.metrics = parse_metrics(files["kube-proxy-metrics.txt"])
    return facts
