"""Read rule dumps and recognise their format from the content, never from the file name.

`build_dataplanes` is the one place that turns a node's dumps into dataplanes: each proxy
mode registers how to build itself from the formats it reads, so a mode is a peer of the
others rather than a special case.
"""

from __future__ import annotations

import re
from typing import Protocol

from kubectl_clusterip import paste, reads
from kubectl_clusterip.iptables.parse import looks_like_iptables
from kubectl_clusterip.model import ClusterIPError, Node, Packet, ServicePort, Trace


class Dataplane(Protocol):
    """What every proxy mode offers the engine: its services, and one request's trace."""

    mode: str

    @property
    def family(self) -> int: ...

    @property
    def source(self) -> str: ...

    def services(self, service: str | None = None) -> list[ServicePort]: ...

    def trace(self, packet: Packet, node: Node | None = None) -> Trace: ...

    def cluster_cidrs(self) -> list[str]: ...


def read_text(path: str) -> str:
    """A dump's text; `-` is stdin. Bounded (kubectl_clusterip.reads); empty is an error."""
    try:
        text = reads.read_text(path, what="a rule dump")
    except ClusterIPError as e:
        if str(e).endswith(": is a directory"):
            raise ClusterIPError(f"{e} (use --snapshot for a snapshot)") from None
        raise
    if not text.strip():
        raise ClusterIPError(f"{reads.shown(path)}: empty file")
    return text


def detect_format(text: str) -> str | None:
    """iptables | nft-json | nft-text | ipvsadm | ipset | conntrack | xt-recent | proxy-mode,
    cilium-services | cilium-lb | cilium-status | cilium-ct, or None."""
    head = text[:8192].lstrip()
    if head.startswith("{") and '"nftables"' in head[:200]:
        return "nft-json"
    if looks_like_iptables(text):
        return "iptables"
    if re.search(r"^\s*table (ip|ip6|inet) \S+ \{", head, re.M):
        return "nft-text"
    from kubectl_clusterip.ipvs.parse import looks_like_ipvsadm

    if looks_like_ipvsadm(head):  # also `ipvsadm -Ln -t VIP:PORT` (no version line)
        return "ipvsadm"
    if re.search(r"^(create \S+ (hash|bitmap|list):|Name: \S+\nType: )", head, re.M):
        return "ipset"
    if re.search(r"^(tcp|udp|sctp|icmp)\s+\d+\s+\d+\s.*\bsrc=", head, re.M):
        return "conntrack"
    if head.startswith("/proc/net/xt_recent/"):
        return "xt-recent"
    if head.strip() in ("iptables", "ipvs", "nftables", "kernelspace"):
        return "proxy-mode"
    from kubectl_clusterip.cilium.parse import detect as detect_cilium

    cilium = detect_cilium(text)
    if cilium is not None:
        return cilium
    from kubectl_clusterip.iptables.shapes import looks_like_iptables_paste

    if looks_like_iptables_paste(head):  # iptables -S / -L, a grep of iptables-save
        return "iptables"
    return None


# format -> builder(list of (source, text) of that format, all dumps of the node) -> dataplanes.
# Each mode's modules load when a dump of theirs is read: an iptables node never pays for the
# nftables, IPVS or Cilium parsers.
def _build_iptables(dumps: list[tuple[str, str]], _all: dict[str, list[tuple[str, str]]]):
    from kubectl_clusterip.iptables.dataplane import IptablesDataplane, parse_xt_recent
    from kubectl_clusterip.iptables.shapes import read_rulesets

    recent = parse_xt_recent("\n".join(text for _, text in _all.get("xt-recent", [])))
    return [IptablesDataplane(rs, recent=recent) for rs in read_rulesets(dumps)]


def _build_ipvs(dumps: list[tuple[str, str]], _all: dict[str, list[tuple[str, str]]]):
    from kubectl_clusterip.ipvs import dataplane as ipvs_dataplane

    return ipvs_dataplane.build(dumps, _all.get("iptables", []), _all.get("ipset", []))


def _build_nftables(dumps: list[tuple[str, str]], _all: dict[str, list[tuple[str, str]]]):
    from kubectl_clusterip.nftables import dataplane as nftables_dataplane

    return nftables_dataplane.build(dumps, _all)


def _build_cilium(dumps: list[tuple[str, str]], _all: dict[str, list[tuple[str, str]]]):
    from kubectl_clusterip.cilium import dataplane as cilium_dataplane

    return cilium_dataplane.build(dumps, _all)


BUILDERS = {
    "iptables": _build_iptables,
    "ipvsadm": _build_ipvs,
    "nft-json": _build_nftables,
    "nft-text": _build_nftables,
    "cilium-services": _build_cilium,
    "cilium-lb": _build_cilium,
}
# Read by a mode, never a dataplane alone.
SIDE_FORMATS = {"ipset", "conntrack", "proxy-mode", "xt-recent", "cilium-status", "cilium-ct"}
# A mode that reads another format's dumps as its own: IPVS mode still writes iptables rules,
# so a node with an IPVS table has no iptables-mode dataplane.
CONSUMES = {"ipvsadm": ("iptables",), "cilium-services": ("cilium-lb",)}


def classify(dumps: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Dumps by format. A paste with prompts, fences or several dumps in it is split first
    (kubectl_clusterip.paste); iptables pieces keep their prompt lines, since the iptables
    reader takes the table and family from the command they show."""
    by_format: dict[str, list[tuple[str, str]]] = {}
    for source, text in dumps:
        fmt = detect_format(text)
        if fmt is not None and not paste.looks_noisy(text):
            by_format.setdefault(fmt, []).append((source, text))
            continue
        pieces = [(seg, detect_format(seg.text)) for seg in paste.clean(text)]
        if pieces and all(f == "iptables" for _, f in pieces):
            by_format.setdefault("iptables", []).append((source, text))
            continue
        for seg, f in pieces:
            if f is None:
                n, line = paste.first_line(seg.text)
                seen = f":{n}: not a recognised rule dump: {line!r}" if line else \
                    ": not a recognised rule dump (no text in it)"
                raise ClusterIPError(f"{source}{seen}; run `iptables-save`, `nft list ruleset` "
                                     "or `ipvsadm -Ln` on the node and give its output (or "
                                     "cilium-dbg service list / bpf lb list / status)")
            by_format.setdefault(f, []).append((source, seg.raw if f == "iptables"
                                                else seg.marked()))
    return by_format


def build_dataplanes(dumps: list[tuple[str, str]]) -> list[Dataplane]:
    """The node's dataplanes, one per mode and IP family that holds kube-proxy state.

    Mode precedence: when a node has an `ipvsadm` dump, its iptables dumps (both families)
    belong to the IPVS dataplanes (CONSUMES), which walk them around the IPVS step; they
    do not also become iptables-mode dataplanes, which would claim the ClusterIPs twice.
    """
    by_format = classify(dumps)
    consumed = {f for fmt, fs in CONSUMES.items() if fmt in by_format for f in fs}
    built: list[Dataplane] = []
    for fmt, items in by_format.items():
        if fmt in SIDE_FORMATS or fmt in consumed:
            continue
        builder = BUILDERS.get(fmt)
        if builder is None:
            raise ClusterIPError(f"{items[0][0]}: {fmt} dumps are not supported yet")
        built.extend(builder(items, by_format))
    with_proxy = [dp for dp in built if getattr(dp, "has_kube_proxy", lambda: True)()]
    if not with_proxy:
        raise ClusterIPError(no_kube_proxy_message(dumps))
    return with_proxy


CILIUM_OUTPUTS_HINT = (
    "To trace it, give the agent's view with --rules-file: `kubectl -n kube-system exec "
    "<cilium pod on the node> -c cilium-agent -- cilium-dbg service list` (`cilium` on 1.14 and "
    "older), and for the datapath `cilium-dbg bpf lb list` and `cilium-dbg status --verbose`")


def no_kube_proxy_message(dumps: list[tuple[str, str]]) -> str:
    """Say what the node looks like when kube-proxy has written nothing into it."""
    sources = ", ".join(s for s, _ in dumps)
    text = "\n".join(t for _, t in dumps)
    if "CILIUM_" in text or "cilium" in text:
        return (f"{sources}: no kube-proxy rules; the CILIUM_* chains say Cilium's kube-proxy "
                f"replacement handles Services here. {CILIUM_OUTPUTS_HINT}")
    if re.search(r"\bcali-", text):
        return (f"{sources}: no kube-proxy rules, only Calico's cali-* chains: Calico's eBPF "
                "dataplane may be replacing kube-proxy, or kube-proxy is not running")
    if "KUBE-ROUTER" in text or "kube-router" in text:
        return f"{sources}: no kube-proxy rules; kube-router's service proxy appears to run here"
    return (f"{sources}: no kube-proxy rules (no KUBE-SERVICES chain, no kube-proxy table, no "
            "IPVS services): kube-proxy is not running on this node, or something replaced it")
