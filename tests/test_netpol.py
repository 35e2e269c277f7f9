"""NetworkPolicy semantics, table-driven: each case is transcribed from upstream's e2e suite
(kubernetes/kubernetes test/e2e/network/netpol/network_policy.go, `f.It(...)` names quoted
as "e2e: ...") or from the API reference (networking.k8s.io/v1 NetworkPolicy, quoted as
"API: field"), with the allow/deny the test or the reference states.

Topology as in the e2e suite: namespaces x, y, z (each labelled
kubernetes.io/metadata.name=<ns>), pods a, b, c in each (label pod=<name>), serving 80 and
81 on TCP and UDP with named ports serve-80-tcp, serve-81-tcp, serve-80-udp.
"""

from __future__ import annotations

import pytest

from kubectl_clusterip.netpol import NS_NAME_LABEL, Peer, connection, decide, pod_peer

IPS = {"x/a": "10.244.1.10", "x/b": "10.244.1.11", "x/c": "10.244.1.12",
       "y/a": "10.244.2.10", "y/b": "10.244.2.11", "y/c": "10.244.2.12",
       "z/a": "10.244.3.10", "z/b": "10.244.3.11"}
NS_EXTRA = {"y": {"ns2": "updated"}}


def pod(ref: str, **labels: str) -> Peer:
    ns, name = ref.split("/")
    obj = {"metadata": {"namespace": ns, "name": name, "labels": {"pod": name, **labels}},
           "spec": {"nodeName": "node-" + ns, "containers": [{"ports": [
               {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
               {"name": "serve-81-tcp", "containerPort": 81},
               {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"}]}]},
           "status": {"podIP": IPS[ref]}}
    return pod_peer(obj, {NS_NAME_LABEL: ns, **NS_EXTRA.get(ns, {})})


def pol(ns: str, name: str, selector: dict | None = None, ingress: list | None = None,
        egress: list | None = None, types: list | None = None) -> dict:
    spec: dict = {"podSelector": selector if selector is not None else {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types is not None:
        spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name}, "spec": spec}


A = {"matchLabels": {"pod": "a"}}
B = {"matchLabels": {"pod": "b"}}
NS_Y = {"matchLabels": {NS_NAME_LABEL: "y"}}
NOT_X = {"matchExpressions": [{"key": NS_NAME_LABEL, "operator": "NotIn", "values": ["x"]}]}
DENY_INGRESS_X = pol("x", "deny-ingress", {}, types=["Ingress"])
DENY_ALL_X = pol("x", "deny-all", {}, types=["Ingress", "Egress"])

# (citation, policies, src, dst, port, protocol, expected allowed)
CASES = [
    # -- default deny ------------------------------------------------------------------
    ("e2e: should support a 'default-deny-ingress' policy (x->x)",
     [DENY_INGRESS_X], "x/b", "x/a", 80, "tcp", False),
    ("e2e: should support a 'default-deny-ingress' policy (y->x)",
     [DENY_INGRESS_X], "y/a", "x/a", 80, "tcp", False),
    ("e2e: should support a 'default-deny-ingress' policy (x->y unaffected)",
     [DENY_INGRESS_X], "x/a", "y/a", 80, "tcp", True),
    ("e2e: should support a 'default-deny-all' policy (egress out of x)",
     [DENY_ALL_X], "x/a", "y/a", 80, "tcp", False),
    ("e2e: should support a 'default-deny-all' policy (y->y unaffected)",
     [DENY_ALL_X], "y/a", "y/b", 80, "tcp", True),
    ("API: policyTypes omitted defaults to [Ingress]: an empty-podSelector policy with no "
     "rules denies ingress only", [pol("x", "deny", {})], "x/a", "y/a", 80, "tcp", True),
    ("API: policyTypes omitted, the same policy isolates ingress",
     [pol("x", "deny", {})], "y/a", "x/a", 80, "tcp", False),
    ("API: policyTypes default adds Egress only when spec.egress has rules (egress: [] "
     "isolates nothing)", [pol("x", "p", {}, ingress=[{}], egress=[])], "x/a", "y/a", 80,
     "tcp", True),
    ("API: policyTypes default: spec.egress with a rule makes the policy an egress policy",
     [pol("x", "p", {}, ingress=[{}], egress=[{"ports": [{"port": 81}]}])],
     "x/a", "y/a", 80, "tcp", False),
    ("e2e: should deny egress from pods based on PodSelector",
     [pol("x", "deny-egress-pod-a", A, types=["Egress"])], "x/a", "y/a", 80, "tcp", False),
    ("e2e: should deny egress from pods based on PodSelector (x/b not selected)",
     [pol("x", "deny-egress-pod-a", A, types=["Egress"])], "x/b", "y/a", 80, "tcp", True),
    ("e2e: should deny egress from all pods in a namespace",
     [pol("x", "deny-egress-ns-x", {}, types=["Egress"])], "x/a", "x/b", 80, "tcp", False),
    # -- podSelector / namespaceSelector ----------------------------------------------------
    ("e2e: should enforce policy to allow traffic from pods within server namespace based "
     "on PodSelector (x/b allowed)", [pol("x", "x-a-allows-x-b", A, [{"from": [
         {"podSelector": B}]}])], "x/b", "x/a", 80, "tcp", True),
    ("e2e: ... based on PodSelector (x/c denied)", [pol("x", "x-a-allows-x-b", A, [{"from": [
        {"podSelector": B}]}])], "x/c", "x/a", 80, "tcp", False),
    ("e2e: ... based on PodSelector (y/b denied: a bare podSelector means the policy's "
     "namespace)", [pol("x", "x-a-allows-x-b", A, [{"from": [{"podSelector": B}]}])],
     "y/b", "x/a", 80, "tcp", False),
    ("e2e: should enforce policy to allow ingress traffic from pods in all namespaces",
     [pol("x", "allow-from-another-ns", A, [{"from": [{"namespaceSelector": {}}]}])],
     "z/a", "x/a", 80, "tcp", True),
    ("e2e: should enforce policy to allow traffic only from a different namespace, based on "
     "NamespaceSelector (y allowed)", [pol("x", "p", A, [{"from": [
         {"namespaceSelector": NS_Y}]}])], "y/a", "x/a", 80, "tcp", True),
    ("e2e: ... based on NamespaceSelector (x denied: own namespace not selected)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NS_Y}]}])], "x/b", "x/a", 80, "tcp",
     False),
    ("e2e: should enforce policy based on PodSelector with MatchExpressions",
     [pol("x", "p", A, [{"from": [{"podSelector": {"matchExpressions": [
         {"key": "pod", "operator": "In", "values": ["b"]}]}}]}])],
     "x/b", "x/a", 80, "tcp", True),
    ("e2e: should enforce policy based on NamespaceSelector with MatchExpressions (z denied)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": {"matchExpressions": [
         {"key": NS_NAME_LABEL, "operator": "In", "values": ["y"]}]}}]}])],
     "z/a", "x/a", 80, "tcp", False),
    ("e2e: should enforce policy based on PodSelector or NamespaceSelector (x/b via pod)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NOT_X}, {"podSelector": B}]}])],
     "x/b", "x/a", 80, "tcp", True),
    ("e2e: should enforce policy based on PodSelector or NamespaceSelector (x/c denied)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NOT_X}, {"podSelector": B}]}])],
     "x/c", "x/a", 80, "tcp", False),
    ("e2e: should enforce policy based on PodSelector or NamespaceSelector (y/a via ns)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NOT_X}, {"podSelector": B}]}])],
     "y/a", "x/a", 80, "tcp", True),
    ("TRAP e2e: should enforce policy based on PodSelector and NamespaceSelector (one peer, "
     "both selectors: y/b matches both)", [pol("x", "p", A, [{"from": [
         {"namespaceSelector": NOT_X, "podSelector": B}]}])], "y/b", "x/a", 80, "tcp", True),
    ("TRAP e2e: ... PodSelector and NamespaceSelector (x/b: pod matches, namespace not)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NOT_X, "podSelector": B}]}])],
     "x/b", "x/a", 80, "tcp", False),
    ("TRAP e2e: ... PodSelector and NamespaceSelector (y/a: namespace matches, pod not)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NOT_X, "podSelector": B}]}])],
     "y/a", "x/a", 80, "tcp", False),
    ("e2e: should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NOT_X, "podSelector": {
         "matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}])],
     "y/c", "x/a", 80, "tcp", True),
    ("e2e: should enforce policy based on any PodSelectors (x/c)",
     [pol("x", "p", A, [{"from": [{"podSelector": B}, {"podSelector": {
         "matchLabels": {"pod": "c"}}}]}])], "x/c", "x/a", 80, "tcp", True),
    ("e2e: should allow ingress access from updated namespace (label ns2=updated)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}])],
     "y/a", "x/a", 80, "tcp", True),
    ("e2e: should deny ingress from pods on other namespaces (podSelector {} = own ns only)",
     [pol("x", "deny-empty-policy", {}, [{"from": [{"podSelector": {}}]}])],
     "y/a", "x/a", 80, "tcp", False),
    ("e2e: should deny ingress access to updated pod (selector target=isolated misses x/a)",
     [pol("x", "p", {"matchLabels": {"target": "isolated"}}, types=["Ingress"])],
     "y/a", "x/a", 80, "tcp", True),
    ("API: matchExpressions DoesNotExist selects pods without the key",
     [pol("x", "p", {"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]},
          types=["Ingress"])], "y/a", "x/a", 80, "tcp", False),
    # -- ports, protocols, named ports, endPort ----------------------------------------------
    ("e2e: should enforce policy based on Ports (y on 81 allowed)",
     [pol("x", "p", A, [{"from": [{"namespaceSelector": NS_Y}], "ports": [
         {"port": 81, "protocol": "TCP"}]}])], "y/a", "x/a", 81, "tcp", True),
    ("e2e: should enforce multiple, stacked policies with overlapping podSelectors (80 "
     "denied until the second policy)", [pol("x", "p81", A, [{"from": [
         {"namespaceSelector": NS_Y}], "ports": [{"port": 81}]}])], "y/a", "x/a", 80, "tcp",
     False),
    ("e2e: should enforce multiple, stacked policies with overlapping podSelectors "
     "(additive: the port-80 policy opens 80)", [
         pol("x", "p81", A, [{"from": [{"namespaceSelector": NS_Y}], "ports": [{"port": 81}]}]),
         pol("x", "p80", A, [{"from": [{"namespaceSelector": NS_Y}], "ports": [{"port": 80}]}])],
     "y/a", "x/a", 80, "tcp", True),
    ("e2e: should support allow-all policy", [pol("x", "allow-all", {}, [{}])],
     "y/a", "x/a", 81, "tcp", True),
    ("e2e: should allow ingress access on one named port (81 via serve-81-tcp)",
     [pol("x", "allow-all", {}, [{"ports": [{"port": "serve-81-tcp"}]}])],
     "y/a", "x/a", 81, "tcp", True),
    ("e2e: should allow ingress access on one named port (80 denied)",
     [pol("x", "allow-all", {}, [{"ports": [{"port": "serve-81-tcp"}]}])],
     "y/a", "x/a", 80, "tcp", False),
    ("e2e: should allow egress access on one named port (named port of the destination)",
     [pol("x", "allow-egress", {}, egress=[{"ports": [{"port": "serve-80-tcp"}]}])],
     "x/a", "y/a", 80, "tcp", True),
    ("e2e: should allow egress access on one named port (81 denied)",
     [pol("x", "allow-egress", {}, egress=[{"ports": [{"port": "serve-80-tcp"}]}])],
     "x/a", "y/a", 81, "tcp", False),
    ("API: NetworkPolicyPort.port a name: the protocol must match the named port's too",
     [pol("x", "p", {}, [{"ports": [{"port": "serve-80-tcp", "protocol": "UDP"}]}])],
     "y/a", "x/a", 80, "udp", False),
    ("e2e: should enforce ingress policy allowing any port traffic to a server on a specific "
     "protocol (TCP allowed)", [pol("x", "p", A, [{"ports": [{"protocol": "TCP"}]}])],
     "y/a", "x/a", 80, "tcp", True),
    ("e2e: ... on a specific protocol (UDP denied)",
     [pol("x", "p", A, [{"ports": [{"protocol": "TCP"}]}])], "y/a", "x/a", 80, "udp", False),
    ("e2e: should not allow access by TCP when a policy specifies only UDP",
     [pol("x", "p", A, [{"ports": [{"port": 81, "protocol": "UDP"}]}])],
     "y/a", "x/a", 81, "tcp", False),
    ("e2e: should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin "
     "doesn't support SCTP", [DENY_INGRESS_X, pol("x", "sctp81", A, [{"ports": [
         {"port": 81, "protocol": "SCTP"}]}])], "y/a", "x/a", 81, "tcp", False),
    ("API: NetworkPolicyPort.protocol defaults to TCP",
     [pol("x", "p", A, [{"ports": [{"port": 53}]}])], "y/a", "x/a", 53, "udp", False),
    ("API: NetworkPolicyPort.endPort: the range port..endPort is inclusive (upper bound)",
     [pol("x", "p", A, [{"ports": [{"port": 8000, "endPort": 8080}]}])],
     "y/a", "x/a", 8080, "tcp", True),
    ("API: NetworkPolicyPort.endPort: one past the range is denied",
     [pol("x", "p", A, [{"ports": [{"port": 8000, "endPort": 8080}]}])],
     "y/a", "x/a", 8081, "tcp", False),
    # -- ipBlock -----------------------------------------------------------------------------
    ("e2e: should allow egress access to server in CIDR block (pod IP /32)",
     [pol("x", "p", A, egress=[{"to": [{"ipBlock": {"cidr": IPS["y/b"] + "/32"}}]}])],
     "x/a", "y/b", 80, "tcp", True),
    ("e2e: should allow egress access to server in CIDR block (y/a not in block)",
     [pol("x", "p", A, egress=[{"to": [{"ipBlock": {"cidr": IPS["y/b"] + "/32"}}]}])],
     "x/a", "y/a", 80, "tcp", False),
    ("TRAP e2e: should enforce except clause while egress access to server in CIDR block",
     [pol("x", "p", A, egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [
         IPS["x/b"] + "/32"]}}]}])], "x/a", "x/b", 80, "tcp", False),
    ("TRAP e2e: ... except clause (x/c, in the CIDR and not excepted, allowed)",
     [pol("x", "p", A, egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [
         IPS["x/b"] + "/32"]}}]}])], "x/a", "x/c", 80, "tcp", True),
    ("TRAP e2e: should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is "
     "allowed (a second policy's block admits it)", [
         pol("x", "p1", A, egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [
             IPS["x/b"] + "/32"]}}]}]),
         pol("x", "p2", A, egress=[{"to": [{"ipBlock": {"cidr": IPS["x/b"] + "/32"}}]}])],
     "x/a", "x/b", 80, "tcp", True),
    ("API: IPBlock matches by address only, never by the peer's labels (ingress from y/a's IP)",
     [pol("x", "p", A, [{"from": [{"ipBlock": {"cidr": "10.244.2.0/24"}}]}])],
     "y/a", "x/a", 80, "tcp", True),
    # -- both directions -----------------------------------------------------------------------
    ("e2e: should enforce policies to check ingress and egress policies can be controlled "
     "independently based on PodSelector (b->a denied by a's ingress)", [
         pol("x", "allow-egress-for-target", A, egress=[{}], types=["Egress"]),
         pol("x", "deny-ingress-via-label-selector", A, types=["Ingress"])],
     "x/b", "x/a", 80, "tcp", False),
    ("e2e: ... controlled independently (a->b allowed by a's egress)", [
         pol("x", "allow-egress-for-target", A, egress=[{}], types=["Egress"]),
         pol("x", "deny-ingress-via-label-selector", A, types=["Ingress"])],
     "x/a", "x/b", 80, "tcp", True),
    ("e2e: should support denying of egress traffic on the client side (even if the server "
     "explicitly allows this traffic)", [
         pol("x", "allow-to-ns-y-pod-a", A, egress=[{"to": [
             {"namespaceSelector": NS_Y, "podSelector": A}]}]),
         pol("y", "allow-from-xa-on-yb", B, [{"from": [
             {"namespaceSelector": {"matchLabels": {NS_NAME_LABEL: "x"}}, "podSelector": A}]}])],
     "x/a", "y/b", 80, "tcp", False),
    ("e2e: ... denying of egress traffic on the client side (x/a -> y/a allowed)", [
         pol("x", "allow-to-ns-y-pod-a", A, egress=[{"to": [
             {"namespaceSelector": NS_Y, "podSelector": A}]}])],
     "x/a", "y/a", 80, "tcp", True),
    ("e2e: should work with Ingress, Egress specified together (egress 81 denied)",
     [pol("x", "p", A, [{"from": [{"podSelector": B}]}], [{"ports": [{"port": 80}]}],
          ["Egress", "Ingress"])], "x/a", "y/a", 81, "tcp", False),
    ("e2e: should enforce multiple egress policies with egress allow-all policy taking "
     "precedence", [pol("x", "allow-egress-port-80", {}, egress=[{"ports": [{"port": 80}]}]),
                    pol("x", "allow-egress", {}, egress=[{}])], "x/a", "y/a", 81, "tcp", True),
    ("e2e: should enforce multiple ingress policies with ingress allow-all policy taking "
     "precedence", [pol("x", "allow-ingress-port-80", {}, [{"ports": [{"port": 80}]}]),
                    pol("x", "allow-ingress", {}, [{}])], "y/a", "x/a", 81, "tcp", True),
    ("e2e: should stop enforcing policies after they are deleted (no policy left)",
     [], "y/a", "x/a", 80, "tcp", True),
]


@pytest.mark.parametrize("cite,policies,src,dst,port,proto,allowed", CASES,
                         ids=[c[0][:90] for c in CASES])
def test_case(cite, policies, src, dst, port, proto, allowed):
    egress, ingress = connection(policies, pod(src), pod(dst), port, proto)
    assert (egress.allowed and ingress.allowed) == allowed, (egress, ingress)


def test_there_are_at_least_forty_cases_with_traps():
    assert len(CASES) >= 40
    assert sum(c[0].startswith("TRAP") for c in CASES) >= 5


def test_denial_names_every_selecting_policy_and_why():
    pols = [DENY_INGRESS_X, pol("x", "p81", A, [{"from": [{"namespaceSelector": NS_Y}],
                                                 "ports": [{"port": 81}]}])]
    d = decide(pols, pod("z/a"), pod("x/a"), 81, "tcp", "ingress")
    assert not d.allowed and d.policies == ("x/deny-ingress", "x/p81")
    assert d.why_not[0] == "x/deny-ingress: no ingress rule (denies all ingress)"
    assert "no from entry matches z/a" in d.why_not[1]
    assert "namespaceSelector kubernetes.io/metadata.name=y" in d.why_not[1]


def test_allowed_names_the_rule():
    pols = [pol("x", "p", A, [{"from": [{"podSelector": B}]}, {"from": [
        {"namespaceSelector": NS_Y}]}])]
    d = decide(pols, pod("y/a"), pod("x/a"), 80, "tcp", "ingress")
    assert d.allowed and d.admitted_by.startswith("x/p spec.ingress[1]: from[0] namespaceSelector")


def test_the_pods_own_node_is_always_allowed_and_other_nodes_only_by_ipblock():
    node = Peer("172.18.0.2", "node node-x", node="node-x")
    other = Peer("172.18.0.4", "node node-y", node="node-y")
    assert decide([DENY_INGRESS_X], node, pod("x/a"), 80, "tcp", "ingress").allowed
    assert not decide([DENY_INGRESS_X], other, pod("x/a"), 80, "tcp", "ingress").allowed
    by_block = pol("x", "nodes", A, [{"from": [{"ipBlock": {"cidr": "172.18.0.0/16"}}]}])
    assert decide([by_block], other, pod("x/a"), 80, "tcp", "ingress").allowed
    any_ns = pol("x", "ns", A, [{"from": [{"namespaceSelector": {}}]}])
    assert not decide([any_ns], other, pod("x/a"), 80, "tcp", "ingress").allowed


def test_host_network_pods_are_not_selected():
    hn = pod_peer({"metadata": {"namespace": "x", "name": "h"},
                   "spec": {"hostNetwork": True, "nodeName": "n"},
                   "status": {"podIP": "172.18.0.2"}})
    assert not hn.is_pod
    assert decide([DENY_ALL_X], hn, pod("y/a"), 80, "tcp", "egress").allowed
