"""The snapshot: everything one trace needs, in one shape whatever it came from.

A live cluster, a directory on disk and a bare rule dump all become a Snapshot, so the
engine never knows where its data came from. On disk (docs/snapshot.md):

    snapshot.yaml     what was captured: when, by which version, service, client node/pod
    objects.yaml      a v1 List as `kubectl get -o yaml` prints it
    nodes/<node>/     raw command output, one file per command (NODE_FILES)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kubectl_clusterip.model import Address, ClusterIPError, Node, Route
from kubectl_clusterip.reads import MAX_INPUT_BYTES, load_yaml, read_text, shown
from kubectl_clusterip.schema import IP_ADDR, IP_ROUTE, Check, check_json, check_meta, check_objects

# Cilium agent outputs, run in the node's cilium-agent container (`cilium` on 1.14 and older).
CILIUM_FILES = {
    "cilium-service-list.txt": "cilium-dbg service list",
    "cilium-service-list.json": "cilium-dbg service list -o json",
    "cilium-db-show.txt": "cilium-dbg shell -- db/show frontends (then backends, services)",
    "cilium-bpf-lb-list.txt": "cilium-dbg bpf lb list",
    "cilium-bpf-lb-revnat.txt": "cilium-dbg bpf lb list --revnat",
    "cilium-bpf-lb-backends.txt": "cilium-dbg bpf lb list --backends",
    "cilium-status.txt": "cilium-dbg status --verbose",
    "cilium-bpf-ct-global.txt": "cilium-dbg bpf ct list global",
}
# File name -> the command whose output it holds (the debug pod runs these).
NODE_FILES = {
    "iptables-save.txt": "iptables-save",
    "ip6tables-save.txt": "ip6tables-save",
    "nft-ruleset.json": "nft -j list ruleset",
    "nft-ruleset.txt": "nft list ruleset",
    "ipvsadm-save.txt": "ipvsadm-save -n",
    "ipset-save.txt": "ipset save",
    "conntrack.txt": "conntrack -L",
    "xt-recent.txt": "grep -H '' /proc/net/xt_recent/* (iptables session-affinity state)",
    "proxy-mode": "curl -s 127.0.0.1:10249/proxyMode",
    "ip-addr.json": "ip -j addr show",
    "ip-route.json": "ip -j route show table main (IPv4 and IPv6 lists concatenated)",
    "conntrack-events.txt": "conntrack -E -e NEW -d CLUSTER_IP, while --probe ran",
    "probe-log.txt": "the --probe pod's log: one CONN line per connection, its resolv.conf",
    **CILIUM_FILES,
    "sysctl.txt": "grep -H '' /proc/sys/net/... (conntrack fill, forwarding, bridge-nf-call-*, "
                  "rp_filter)",
    "conntrack-stats.txt": "conntrack -S",
    "kube-proxy-healthz.json": "curl -s 127.0.0.1:10256/healthz",
    "kube-proxy-metrics.txt": "curl -s 127.0.0.1:10249/metrics | grep ^kubeproxy_sync_proxy_rules_",
}
RULE_FILES = ("iptables-save.txt", "ip6tables-save.txt", "nft-ruleset.json", "nft-ruleset.txt",
              "ipvsadm-save.txt", "ipset-save.txt", "xt-recent.txt", *CILIUM_FILES)
SNAPSHOT_API = "clusterip.kubectl.dev/v1alpha1"


@dataclass
class NodeDumps:
    name: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> text

    def node(self) -> Node:
        """The node's addresses and routes, from `ip -j addr` / `ip -j route` output."""
        return node_from_ip_json(self.name, self.files.get("ip-addr.json", ""),
                                 self.files.get("ip-route.json", ""))

    def rule_dumps(self) -> list[tuple[str, str]]:
        """The node's rule dumps, in a fixed order."""
        if self.name == "":  # dumps given on the command line: every file, whatever its name
            return list(self.files.items())
        return [(f"{self.name}/{f}", self.files[f]) for f in RULE_FILES if f in self.files]


@dataclass
class Snapshot:
    meta: dict = field(default_factory=dict)
    objects: list[dict] = field(default_factory=list)
    nodes: dict[str, NodeDumps] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        """The one typed boundary: objects and meta from disk or the API are checked here."""
        live = self.source.startswith("context ")
        check_meta(self.meta, self.source if live else f"{self.source}/snapshot.yaml")
        check_objects(self.objects, self.source if live else f"{self.source}/objects.yaml")

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        for o in self.of_kind(kind):
            md = o.get("metadata", {})
            if md.get("name") == name and (namespace is None or md.get("namespace") == namespace):
                return o
        return None

    @property
    def client_node(self) -> str | None:
        return self.meta.get("clientNode") or (next(iter(self.nodes)) if self.nodes else None)

    def has_objects(self) -> bool:
        return bool(self.objects)


def from_rule_files(paths: list[str], read) -> Snapshot:
    """A partial snapshot of one node from dumps given on the command line."""
    files = {p: read(p) for p in paths}
    return Snapshot({"ruleFiles": list(paths)}, [], {"": NodeDumps("", files)}, ", ".join(paths))


def node_from_ip_json(name: str | None, addr_json: str, route_json: str) -> Node:
    """The node's addresses and routes from `ip -j addr` / `ip -j route`, checked as read."""
    node = name or "node"
    links = ip_json(addr_json, f"{node}/ip-addr.json", IP_ADDR)
    routes = ip_json(route_json, f"{node}/ip-route.json", IP_ROUTE)
    # null is missing, as in the checks: defaults with `or`, never .get(key, default)
    return Node(name, tuple(
        Address(a["local"], _or(a.get("prefixlen"), 32), link.get("ifname") or "")
        for link in links for a in link.get("addr_info") or []
        if a.get("family") in ("inet", "inet6") and a.get("scope") != "link"
        and a.get("local")), tuple(
        Route(r.get("dst") or "default", r.get("dev") or "", r.get("prefsrc"), r.get("gateway"))
        for r in routes if (r.get("type") or "unicast") == "unicast"))


def _or(value, default):
    return default if value is None else value


def ip_json(text: str, where: str, check: Check) -> list[dict]:
    """`ip -j` prints one JSON array per command; two commands' output may be concatenated."""
    out: list = []
    dec = json.JSONDecoder()
    i, text = 0, text.strip()
    try:
        while i < len(text):
            value, end = dec.raw_decode(text, i)
            out.extend(value if isinstance(value, list) else [value])
            i = end
            while i < len(text) and text[i].isspace():
                i += 1
    except RecursionError:
        raise ClusterIPError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:
        raise ClusterIPError(f"{where}: not ip -j output (invalid JSON at line {e.lineno}, "
                             f"column {e.colno})") from None
    check_json(out, where, check)
    return out


def load_snapshot(directory: str) -> Snapshot:
    """A snapshot directory, every file read through the bounded reader (one budget in all)."""
    root = Path(directory)
    if not root.is_dir():
        raise ClusterIPError(f"{shown(directory)}: not a snapshot directory")
    meta_file, objects_file = root / "snapshot.yaml", root / "objects.yaml"
    if not meta_file.exists() and not (root / "nodes").is_dir():
        raise ClusterIPError(f"{shown(directory)}: not a snapshot (no snapshot.yaml or nodes/)")
    budget = _Budget()
    meta = _yaml_file(meta_file, budget) if meta_file.exists() else {}
    listed = _yaml_file(objects_file, budget) if objects_file.exists() else {}
    nodes: dict[str, NodeDumps] = {}
    nodes_dir = root / "nodes"
    if nodes_dir.is_dir():
        for d in sorted(p for p in nodes_dir.iterdir() if p.is_dir()):
            files = {f.name: budget.read(f) for f in sorted(d.iterdir()) if not f.is_dir()}
            nodes[d.name] = NodeDumps(d.name, files)
    return Snapshot(meta, listed.get("items") or [], nodes, directory)


class _Budget:
    """All files of one snapshot together stay under the reader's limit."""

    def __init__(self) -> None:
        self.left = MAX_INPUT_BYTES

    def read(self, path: Path) -> str:
        text = read_text(str(path), limit=self.left)
        self.left -= len(text)
        return text


def _yaml_file(path: Path, budget: _Budget) -> dict:
    doc = load_yaml(budget.read(path), str(path)) or {}
    if not isinstance(doc, dict):
        raise ClusterIPError(f"{path}: expected a mapping, not {type(doc).__name__}")
    return doc


def write_snapshot(snap: Snapshot, directory: str) -> None:
    import yaml  # only `capture` writes YAML

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    (root / "snapshot.yaml").write_text(yaml.safe_dump(snap.meta, sort_keys=False))
    (root / "objects.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "List", "items": snap.objects}, sort_keys=False))
    for name, dumps in snap.nodes.items():
        d = root / "nodes" / name
        d.mkdir(parents=True, exist_ok=True)
        for fname, text in dumps.files.items():
            (d / fname).write_text(text)
