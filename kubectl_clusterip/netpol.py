"""NetworkPolicy, evaluated as the API reference defines it: a pure function over the
policies, the two pods and their namespaces' labels.

A pod is isolated for a direction when any policy in its namespace selects it with that
policy type; then a connection is allowed only when some rule of some selecting policy
admits it (policies are additive, never subtractive). Rules see the packet after kube-proxy's
DNAT: the endpoint pod's address and the targetPort, never the ClusterIP. Sources that are
not pods (a node, host-network pods, an address outside the cluster) match only ipBlock
peers, and "traffic from the pod's own node is always allowed" (concepts/services-networking/
network-policies: "the only allowed connections into the pod are those from the pod's node
and those allowed by the ingress list").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

NS_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Peer:
    """One end of a connection as a policy sees it."""

    ip: str
    name: str  # "ns/pod", or what the address is ("node kind-worker")
    namespace: str | None = None  # None: not a pod (node, host network, outside)
    labels: Mapping[str, str] = field(default_factory=dict)
    ns_labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[tuple[str, int, str], ...] = ()  # declared (name, containerPort, PROTO)
    node: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


@dataclass(frozen=True)
class Decision:
    """One direction (ingress to dst, or egress from src) of one connection."""

    direction: str  # "ingress" | "egress"
    allowed: bool
    policies: tuple[str, ...] = ()  # "ns/name" of every policy isolating the pod this way
    admitted_by: str = ""  # the rule that admits, or why nothing needed to
    why_not: tuple[str, ...] = ()  # per selecting policy, why none of its rules admits

    @property
    def isolated(self) -> bool:
        return bool(self.policies)


def pod_peer(pod: dict, ns_labels: Mapping[str, str] | None = None,
             ip: str | None = None) -> Peer:
    """A Pod object as a policy peer; a host-network pod is its node's address."""
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    st = pod.get("status") or {}
    ns = md.get("namespace") or "default"
    addr = ip or st.get("podIP") or ""
    if spec.get("hostNetwork"):
        return Peer(addr, f"host-network pod {ns}/{md.get('name', '')}",
                    node=spec.get("nodeName"))
    ports = tuple((str(p.get("name")), int(p.get("containerPort") or 0),
                   (p.get("protocol") or "TCP").upper())
                  for c in spec.get("containers") or [] for p in c.get("ports") or []
                  if p.get("name"))
    return Peer(addr, f"{ns}/{md.get('name', '')}", ns, dict(md.get("labels") or {}),
                dict(ns_labels if ns_labels is not None else {NS_NAME_LABEL: ns}), ports,
                spec.get("nodeName"))


# -- selectors ---------------------------------------------------------------------------------


def selector_matches(sel: Mapping | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels AND every matchExpression; {} matches everything."""
    sel = sel or {}
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for e in sel.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        has = key in labels
        ok = {"In": has and labels.get(key) in values,
              "NotIn": not has or labels.get(key) not in values,
              "Exists": has, "DoesNotExist": not has}.get(op, False)
        if not ok:
            return False
    return True


def fmt_selector(sel: Mapping | None) -> str:
    sel = sel or {}
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op, vals = e.get("operator"), ",".join(e.get("values") or [])
        parts.append({"In": f"{e.get('key')} in ({vals})",
                      "NotIn": f"{e.get('key')} notin ({vals})",
                      "Exists": str(e.get("key")),
                      "DoesNotExist": f"!{e.get('key')}"}.get(op, f"{e.get('key')} {op}"))
    return ",".join(parts) or "{} (all)"


def _meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def policy_name(pol: dict) -> str:
    return f"{_meta(pol).get('namespace') or 'default'}/{_meta(pol).get('name', '')}"


def policy_types(pol: dict) -> list[str]:
    """spec.policyTypes, or its default: Ingress always, Egress when spec.egress has rules."""
    spec = pol.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def selects(pol: dict, pod: Peer, direction: str) -> bool:
    """The policy isolates pod for direction ("ingress"/"egress")."""
    return (pod.is_pod and (_meta(pol).get("namespace") or "default") == pod.namespace
            and direction.capitalize() in policy_types(pol)
            and selector_matches((pol.get("spec") or {}).get("podSelector"), pod.labels))


# -- peers and ports -----------------------------------------------------------------------


def _in_block(ip: str, block: Mapping) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
        net = ipaddress.ip_network(str(block.get("cidr")), strict=False)
        if addr.version != net.version or addr not in net:
            return False
        for ex in block.get("except") or []:
            exn = ipaddress.ip_network(str(ex), strict=False)
            if exn.version == addr.version and addr in exn:
                return False
    except ValueError:
        return False
    return True


def peer_matches(peer: Mapping, policy_ns: str, remote: Peer) -> bool:
    """One entry of from/to. podSelector and namespaceSelector in the same entry must both
    match (AND); an entry with only a podSelector means the policy's own namespace."""
    if peer.get("ipBlock") is not None:
        return _in_block(remote.ip, peer["ipBlock"])
    if not remote.is_pod:
        return False
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if pod_sel is None and ns_sel is None:
        return False  # invalid in the API; matches nothing
    ns_ok = (selector_matches(ns_sel, remote.ns_labels) if ns_sel is not None
             else remote.namespace == policy_ns)
    return ns_ok and (pod_sel is None or selector_matches(pod_sel, remote.labels))


def fmt_peer(peer: Mapping) -> str:
    if peer.get("ipBlock") is not None:
        b = peer["ipBlock"]
        ex = b.get("except") or []
        return f"ipBlock {b.get('cidr')}" + (f" except {','.join(ex)}" if ex else "")
    parts = []
    if peer.get("namespaceSelector") is not None:
        parts.append(f"namespaceSelector {fmt_selector(peer['namespaceSelector'])}")
    if peer.get("podSelector") is not None:
        parts.append(f"podSelector {fmt_selector(peer['podSelector'])}")
    return " AND ".join(parts) or "(empty peer)"


def port_matches(np: Mapping, port: int, protocol: str, dst: Peer) -> bool:
    """One ports entry: protocol (default TCP), port number or range (endPort), or a named
    port resolved against the destination pod's declared container ports."""
    if (np.get("protocol") or "TCP").upper() != protocol.upper():
        return False
    want = np.get("port")
    if want is None:
        return True
    if isinstance(want, str) and not want.isdigit():
        return any(n == want and p == port and pr == protocol.upper() for n, p, pr in dst.ports)
    lo = int(want)
    hi = int(np["endPort"]) if np.get("endPort") is not None else lo
    return lo <= port <= hi


def fmt_port(np: Mapping) -> str:
    proto = (np.get("protocol") or "TCP").upper()
    if np.get("port") is None:
        return f"any/{proto}"
    end = f"-{np['endPort']}" if np.get("endPort") is not None else ""
    return f"{np['port']}{end}/{proto}"


# -- one direction --------------------------------------------------------------------------------


def _rule_verdict(rule: Mapping, key: str, policy_ns: str, remote: Peer, port: int,
                  protocol: str, dst: Peer) -> tuple[bool, str]:
    """(admits, which peer admits or why not) for one ingress/egress rule."""
    ports = rule.get("ports") or []
    if ports and not any(port_matches(np, port, protocol, dst) for np in ports):
        return False, (f"ports {', '.join(fmt_port(np) for np in ports)} do not include "
                       f"{port}/{protocol.upper()}")
    peers = rule.get(key) or []
    if not peers:
        return True, f"any {'source' if key == 'from' else 'destination'}"
    for j, peer in enumerate(peers):
        if peer_matches(peer, policy_ns, remote):
            return True, f"{key}[{j}] {fmt_peer(peer)}"
    return False, f"no {key} entry matches {remote.name}: " + "; ".join(
        fmt_peer(p) for p in peers)


def decide(policies: list[dict], src: Peer, dst: Peer, port: int, protocol: str,
           direction: str) -> Decision:
    """Ingress: is dst isolated, and does a rule admit src? Egress: is src isolated, and
    does a rule let it reach dst? `port` is the destination port after DNAT."""
    local, remote = (dst, src) if direction == "ingress" else (src, dst)
    if direction == "ingress" and not src.is_pod and src.node and src.node == dst.node:
        return Decision(direction, True, admitted_by=f"{src.name} is the pod's own node, "
                        "whose traffic NetworkPolicy always allows")
    selecting = sorted((p for p in policies if selects(p, local, direction)), key=policy_name)
    if not selecting:
        return Decision(direction, True, admitted_by=f"no NetworkPolicy selects {local.name} "
                        f"for {direction}")
    key = "from" if direction == "ingress" else "to"
    why: list[str] = []
    for pol in selecting:
        rules = (pol.get("spec") or {}).get(direction) or []
        ns = _meta(pol).get("namespace") or "default"
        if not rules:
            why.append(f"{policy_name(pol)}: no {direction} rule (denies all {direction})")
            continue
        reasons = []
        for i, rule in enumerate(rules):
            ok, text = _rule_verdict(rule, key, ns, remote, port, protocol, dst)
            if ok:
                return Decision(direction, True, tuple(policy_name(p) for p in selecting),
                                f"{policy_name(pol)} spec.{direction}[{i}]: {text}")
            reasons.append(f"{direction}[{i}]: {text}")
        why.append(f"{policy_name(pol)}: " + " | ".join(reasons))
    return Decision(direction, False, tuple(policy_name(p) for p in selecting), "", tuple(why))


def connection(policies: list[dict], src: Peer, dst: Peer, port: int,
               protocol: str) -> tuple[Decision, Decision]:
    """Both directions a connection needs: src's egress and dst's ingress."""
    return (decide(policies, src, dst, port, protocol, "egress"),
            decide(policies, src, dst, port, protocol, "ingress"))
