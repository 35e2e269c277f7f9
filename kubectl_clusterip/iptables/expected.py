"""What kube-proxy (iptables mode, v1.29–v1.34) should have written for these API objects.

The output is the restore text in kube-proxy's own argument order (before the kernel
normalises it), so it can be loaded into an empty network namespace as a stand-in node, and
compared with a real dump by chain names and per-service endpoints ("drift").

Follows pkg/proxy/iptables/proxier.go `syncProxyRules` (≈v1.33). Go map order makes
kube-proxy's order of services arbitrary; here they are sorted by svcPortName, which
changes no behaviour because the per-service rules never overlap.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.endpoints import (
    Categorized,
    EndpointInfo,
    ServicePortInfo,
    canonical_ip,
    categorize,
    family_ports,
    port_policy,
)
from kubectl_clusterip.naming import (
    endpoint_chain,
    external_chain,
    firewall_chain,
    local_chain,
    service_chain,
)

LARGE_CLUSTER_ENDPOINTS = 1000
NFACCT_INVALID = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST_NP = "localhost_nps_accepted_pkts"

# (table, target chain, built-in chain, comment, extra args) in kube-proxy's ensure order.
_JUMPS = (
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT",
     "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD",
     "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ""),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals",
     "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals",
     "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall",
     "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall",
     "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall",
     "-m conntrack --ctstate NEW"),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ""),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ""),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ""),
)
# kubelet's copies, which it normally created before kube-proxy started.
_KUBELET_JUMPS = (
    ("filter", "KUBE-FIREWALL", "INPUT", "", ""),
    ("filter", "KUBE-FIREWALL", "OUTPUT", "", ""),
)
_BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


def probability(n: int) -> str:
    """kube-proxy's `%0.10f` of 1/n, for the rule that picks among the n remaining endpoints."""
    return "%0.10f" % (1.0 / n)


@dataclass
class NodeFacts:
    """What the expectation needs from the Node object."""

    name: str
    labels: dict = field(default_factory=dict)
    pod_cidrs: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)  # InternalIP first, then ExternalIP

    @classmethod
    def from_node(cls, node: dict | str | None) -> NodeFacts:
        if node is None:
            return cls(name="")
        if isinstance(node, str):
            return cls(name=node)
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
        addrs = (node.get("status") or {}).get("addresses") or []
        ips = [a.get("address", "") for kind in ("InternalIP", "ExternalIP")
               for a in addrs if a.get("type") == kind]
        return cls(name=meta.get("name") or "", labels=meta.get("labels") or {},
                   pod_cidrs=cidrs, addresses=[c for c in map(canonical_ip, ips) if c])

    def ips(self, family: int) -> list[str]:
        return [ip for ip in self.addresses if ipaddress.ip_address(ip).version == family]

    def primary_ip(self, family: int) -> str | None:
        ips = self.ips(family)
        return ips[0] if ips else None


@dataclass
class ExpectedServicePort:
    """One service port as kube-proxy should program it on this node and family."""

    info: ServicePortInfo
    family: int
    cluster_ip: str
    endpoints: list[EndpointInfo]  # everything the API offers for this port and family
    categorized: Categorized
    chains: list[str] = field(default_factory=list)  # nat chains it owns (SVC/SVL/EXT/FW/SEP)
    status: str = "ok"  # ok | no-endpoints | no-local-endpoints
    internal_chain: str | None = None  # where ClusterIP traffic jumps; None when filtered

    @property
    def svc_port_name(self) -> str:
        return self.info.svc_port_name

    @property
    def protocol(self) -> str:
        return self.info.protocol

    @property
    def internal_endpoints(self) -> list[EndpointInfo]:
        """The DNAT candidates for ClusterIP traffic, in dispatch-rule order."""
        if self.status != "ok":
            return []
        return self.categorized.local if self.info.internal_local else self.categorized.cluster


@dataclass
class ExpectedRuleset:
    family: int
    node: NodeFacts
    large_cluster: bool
    filter_chains: list[str]
    nat_chains: list[str]
    service_ports: list[ExpectedServicePort]
    filter_rules: list[str]
    nat_rules: list[str]

    def chains(self, table: str) -> set[str]:
        return set(self.filter_chains if table == "filter" else self.nat_chains)

    def by_name(self) -> dict[tuple[str, str], ExpectedServicePort]:
        return {(sp.svc_port_name, sp.protocol): sp for sp in self.service_ports}


def _nodeport_tail(config: ProxyConfig, family: int, node: NodeFacts,
                   localhost_nodeports: bool) -> list[str]:
    """The last KUBE-SERVICES rule(s), sending local destinations on to KUBE-NODEPORTS."""
    comment = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    head = f"-A KUBE-SERVICES -m comment --comment {comment}"
    nets, match_all = _nodeport_networks(config, family, node)
    if match_all:
        dest = "-m addrtype --dst-type LOCAL"
        if family == 6:
            dest += " ! -d ::1/128"
        elif not localhost_nodeports:
            dest += " ! -d 127.0.0.0/8"
        return [f"{head} {dest} -j KUBE-NODEPORTS"]
    rules = []
    # Approximation: the node object's addresses stand in for the interface addresses.
    ips = node.ips(family) + (["127.0.0.1"] if family == 4 else ["::1"])
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        if not any(addr in n for n in nets):
            continue
        if addr.is_loopback and (family == 6 or not localhost_nodeports):
            continue
        rules.append(f"{head} -d {ip} -j KUBE-NODEPORTS")
    return rules


def _nodeport_networks(config: ProxyConfig, family: int, node: NodeFacts):
    """(networks, match_all) for --nodeport-addresses; "primary" means the node's own IP."""
    nets = []
    for a in config.nodeport_addresses:
        a = a.strip()
        if a == "primary":
            ip = node.primary_ip(family)
            if ip:
                nets.append(ipaddress.ip_network(ip))
            continue
        try:
            n = ipaddress.ip_network(a, strict=False)
        except ValueError:
            continue
        if n.version == family:
            nets.append(n)
    match_all = not nets or any(n.prefixlen == 0 for n in nets)
    return nets, match_all


def _localhost_nodeports(config: ProxyConfig, family: int, node: NodeFacts) -> bool:
    """Only IPv4, and only when --nodeport-addresses (if set) covers 127.0.0.1."""
    if family != 4 or not config.localhost_nodeports:
        return False
    nets, match_all = _nodeport_networks(config, 4, node)
    return match_all or any(ipaddress.ip_address("127.0.0.1") in n for n in nets)


def expected_chains(
    services: list[dict],
    slices: list[dict],
    node: dict | str | None,
    config: ProxyConfig,
    family: int = 4,
    random_fully: bool = True,
    nfacct: bool = False,
    prefer_same_node_gate: bool = True,
) -> ExpectedRuleset:
    """kube-proxy's chains and rules for one node and IP family, per service port: the
    expectation drift findings compare a node's dump with."""
    nodef = NodeFacts.from_node(node)
    mark = config.masquerade_mark
    not_local, local = config.local_detector(family, nodef.pod_cidrs)
    localhost_np = _localhost_nodeports(config, family, nodef)
    node_ip = nodef.primary_ip(family)

    ports = family_ports(services, slices, family, nodef.name)
    large = sum(len(eps) for _, _, eps in ports) > LARGE_CLUSTER_ENDPOINTS

    filter_chains = ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD",
                     "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"]
    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    filter_rules: list[str] = []
    nat_rules = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE" + (" --random-fully" if random_fully else ""),
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",
    ]
    if localhost_np:
        filter_chains.append("KUBE-FIREWALL")
        filter_rules.append(
            '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections"'
            " -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT"
            " -j DROP")

    def svc_comment(args: list[str], comment: str) -> list[str]:
        return args if large else [*args, "-m", "comment", "--comment", comment]

    expected_ports = []
    for info, cip, eps in ports:
        spn, proto = info.svc_port_name, info.protocol
        pm = f"-m {proto} -p {proto}"
        cat = categorize(info, eps, nodef.name, nodef.labels, prefer_same_node_gate, family)
        cluster_chain, local_ch = service_chain(spn, proto), local_chain(spn, proto)
        ext_chain, fw_chain = external_chain(spn, proto), firewall_chain(spn, proto)
        (uses_cluster, uses_local, has_eps, has_internal, has_external, ext_ips, lb_ips, ranges,
         uses_ext, uses_fw) = port_policy(info, cat, family)
        internal_chain = local_ch if info.internal_local else cluster_chain
        external_policy = local_ch if info.external_local else cluster_chain
        lb_target = fw_chain if uses_fw else ext_chain
        if not has_eps:
            int_target = ext_target = "REJECT"
            int_comment = ext_comment = f'"{spn} has no endpoints"'
        else:
            int_target = ext_target = "DROP"
            int_comment = ext_comment = f'"{spn} has no local endpoints"'
        chains: list[str] = []

        def dport(ip: str, pm: str = pm, port: int = info.port) -> str:
            return f"{pm} -d {ip} --dport {port}"

        if has_internal:
            nat_rules.append(f'-A KUBE-SERVICES -m comment --comment "{spn} cluster IP" '
                             f"{dport(cip)} -j {internal_chain}")
        else:
            filter_rules.append(f"-A KUBE-SERVICES -m comment --comment {int_comment} "
                                f"{dport(cip)} -j {int_target}")
        for ip in ext_ips:
            if has_eps:
                nat_rules.append(f'-A KUBE-SERVICES -m comment --comment "{spn} external IP" '
                                 f"{dport(ip)} -j {ext_chain}")
            if not has_external:
                filter_rules.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment "
                                    f"{ext_comment} {dport(ip)} -j {ext_target}")
        for ip in lb_ips:
            if has_eps:
                nat_rules.append(f'-A KUBE-SERVICES -m comment --comment "{spn} loadbalancer IP"'
                                 f" {dport(ip)} -j {lb_target}")
            if uses_fw:
                filter_rules.append(
                    f'-A KUBE-PROXY-FIREWALL -m comment --comment "{spn} traffic not accepted by'
                    f' {fw_chain}" {dport(ip)} -j DROP')
        if not has_external:
            for ip in lb_ips:
                filter_rules.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment "
                                    f"{ext_comment} {dport(ip)} -j {ext_target}")
        if info.node_port:
            if has_eps:
                if localhost_np and nfacct:
                    nat_rules.append(
                        f"-A KUBE-NODEPORTS -m comment --comment {spn} {pm} -d 127.0.0.0/8"
                        f" --dport {info.node_port} -m nfacct --nfacct-name {NFACCT_LOCALHOST_NP}"
                        f" -j {ext_chain}")
                nat_rules.append(f"-A KUBE-NODEPORTS -m comment --comment {spn} {pm} "
                                 f"--dport {info.node_port} -j {ext_chain}")
            if not has_external:
                filter_rules.append(
                    f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment} "
                    f"-m addrtype --dst-type LOCAL {pm} --dport {info.node_port} -j {ext_target}")
        if info.health_check_node_port:
            filter_rules.append(
                f'-A KUBE-NODEPORTS -m comment --comment "{spn} health check node port" '
                f"-m tcp -p tcp --dport {info.health_check_node_port} -j ACCEPT")

        if has_internal:
            masq = (f'-A {internal_chain} -m comment --comment "{spn} cluster IP" {dport(cip)}')
            if config.masquerade_all:
                nat_rules.append(f"{masq} -j KUBE-MARK-MASQ")
            elif not_local:
                nat_rules.append(f"{masq} {not_local} -j KUBE-MARK-MASQ")

        if uses_ext:
            chains.append(ext_chain)
            if not info.external_local:
                nat_rules.append(
                    f'-A {ext_chain} -m comment --comment "masquerade traffic for {spn} external'
                    f' destinations" -j KUBE-MARK-MASQ')
            else:
                if local:
                    nat_rules.append(
                        f'-A {ext_chain} -m comment --comment "pod traffic for {spn} external'
                        f' destinations" {local} -j {cluster_chain}')
                nat_rules.append(
                    f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {spn}'
                    f' external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ')
                nat_rules.append(
                    f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {spn}'
                    f' external destinations" -m addrtype --src-type LOCAL -j {cluster_chain}')
            if has_external:
                nat_rules.append(f"-A {ext_chain} -j {external_policy}")

        if uses_fw:
            chains.append(fw_chain)
            head = f'-A {fw_chain} -m comment --comment "{spn} loadbalancer IP"'
            allow_node = False
            for r in ranges:
                nat_rules.append(f"{head} -s {r} -j {ext_chain}")
                if node_ip and ipaddress.ip_address(node_ip) in ipaddress.ip_network(r):
                    allow_node = True
            if allow_node:
                for ip in lb_ips:
                    nat_rules.append(f"{head} -s {ip} -j {ext_chain}")
            nat_rules.append(f'-A {fw_chain} -m comment --comment "other traffic to {spn} will'
                             f' be dropped by KUBE-PROXY-FIREWALL"')

        for used, chain, eplist in ((uses_cluster, cluster_chain, cat.cluster),
                                    (uses_local, local_ch, cat.local)):
            if not used:
                continue
            chains.append(chain)
            if info.session_affinity_seconds is not None:
                for ep in eplist:
                    sep = endpoint_chain(spn, proto, ep.endpoint)
                    args = svc_comment([f"-A {chain}"], f'"{spn} -> {ep.endpoint}"')
                    nat_rules.append(" ".join(args) + f" -m recent --name {sep} --rcheck "
                                     f"--seconds {info.session_affinity_seconds} --reap -j {sep}")
            n = len(eplist)
            for i, ep in enumerate(eplist):
                sep = endpoint_chain(spn, proto, ep.endpoint)
                args = svc_comment([f"-A {chain}"], f'"{spn} -> {ep.endpoint}"')
                if i < n - 1:
                    args += ["-m statistic --mode random --probability", probability(n - i)]
                nat_rules.append(" ".join(args) + f" -j {sep}")

        for ep in cat.all_reachable:
            sep = endpoint_chain(spn, proto, ep.endpoint)
            chains.append(sep)
            args = svc_comment([f"-A {sep}"], spn)
            nat_rules.append(" ".join(args) + f" -s {ep.ip} -j KUBE-MARK-MASQ")
            if info.session_affinity_seconds is not None:
                args.append(f"-m recent --name {sep} --set")
            nat_rules.append(" ".join(args) + f" {pm} -j DNAT --to-destination {ep.endpoint}")

        nat_chains.extend(chains)
        status = "ok" if has_internal else ("no-endpoints" if not has_eps
                                            else "no-local-endpoints")
        expected_ports.append(ExpectedServicePort(
            info=info, family=family, cluster_ip=cip, endpoints=eps, categorized=cat,
            chains=chains, status=status, internal_chain=internal_chain if has_internal else None))

    nat_rules.extend(_nodeport_tail(config, family, nodef, localhost_np))
    if not config.conntrack_tcp_be_liberal:
        filter_rules.append("-A KUBE-FORWARD -m conntrack --ctstate INVALID"
                            + (f" -m nfacct --nfacct-name {NFACCT_INVALID}" if nfacct else "")
                            + " -j DROP")
    filter_rules.append('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
                        f"-m mark --mark {mark}/{mark} -j ACCEPT")
    filter_rules.append('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack'
                        ' rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT')
    return ExpectedRuleset(family=family, node=nodef, large_cluster=large,
                           filter_chains=filter_chains, nat_chains=nat_chains,
                           service_ports=expected_ports, filter_rules=filter_rules,
                           nat_rules=nat_rules)


def _jump_rules(table: str) -> list[str]:
    """The built-in-chain jumps, in the order repeated "prepend"s leave them: each ensure
    goes to the top, so later ones come first; kubelet's (made earlier) end up last."""
    by_chain: dict[str, list[str]] = {}
    for t, dst, src, comment, extra in _KUBELET_JUMPS + _JUMPS:
        if t != table:
            continue
        parts = ["-A", src] + ([extra] if extra else [])
        if comment:
            parts += ["-m comment --comment", f'"{comment}"']
        parts += ["-j", dst]
        by_chain.setdefault(src, []).insert(0, " ".join(parts))
    return [r for src in _BUILTIN[table] for r in by_chain.get(src, [])]


def render(expected: ExpectedRuleset, include_jumps: bool = True) -> str:
    """The restore text. With include_jumps the built-in chains are declared and jump to
    kube-proxy's, so `iptables-restore` into an empty namespace gives a working node;
    without them it is exactly kube-proxy's `--noflush` input."""
    lines: list[str] = []
    for table, chains, rules in (("filter", expected.filter_chains, expected.filter_rules),
                                 ("nat", expected.nat_chains, expected.nat_rules)):
        lines.append(f"*{table}")
        decl = list(chains)
        if include_jumps:
            lines.extend(f":{c} ACCEPT [0:0]" for c in _BUILTIN[table])
            if table == "filter" and "KUBE-FIREWALL" not in decl:
                decl.append("KUBE-FIREWALL")  # kubelet's chain, jumped to even when empty
        lines.extend(f":{c} - [0:0]" for c in decl)
        if include_jumps:
            lines.extend(_jump_rules(table))
        lines.extend(rules)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def expected_rules(
    services: list[dict],
    slices: list[dict],
    node: dict | str | None,
    config: ProxyConfig,
    family: int = 4,
    random_fully: bool = True,
    nfacct: bool = False,
    include_jumps: bool = True,
    prefer_same_node_gate: bool = True,
) -> str:
    """The iptables-restore (family 4) or ip6tables-restore (family 6) text kube-proxy would
    write for these Services and EndpointSlices on this node.

    `nfacct` adds the nfacct-counter matches kube-proxy uses when the kernel has xt_nfacct
    (the counters must exist before such text loads); `random_fully` mirrors whether the
    node's iptables supports --random-fully.
    """
    return render(expected_chains(services, slices, node, config, family, random_fully, nfacct,
                                  prefer_same_node_gate), include_jumps)
