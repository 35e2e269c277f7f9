"""Endpoint selection must match kube-proxy's (serviceport.go, endpointslicecache.go,
topology.go ≥v1.33): these decide which pods a node should DNAT to."""

from kubectl_clusterip.endpoints import (
    EndpointInfo,
    canonical_ip,
    categorize,
    endpoints_for,
    service_ports,
)


def make_service(ns="shop", name="web", ports=None, **spec):
    meta = {"namespace": ns, "name": name}
    if "labels" in spec:
        meta["labels"] = spec.pop("labels")
    if "annotations" in spec:
        meta["annotations"] = spec.pop("annotations")
    status = spec.pop("status", None)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
           "spec": {"clusterIP": "10.96.120.7", "clusterIPs": ["10.96.120.7"],
                    "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP",
                                        "targetPort": 8080}], **spec}}
    if status:
        svc["status"] = status
    return svc


def ep(ip, node=None, ready=None, serving=None, terminating=None, zones=None, nodes=None):
    out = {"addresses": [ip]}
    cond = {k: v for k, v in (("ready", ready), ("serving", serving),
                              ("terminating", terminating)) if v is not None}
    if cond:
        out["conditions"] = cond
    if node:
        out["nodeName"] = node
    hints = {}
    if zones:
        hints["forZones"] = [{"name": z} for z in zones]
    if nodes:
        hints["forNodes"] = [{"name": n} for n in nodes]
    if hints:
        out["hints"] = hints
    return out


def make_slice(endpoints, name="web-abc", svc="web", ns="shop", address_type="IPv4",
               ports=None, labels=None):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": svc, **(labels or {})}},
            "addressType": address_type, "endpoints": endpoints,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080,
                                                       "protocol": "TCP"}]}


def port_of(svc):
    (p,) = service_ports(svc)
    return p


def ips(eps):
    return [e.endpoint for e in eps]


# --- service_ports --------------------------------------------------------------------------

def test_service_port_fields():
    svc = make_service(sessionAffinity="ClientIP", internalTrafficPolicy="Cluster",
                       trafficDistribution="PreferClose",
                       annotations={"service.kubernetes.io/topology-mode": "Auto"})
    p = port_of(svc)
    assert (p.namespace, p.name, p.port_name, p.svc_port_name) == ("shop", "web", "http",
                                                                   "shop/web:http")
    assert (p.protocol, p.port, p.target_port, p.node_port) == ("tcp", 80, 8080, 0)
    assert p.cluster_ips == {4: "10.96.120.7"}
    assert p.session_affinity_seconds == 10800
    assert not p.internal_local and not p.external_local
    assert p.traffic_distribution == "PreferClose"
    assert p.topology_annotation == "Auto"


def test_service_ports_skips_what_kube_proxy_ignores():
    assert service_ports(make_service(clusterIP="None", clusterIPs=["None"])) == []
    assert service_ports(make_service(clusterIP="", clusterIPs=[])) == []
    assert service_ports(make_service(type="ExternalName", externalName="x.example")) == []
    assert service_ports(make_service(
        labels={"service.kubernetes.io/service-proxy-name": "other"})) == []
    assert service_ports(make_service(labels={"service.kubernetes.io/headless": ""})) == []


def test_unnamed_port_and_defaults():
    p = port_of(make_service(ports=[{"port": 53, "protocol": "UDP"}]))
    assert p.svc_port_name == "shop/web"
    assert p.protocol == "udp"
    assert p.target_port == 53
    assert p.session_affinity_seconds is None
    p = port_of(make_service(ports=[{"name": "x", "port": 1}]))
    assert p.protocol == "tcp"  # the API server's default


def test_dual_stack_and_external_fields():
    svc = make_service(
        type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=31000,
        clusterIPs=["10.96.120.7", "fd00:96::7"],
        externalIPs=["192.0.2.10", "2001:db8::10"],
        loadBalancerSourceRanges=[" 203.0.113.0/25", "2001:db8::/32"],
        ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
        status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"},
                                             {"ip": "198.51.100.2", "ipMode": "Proxy"},
                                             {"hostname": "lb.example"}]}})
    p = port_of(svc)
    assert p.cluster_ips == {4: "10.96.120.7", 6: "fd00:96::7"}
    assert p.external_ips_for(4) == ["192.0.2.10"]
    assert p.external_ips_for(6) == ["2001:db8::10"]
    assert p.lb_ips_for(4) == ["198.51.100.1"]  # Proxy-mode ingress is not a VIP
    assert p.source_ranges_for(4) == ["203.0.113.0/25"]
    assert p.source_ranges_for(6) == ["2001:db8::/32"]
    assert p.external_local and p.health_check_node_port == 31000
    assert p.externally_accessible(6)


def test_allow_all_source_range_means_no_firewall():
    p = port_of(make_service(loadBalancerSourceRanges=["10.0.0.0/8", "0.0.0.0/0"]))
    assert p.source_ranges_for(4) == []


def test_etp_local_only_counts_for_nodeport_and_lb():
    p = port_of(make_service(externalTrafficPolicy="Local"))
    assert not p.external_local


# --- endpoints_for ---------------------------------------------------------------------------

def test_sorted_lexicographically_like_kube_proxy():
    s = make_slice([ep("10.0.0.2"), ep("10.0.0.10"), ep("10.0.0.1")],
                   ports=[{"name": "http", "port": 80, "protocol": "TCP"}])
    got = endpoints_for(port_of(make_service()), [s], 4, "n1")
    # Plain string order: "10.0.0.10:80" < "10.0.0.1:80" because "0" sorts before ":".
    assert ips(got) == ["10.0.0.10:80", "10.0.0.1:80", "10.0.0.2:80"]


def test_condition_defaults_and_locality():
    s = make_slice([ep("10.244.1.5", node="n1"),
                    ep("10.244.2.7", node="n2", ready=False, serving=True, terminating=True)])
    a, b = endpoints_for(port_of(make_service()), [s], 4, "n1")
    assert (a.ready, a.serving, a.terminating, a.is_local) == (True, True, False, True)
    assert (b.ready, b.serving, b.terminating, b.is_local) == (False, True, True, False)
    assert a.endpoint == "10.244.1.5:8080"
    # An empty node name never makes anything local.
    assert not endpoints_for(port_of(make_service()), [s], 4, "")[0].is_local


def test_family_filter():
    v4 = make_slice([ep("10.244.1.5")])
    v6 = make_slice([ep("fd00:10:244::5")], name="web-v6", address_type="IPv6")
    fqdn = make_slice([ep("db.example")], name="web-fqdn", address_type="FQDN")
    p = port_of(make_service())
    assert ips(endpoints_for(p, [v4, v6, fqdn], 4, "n1")) == ["10.244.1.5:8080"]
    assert ips(endpoints_for(p, [v4, v6, fqdn], 6, "n1")) == ["[fd00:10:244::5]:8080"]


def test_port_matching_by_name_and_protocol():
    p = port_of(make_service())
    other = make_slice([ep("10.244.1.5")], ports=[{"name": "metrics", "port": 9090}])
    udp = make_slice([ep("10.244.1.5")], ports=[{"name": "http", "port": 8080,
                                                 "protocol": "UDP"}])
    nil_name = make_slice([ep("10.244.1.5")], ports=[{"port": 8080}])
    zero = make_slice([ep("10.244.1.5")], ports=[{"name": "http", "port": 0}])
    for s in (other, udp, nil_name, zero):
        assert endpoints_for(p, [s], 4, "n1") == []


def test_unnamed_service_port_matches_empty_slice_port_name():
    p = port_of(make_service(ports=[{"port": 80, "protocol": "TCP", "targetPort": 8080}]))
    s = make_slice([ep("10.244.1.5")], ports=[{"name": "", "port": 8080, "protocol": "TCP"}])
    assert ips(endpoints_for(p, [s], 4, "n1")) == ["10.244.1.5:8080"]


def test_slices_of_other_services_and_proxies_ignored():
    p = port_of(make_service())
    wrong_ns = make_slice([ep("10.244.1.5")], ns="other")
    wrong_svc = make_slice([ep("10.244.1.6")], svc="api")
    foreign = make_slice([ep("10.244.1.7")],
                         labels={"service.kubernetes.io/service-proxy-name": "x"})
    assert endpoints_for(p, [wrong_ns, wrong_svc, foreign], 4, "n1") == []


def test_duplicates_running_wins_over_terminating():
    p = port_of(make_service())
    old = make_slice([ep("10.244.1.5", ready=False, serving=True, terminating=True, node="n1")],
                     name="a")
    new = make_slice([ep("10.244.1.5", node="n2")], name="b")
    (got,) = endpoints_for(p, [old, new], 4, "n1")
    assert got.ready and got.node_name == "n2"
    # Order does not matter: a later terminating copy does not replace the running one.
    (got,) = endpoints_for(p, [new, old], 4, "n1")
    assert got.ready and got.node_name == "n2"


def test_empty_addresses_and_sloppy_ips():
    p = port_of(make_service())
    s = make_slice([{"addresses": []}, ep("010.244.001.005"), ep("not-an-ip")])
    assert canonical_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert ips(endpoints_for(p, [s], 4, "n1")) == ["10.244.1.5:8080"]
    s6 = make_slice([ep("FD00:0:0::5")], address_type="IPv6")
    assert ips(endpoints_for(p, [s6], 6, "n1")) == ["[fd00::5]:8080"]


# --- categorize ------------------------------------------------------------------------------

def E(ip, **kw):
    return EndpointInfo(ip=ip, port=80, **kw)


def test_ready_only_and_not_ready_excluded():
    p = port_of(make_service())
    eps = [E("10.0.0.1"), E("10.0.0.2", ready=False, serving=False)]
    c = categorize(p, eps, "n1", {})
    assert ips(c.cluster) == ["10.0.0.1:80"]
    assert c.local == [] and ips(c.all_reachable) == ["10.0.0.1:80"] and c.has_any


def test_terminating_serving_fallback_only_when_no_ready():
    p = port_of(make_service())
    term = E("10.0.0.2", ready=False, serving=True, terminating=True)
    not_serving = E("10.0.0.3", ready=False, serving=False, terminating=True)
    c = categorize(p, [term, not_serving], "n1", {})
    assert ips(c.cluster) == ["10.0.0.2:80"] and c.has_any
    c = categorize(p, [E("10.0.0.1"), term], "n1", {})
    assert ips(c.cluster) == ["10.0.0.1:80"]
    c = categorize(p, [not_serving], "n1", {})
    assert c.cluster == [] and not c.has_any


def test_itp_local():
    p = port_of(make_service(internalTrafficPolicy="Local"))
    local, remote = E("10.0.0.1", is_local=True), E("10.0.0.2")
    c = categorize(p, [local, remote], "n1", {})
    assert c.cluster == []  # not used: no external access
    assert ips(c.local) == ["10.0.0.1:80"] and ips(c.all_reachable) == ["10.0.0.1:80"]
    c = categorize(p, [remote], "n1", {})
    assert c.local == [] and c.all_reachable == [] and c.has_any  # DROP, not REJECT
    c = categorize(p, [E("10.0.0.1", is_local=True, ready=False, serving=True,
                         terminating=True), remote], "n1", {})
    assert ips(c.local) == ["10.0.0.1:80"]


def test_etp_local_nodeport_uses_both_lists():
    p = port_of(make_service(type="NodePort", externalTrafficPolicy="Local",
                             ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    local, remote = E("10.0.0.1", is_local=True), E("10.0.0.2")
    c = categorize(p, [local, remote], "n1", {})
    assert ips(c.cluster) == ["10.0.0.1:80", "10.0.0.2:80"]
    assert ips(c.local) == ["10.0.0.1:80"]
    assert ips(c.all_reachable) == ["10.0.0.1:80", "10.0.0.2:80"]


def test_zone_hints_applied():
    p = port_of(make_service())
    a = E("10.0.0.1", zone_hints=frozenset({"z1"}))
    b = E("10.0.0.2", zone_hints=frozenset({"z2"}))
    c = categorize(p, [a, b], "n1", {"topology.kubernetes.io/zone": "z1"})
    assert c.topology_mode == "PreferSameZone" and ips(c.cluster) == ["10.0.0.1:80"]


def test_zone_hints_not_applied():
    p = port_of(make_service())
    a = E("10.0.0.1", zone_hints=frozenset({"z1"}))
    unhinted = E("10.0.0.2")
    labels = {"topology.kubernetes.io/zone": "z1"}
    # One ready endpoint without hints disables topology.
    c = categorize(p, [a, unhinted], "n1", labels)
    assert c.topology_mode == "" and len(c.cluster) == 2
    # No endpoint hinted for this zone.
    c = categorize(p, [a, E("10.0.0.2", zone_hints=frozenset({"z2"}))], "n1",
                   {"topology.kubernetes.io/zone": "z3"})
    assert c.topology_mode == "" and len(c.cluster) == 2
    # Node without a zone label.
    assert categorize(p, [a], "n1", {}).topology_mode == ""
    # A not-ready unhinted endpoint does not count.
    c = categorize(p, [a, E("10.0.0.3", ready=False)], "n1", labels)
    assert c.topology_mode == "PreferSameZone"


def test_node_hints_and_gate():
    p = port_of(make_service())
    a = E("10.0.0.1", node_hints=frozenset({"n1"}), zone_hints=frozenset({"z1"}))
    b = E("10.0.0.2", node_hints=frozenset({"n2"}), zone_hints=frozenset({"z1"}))
    labels = {"topology.kubernetes.io/zone": "z1"}
    c = categorize(p, [a, b], "n1", labels)
    assert c.topology_mode == "PreferSameNode" and ips(c.cluster) == ["10.0.0.1:80"]
    c = categorize(p, [a, b], "n1", labels, prefer_same_node_gate=False)
    assert c.topology_mode == "PreferSameZone" and len(c.cluster) == 2
    c = categorize(p, [a, b], "n3", labels)  # no hint for this node: fall back to zone
    assert c.topology_mode == "PreferSameZone"


def test_topology_plus_local_merges_sorted():
    p = port_of(make_service(type="NodePort", externalTrafficPolicy="Local",
                             ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    other_zone_local = E("10.0.0.9", is_local=True, zone_hints=frozenset({"z2"}))
    same_zone = E("10.0.0.1", zone_hints=frozenset({"z1"}))
    c = categorize(p, [same_zone, other_zone_local], "n1", {"topology.kubernetes.io/zone": "z1"})
    assert ips(c.cluster) == ["10.0.0.1:80"]
    assert ips(c.local) == ["10.0.0.9:80"]
    assert ips(c.all_reachable) == ["10.0.0.1:80", "10.0.0.9:80"]
