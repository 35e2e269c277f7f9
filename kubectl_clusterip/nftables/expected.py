"""What kube-proxy (nftables mode) should write for these API objects, as `nft -f` input.

Follows pkg/proxy/nftables/proxier.go (`setupNFTables`, `syncProxyRules`) in the two
base-chain layouts in use: "new" (v1.34+: `*-pre-dnat` filter chains at -110, the others
at 0) and "old" (v1.31–v1.33: filter chains at -110 plus `filter-output-post-dnat` at -90,
and the service-chain masquerade rule still carrying `<proto> dport <port>`).

The text is a transaction of `add …` commands like kube-proxy's own, so it loads into an
empty network namespace as a stand-in node (tests) and gives benchmarks a realistic size.
Services are sorted by svcPortName (kube-proxy's Go map order is arbitrary; the per-service
objects never overlap, so the order changes nothing).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from kubectl_clusterip.config import ProxyConfig
from kubectl_clusterip.endpoints import EndpointInfo, categorize, family_ports, port_policy
from kubectl_clusterip.iptables.expected import NodeFacts
from kubectl_clusterip.model import join_host_port
from kubectl_clusterip.naming import (
    nft_affinity_set,
    nft_endpoint_chain,
    nft_external_chain,
    nft_firewall_chain,
    nft_local_chain,
    nft_service_chain,
)

LAYOUTS = ("new", "old")


@dataclass(frozen=True)
class _Family:
    ipx: str
    addr_type: str
    no_localhost: str

    @classmethod
    def of(cls, family: int) -> _Family:
        if family == 6:
            return cls("ip6", "ipv6_addr", "ip6 daddr != ::1")
        return cls("ip", "ipv4_addr", "ip daddr != 127.0.0.0/8")


def _base(fam: _Family, table: str, layout: str, service_cidrs: list[str],
          nodeport_ips: list[str] | None, mark: str) -> list[str]:
    """Table, sets, maps, base chains and the fixed rules (setupNFTables)."""
    t = table
    ipx, at = fam.ipx, fam.addr_type
    out = [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f'add set {t} cluster-ips {{ type {at} ; comment "Active ClusterIPs" ; }}',
    ]
    if nodeport_ips is not None:
        out.append(f'add set {t} nodeport-ips {{ type {at} ; comment "IPs that accept '
                   'NodePort traffic" ; }')
    vmap = f"{at} . inet_proto . inet_service : verdict"
    out += [
        f'add map {t} firewall-ips {{ type {vmap} ; comment "destinations that are subject '
        'to LoadBalancerSourceRanges" ; }',
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f'add map {t} no-endpoint-services {{ type {vmap} ; comment "vmap to drop or reject '
        'packets to services with no endpoints" ; }',
        f'add map {t} service-ips {{ type {vmap} ; comment "ClusterIP, ExternalIP and '
        'LoadBalancer IP traffic" ; }',
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "NodePort traffic" ; }',
    ]
    if layout == "new":
        bases = [("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
                 ("filter-output-pre-dnat", "filter", "output", -110),
                 ("filter-forward", "filter", "forward", 0),
                 ("filter-input", "filter", "input", 0),
                 ("filter-output", "filter", "output", 0)]
        jumps = [("filter-prerouting-pre-dnat", "firewall-check"),
                 ("filter-forward", "service-endpoints-check"),
                 ("filter-forward", "cluster-ips-check"),
                 ("filter-input", "nodeport-endpoints-check"),
                 ("filter-input", "service-endpoints-check"),
                 ("filter-output", "service-endpoints-check"),
                 ("filter-output-pre-dnat", "firewall-check"),
                 ("filter-output", "cluster-ips-check")]
    else:
        bases = [("filter-prerouting", "filter", "prerouting", -110),
                 ("filter-input", "filter", "input", -110),
                 ("filter-forward", "filter", "forward", -110),
                 ("filter-output", "filter", "output", -110),
                 ("filter-output-post-dnat", "filter", "output", -90)]
        jumps = [("filter-input", "nodeport-endpoints-check"),
                 ("filter-input", "service-endpoints-check"),
                 ("filter-forward", "service-endpoints-check"),
                 ("filter-forward", "cluster-ips-check"),
                 ("filter-output", "service-endpoints-check"),
                 ("filter-output", "firewall-check"),
                 ("filter-output-post-dnat", "cluster-ips-check"),
                 ("filter-prerouting", "firewall-check")]
    bases += [("nat-prerouting", "nat", "prerouting", -100),
              ("nat-output", "nat", "output", -100),
              ("nat-postrouting", "nat", "postrouting", 100)]
    for name, kind, hook, prio in bases:
        out.append(f"add chain {t} {name} {{ type {kind} hook {hook} priority {prio} ; }}")
    for name in ("cluster-ips-check", "firewall-check", "mark-for-masquerade", "masquerading",
                 "nodeport-endpoints-check", "services", "service-endpoints-check"):
        out.append(f"add chain {t} {name}")
    out.append(f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / '
               '@no-endpoint-nodeports" ; }')
    out.append(f"add rule {t} cluster-ips-check {ipx} daddr @cluster-ips reject comment "
               '"Reject traffic to invalid ports of ClusterIPs"')
    if service_cidrs:
        out.append(f"add rule {t} cluster-ips-check {ipx} daddr {{ {', '.join(service_cidrs)} }}"
                   ' drop comment "Drop traffic to unallocated ClusterIPs"')
    for src, dst in jumps:
        out.append(f"add rule {t} {src} ct state new jump {dst}")
    out += [
        f"add rule {t} firewall-check {ipx} daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add rule {t} mark-for-masquerade mark set mark or {mark}",
        f"add rule {t} masquerading mark and {mark} == 0 return",
        f"add rule {t} masquerading mark set mark xor {mark}",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} nat-prerouting jump services",
    ]
    if nodeport_ips is not None:
        np_match = f"{ipx} daddr @nodeport-ips"
        out += [f"add element {t} nodeport-ips {{ {ip} }}" for ip in nodeport_ips]
    else:
        np_match = f"fib daddr type local {fam.no_localhost}"
    out += [
        f"add rule {t} nodeport-endpoints-check {np_match} meta l4proto . th dport vmap "
        "@no-endpoint-nodeports",
        f"add rule {t} reject-chain reject",
        f"add rule {t} services {ipx} daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services {np_match} meta l4proto . th dport vmap @service-nodeports",
        f"add rule {t} service-endpoints-check {ipx} daddr . meta l4proto . th dport vmap "
        "@no-endpoint-services",
    ]
    return out


def _nodeport_ips(config: ProxyConfig, family: int, node: NodeFacts) -> list[str] | None:
    """None when NodePorts match every local address (the `fib daddr type local` form)."""
    wanted = config.nodeport_addresses or ["primary"]  # nftables mode's default
    nets, primary = [], False
    for a in wanted:
        if a.strip() == "primary":
            primary = True
            continue
        try:
            n = ipaddress.ip_network(a.strip(), strict=False)
        except ValueError:
            continue
        if n.version == family:
            nets.append(n)
    if any(n.prefixlen == 0 for n in nets):
        return None
    ips = []
    if primary and node.primary_ip(family):
        ips.append(node.primary_ip(family))
    for ip in node.ips(family):
        if any(ipaddress.ip_address(ip) in n for n in nets) and ip not in ips:
            ips.append(ip)
    return ips


def expected_ruleset(
    services: list[dict],
    slices: list[dict],
    node: dict | str | None,
    config: ProxyConfig,
    family: int = 4,
    layout: str = "new",
    service_cidrs: list[str] | None = None,
    replace: bool = True,
    prefer_same_node_gate: bool = True,
) -> str:
    """The `nft -f` text kube-proxy would write for this node and IP family.

    `replace` starts with `add table` + `delete table` so loading it replaces an older copy;
    `service_cidrs` (from the ServiceCIDR objects) adds the unallocated-IP drop rule.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    fam = _Family.of(family)
    t = f"{fam.ipx} kube-proxy"
    nodef = NodeFacts.from_node(node)
    mark = hex(1 << config.masquerade_bit)
    not_local, local = config.local_detector_nft(family, nodef.pod_cidrs)
    cidrs = [c for c in service_cidrs or [] if ipaddress.ip_network(c).version == family]
    lines = [f"add table {t}", f"delete table {t}"] if replace else []
    lines += _base(fam, t, layout, cidrs, _nodeport_ips(config, family, nodef), mark)

    for info, cip, eps in family_ports(services, slices, family, nodef.name):
        cat = categorize(info, eps, nodef.name, nodef.labels, prefer_same_node_gate, family)
        lines += _service_port(t, fam, info, cip, cat, not_local, local, config, nodef,
                               layout)
    return "\n".join(lines) + "\n"


def _service_port(t: str, fam: _Family, info, cip: str, cat, not_local: str | None,
                  local: str | None, config: ProxyConfig, node: NodeFacts,
                  layout: str) -> list[str]:
    spn, proto, port = info.svc_port_name, info.protocol, info.port
    ipx = fam.ipx
    cluster_chain, local_ch = nft_service_chain(spn, proto), nft_local_chain(spn, proto)
    ext_chain, fw_chain = nft_external_chain(spn, proto), nft_firewall_chain(spn, proto)
    family = 6 if ipx == "ip6" else 4
    (uses_cluster, uses_local, has_eps, has_internal, has_external, ext_ips, lb_ips, ranges,
     uses_ext, uses_fw) = port_policy(info, cat, family)
    internal_chain = local_ch if info.internal_local else cluster_chain
    external_policy = local_ch if info.external_local else cluster_chain
    no_ep = "drop" if has_eps else "goto reject-chain"
    out: list[str] = []
    chains: list[tuple[str, list[str]]] = []

    if uses_cluster or uses_local:
        for used, chain, eplist in ((uses_cluster, cluster_chain, cat.cluster),
                                    (uses_local, local_ch, cat.local)):
            if not used:
                continue
            rules = []
            if chain == internal_chain and has_internal:
                dport = f" {proto} dport {port}" if layout == "old" else ""
                if config.masquerade_all:
                    rules.append(f"{ipx} daddr {cip}{dport} jump mark-for-masquerade")
                elif not_local:
                    rules.append(f"{ipx} daddr {cip}{dport} {not_local} "
                                 "jump mark-for-masquerade")
            rules += _dispatch(ipx, spn, proto, eplist, info.session_affinity_seconds)
            chains.append((chain, rules))
    if uses_ext:
        rules = []
        if not info.external_local:
            rules.append("jump mark-for-masquerade")
        else:
            if local:
                rules.append(f'{local} goto {cluster_chain} comment "short-circuit pod '
                             'traffic"')
            rules.append('fib saddr type local jump mark-for-masquerade comment "masquerade '
                         'local traffic"')
            rules.append(f'fib saddr type local goto {cluster_chain} comment "short-circuit '
                         'local traffic"')
        if has_external:
            rules.append(f"goto {external_policy}")
        chains.append((ext_chain, rules))
    if uses_fw:
        allow = list(ranges)
        node_ip = node.primary_ip(family)
        if node_ip and any(ipaddress.ip_address(node_ip) in ipaddress.ip_network(r)
                           for r in ranges):
            allow += lb_ips
        chains.append((fw_chain, [f"{ipx} saddr != {{ {', '.join(allow)} }} drop"]))
    for ep in cat.all_reachable:
        chains.append(_endpoint_chain(ipx, spn, proto, ep, info.session_affinity_seconds))
    out += [f"add chain {t} {name}" for name, _ in chains]  # before any rule names them
    for name, rules in chains:
        out += [f"add rule {t} {name} {r}" for r in rules]
    if info.session_affinity_seconds is not None:
        for ep in cat.all_reachable:
            aff = nft_affinity_set(spn, proto, ep.endpoint)
            out.insert(0, f"add set {t} {aff} {{ type {fam.addr_type} ; flags dynamic,timeout ;"
                          f" timeout {info.session_affinity_seconds}s ; }}")

    out.append(f"add element {t} cluster-ips {{ {cip} }}")
    key = f"{proto} . {port}"
    if has_internal:
        out.append(f"add element {t} service-ips {{ {cip} . {key} : goto {internal_chain} }}")
    else:
        out.append(f'add element {t} no-endpoint-services {{ {cip} . {key} comment "{spn}" : '
                   f"{no_ep} }}")
    for ip in ext_ips + lb_ips:
        if has_eps:
            target = fw_chain if (uses_fw and ip in lb_ips) else ext_chain
            if target == fw_chain:
                out.append(f"add element {t} firewall-ips {{ {ip} . {key} : goto {fw_chain} }}")
            out.append(f"add element {t} service-ips {{ {ip} . {key} : goto {ext_chain} }}")
        if not has_external:
            out.append(f'add element {t} no-endpoint-services {{ {ip} . {key} comment "{spn}" '
                       f": {no_ep} }}")
    if info.node_port:
        np = f"{proto} . {info.node_port}"
        if has_eps:
            out.append(f"add element {t} service-nodeports {{ {np} : goto {ext_chain} }}")
        if not has_external:
            out.append(f'add element {t} no-endpoint-nodeports {{ {np} comment "{spn}" : '
                       f"{no_ep} }}")
    return out


def _dispatch(ipx: str, spn: str, proto: str, eplist: list[EndpointInfo],
              affinity: int | None) -> list[str]:
    """Affinity lookups, then one `numgen random mod N` vmap over the sorted endpoints."""
    rules = []
    if affinity is not None:
        for ep in eplist:
            rules.append(f"{ipx} saddr @{nft_affinity_set(spn, proto, ep.endpoint)} goto "
                         f"{nft_endpoint_chain(spn, proto, ep.endpoint)}")
    if eplist:
        entries = " , ".join(f"{i} : goto {nft_endpoint_chain(spn, proto, ep.endpoint)}"
                             for i, ep in enumerate(eplist))
        rules.append(f"numgen random mod {len(eplist)} vmap {{ {entries} }}")
    return rules


def _endpoint_chain(ipx: str, spn: str, proto: str, ep: EndpointInfo,
                    affinity: int | None) -> tuple[str, list[str]]:
    chain = nft_endpoint_chain(spn, proto, ep.endpoint)
    rules = [f"{ipx} saddr {ep.ip} jump mark-for-masquerade"]
    if affinity is not None:
        rules.append(f"update @{nft_affinity_set(spn, proto, ep.endpoint)} {{ {ipx} saddr }}")
    rules.append(f"meta l4proto {proto} dnat to {join_host_port(ep.ip, ep.port)}")
    return chain, rules


# --------------------------------------------------------------------------- listings

_ADD = re.compile(r"^add (table|chain|rule|set|map|element) (ip6?|inet) (\S+)(?: (.*))?$")
_PRIO = {-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter", 50: "security",
         100: "srcnat"}


def listing(transaction: str) -> str:
    """What `nft list ruleset` prints after loading an `add …` transaction (nft 1.0 style).

    For tests without a kernel; the kernel tests check the same answers on real listings.
    """
    tables: dict[tuple[str, str], dict] = {}
    for line in transaction.splitlines():
        m = _ADD.match(line.strip())
        if m is None:
            continue
        kind, fam, name, rest = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if kind == "table":
            t = tables.setdefault((fam, name), {"comment": None, "sets": {}, "chains": {}})
            c = re.search(r'comment "([^"]*)"', rest)
            t["comment"] = c.group(1) if c else t["comment"]
            continue
        t = tables[(fam, name)]
        obj, _, body = rest.partition(" ")
        if kind in ("set", "map"):
            opts = dict(_options(body))
            t["sets"][obj] = {"kind": kind, "opts": opts, "elements": []}
        elif kind == "chain":
            opts = dict(_options(body))
            t["chains"].setdefault(obj, {"opts": opts, "rules": []})["opts"] = opts
        elif kind == "rule":
            t["chains"][obj]["rules"].append(_listing_rule(body))
        elif kind == "element":
            t["sets"][obj]["elements"].append(body.strip()[1:-1].strip())
    out = []
    for (fam, name), t in tables.items():
        out.append(f"table {fam} {name} {{")
        if t["comment"]:
            out.append(f'\tcomment "{t["comment"]}"')
        for sname, s in t["sets"].items():
            out.append(f"\t{s['kind']} {sname} {{")
            o = s["opts"]
            out.append(f"\t\ttype {o['type']}")
            if "flags" in o:
                out.append(f"\t\tflags {o['flags']}")
            if "timeout" in o:
                out.append(f"\t\ttimeout {_duration(int(o['timeout'].rstrip('s')))}")
            if "comment" in o:
                out.append(f"\t\tcomment {o['comment']}")
            if s["elements"]:
                out.append("\t\telements = { " + ",\n\t\t\t     ".join(s["elements"]) + " }")
            out.append("\t}")
            out.append("")
        for cname, c in t["chains"].items():
            out.append(f"\tchain {cname} {{")
            o = c["opts"]
            if "type" in o:
                words = o["type"].split()  # "nat hook prerouting priority -100"
                prio = int(words[-1])
                hook = words[2]
                names = {0: "filter"} | ({-100: "dstnat"} if hook == "prerouting" else {}) \
                    | ({100: "srcnat"} if hook == "postrouting" else {})
                sym = names.get(prio) or next(
                    (f"{n} - {b - prio}" for b, n in names.items() if 0 < b - prio <= 10),
                    str(prio))
                out.append(f"\t\ttype {words[0]} hook {words[2]} priority {sym}; policy accept;")
            if "comment" in o:
                out.append(f"\t\tcomment {o['comment']}")
            out += [f"\t\t{r}" for r in c["rules"]]
            out.append("\t}")
            out.append("")
        out.append("}")
    return "\n".join(out) + "\n"


def _duration(seconds: int) -> str:
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def _options(body: str) -> list[tuple[str, str]]:
    body = body.strip()
    if not body.startswith("{"):
        return []
    out = []
    for part in body.strip("{} ").split(" ; "):
        part = part.strip(" ;")
        if not part:
            continue
        key, _, value = part.partition(" ")
        out.append((key, value))
    return out


def _listing_rule(rule: str) -> str:
    """kube-proxy's input spelling to nft's listing spelling (the forms nft prints back)."""
    rule = re.sub(r"\bmark set mark or (0x[0-9a-f]+)",
                  lambda m: f"meta mark set meta mark | 0x{int(m.group(1), 16):08x}", rule)
    rule = re.sub(r"\bmark set mark xor (0x[0-9a-f]+)",
                  lambda m: f"meta mark set meta mark ^ 0x{int(m.group(1), 16):08x}", rule)
    rule = re.sub(r"\bmark and (0x[0-9a-f]+) == 0\b",
                  lambda m: f"meta mark & 0x{int(m.group(1), 16):08x} == 0x00000000", rule)
    # one-element anonymous sets lose their braces
    rule = re.sub(r"\b([sd]addr (?:!= )?)\{ ([^{},]+) \}", r"\1\2", rule)
    return rule.replace(" , ", ", ")


def listing_json(text: str) -> str:
    """`nft -j list ruleset` for a listing (same shapes nft 1.0 prints), via the text parser."""
    from kubectl_clusterip.nftables.text_input import parse_text

    rs = parse_text(text)
    items: list[dict] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    handle = 0
    for t in rs.tables.values():
        items.append({"table": {"family": t.family, "name": t.name, "handle": 1}})
        for s in t.sets.values():
            handle += 1
            o: dict = {"family": t.family, "name": s.name, "table": t.name,
                       "type": list(s.key_types) if len(s.key_types) > 1 else s.key_types[0],
                       "handle": handle}
            if s.comment:
                o["comment"] = s.comment
            if s.flags:
                o["flags"] = [f for f in s.flags if f != "dynamic"]
            if s.timeout is not None:
                o["timeout"] = s.timeout
            if s.is_map:
                o["map"] = s.map_type
            if s.elements:
                o["elem"] = [_json_elem(e) for e in s.elements]
            items.append({"map" if s.is_map else "set": o})
        for ch in t.chains.values():
            handle += 1
            o = {"family": t.family, "table": t.name, "name": ch.name, "handle": handle}
            if ch.is_base:
                o.update(type=ch.type, hook=ch.hook, prio=ch.priority, policy=ch.policy)
            items.append({"chain": o})
        for ch in t.chains.values():
            for r in ch.rules:
                handle += 1
                o = {"family": t.family, "table": t.name, "chain": ch.name, "handle": handle,
                     "expr": r.expr}
                if r.comment:
                    o["comment"] = r.comment
                items.append({"rule": o})
    return json.dumps({"nftables": items})


def _json_elem(e) -> object:
    key = {"concat": list(e.key)} if isinstance(e.key, tuple) else e.key
    if e.comment:
        key = {"elem": {"val": key, "comment": e.comment}}
    return [key, e.value] if e.value is not None else key
