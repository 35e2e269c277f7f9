"""The API objects one diagnosis reads, sorted by what the findings ask of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.endpoints import canonical_ip
from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.snapshot import Snapshot

CNI_DAEMONSETS = (
    ("calico-node", "Calico"), ("cilium", "Cilium"), ("kindnet", "kindnet"),
    ("kube-flannel", "Flannel"), ("flannel", "Flannel"), ("canal", "Canal"),
    ("weave-net", "Weave Net"), ("antrea-agent", "Antrea"), ("kube-router", "kube-router"),
    ("ovnkube-node", "OVN-Kubernetes"), ("kube-ovn-cni", "Kube-OVN"),
    ("aws-node", "Amazon VPC CNI"), ("azure-cns", "Azure CNI"),
)
KUBE_DNS_LABEL = ("k8s-app", "kube-dns")
MAX_LISTED = 8


# -- the API objects one diagnosis reads ------------------------------------------------------


def metadata(obj: dict) -> dict:
    return obj.get("metadata") or {}


def ns_name(obj: dict) -> str:
    md = metadata(obj)
    return f"{md.get('namespace') or 'default'}/{md.get('name', '')}"


def pod_ready(pod: dict) -> bool:
    """The Ready condition, which is what the EndpointSlice controller reports as ready."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_not_ready_why(pod: dict) -> str:
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            why = c.get("reason") or ""
            if c.get("message"):
                why += f": {c['message']}" if why else c["message"]
            return f"Ready={c.get('status')}" + (f" ({why})" if why else "")
    return f"phase {status.get('phase') or 'unknown'}, no Ready condition"


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def fmt_labels(labels: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def listed(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


@dataclass
class Cluster:
    """The objects of a snapshot, sorted by what the diagnosis asks of them."""

    snap: Snapshot
    node: str
    config: ProxyConfig | None = None
    config_error: str = ""
    slices: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, snap: Snapshot, node: str) -> Cluster:
        cm = snap.get("ConfigMap", "kube-system", "kube-proxy")
        config, error = None, ""
        if cm is not None:
            try:
                config = ProxyConfig.from_configmap(cm)
            except ClusterIPError as e:
                error = str(e)
        return cls(snap, node, config, error, snap.of_kind("EndpointSlice"))

    def node_object(self) -> dict | str:
        return self.snap.get("Node", None, self.node) or self.node

    def pods(self, namespace: str) -> list[dict]:
        return [p for p in self.snap.of_kind("Pod")
                if (metadata(p).get("namespace") or "default") == namespace]

    def daemonsets(self) -> list[dict]:
        return self.snap.of_kind("DaemonSet")

    def cni(self) -> str | None:
        """The CNI named by its DaemonSet, e.g. "kindnet (DaemonSet kube-system/kindnet)"."""
        for ds in self.daemonsets():
            name = metadata(ds).get("name", "")
            for prefix, label in CNI_DAEMONSETS:
                if name.startswith(prefix):
                    return f"{label} (DaemonSet {ns_name(ds)})"
        return None


def same_ip(a: str, b: str) -> bool:
    ca, cb = canonical_ip(a), canonical_ip(b)
    return ca is not None and ca == cb
