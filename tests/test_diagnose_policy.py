"""NetworkPolicy findings on the healthy snapshot plus policies: the trace's client
(shop/client, app=client, on kind-worker) -> web.shop:80 -> web-1 (kind-worker) and web-2
(kind-worker2) on targetPort 8080."""

from __future__ import annotations

import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import snapshots as S

from kubectl_clusterip.engine import Request, run_trace
from kubectl_clusterip.findings import CODES
from kubectl_clusterip.model import Trace
from kubectl_clusterip.snapshot import Snapshot

WEB = {"matchLabels": {"app": "web"}}
CLIENT = {"matchLabels": {"app": "client"}}


def policy(name: str, ns: str = "shop", selector: dict | None = None, **spec) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": selector if selector is not None else WEB, **spec}}


def with_objects(*extra: dict, daemonsets: dict | None = None) -> Snapshot:
    snap = S.load("healthy")
    objects = copy.deepcopy(snap.objects)
    if daemonsets:
        for o in objects:
            if o["kind"] == "DaemonSet" and o["metadata"]["name"] in daemonsets:
                o.update(copy.deepcopy(daemonsets[o["metadata"]["name"]]))
    return Snapshot(snap.meta, objects + list(extra), snap.nodes, snap.source)


def trace(snap: Snapshot) -> Trace:
    (t,) = run_trace(snap, Request(target="shop/web"))
    return t


def found(t: Trace, code: str):
    got = [f for f in t.findings if f.code == code]
    assert len(got) == 1, [f.code for f in t.findings]
    assert (got[0].severity, got[0].step) == CODES[code]
    return got[0]


FRONTEND_ONLY = policy("web-from-frontend", ingress=[
    {"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}]}])


def test_ingress_denied_names_the_policy_and_why():
    t = trace(with_objects(FRONTEND_ONLY))
    f = found(t, "NetworkPolicyDeniesIngress")
    assert "shop/web-1" in f.message and "shop/web-2" in f.message
    assert "8080/TCP" in f.message and "shop/web-from-frontend" in f.message
    assert f.evidence == ("shop/web-from-frontend: ingress[0]: no from entry matches "
                          "shop/client: podSelector app=frontend")
    assert f.hint == "kubectl get networkpolicy -n shop web-from-frontend -o yaml"
    assert t.extra["summary"].startswith("BROKEN at step 5 (forward): NetworkPolicyDeniesIngress")


def test_policy_on_the_service_port_instead_of_the_target_port_denies():
    """The pre-/post-DNAT trap: port 80 is the Service's port; the pod sees 8080."""
    pol = policy("web-80", ingress=[{"from": [{"podSelector": CLIENT}], "ports": [{"port": 80}]}])
    f = found(trace(with_objects(pol)), "NetworkPolicyDeniesIngress")
    assert "ports 80/TCP do not include 8080/TCP" in f.evidence


def test_allowed_says_which_rule():
    pol = policy("web-from-client", ingress=[
        {"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}]},
        {"from": [{"podSelector": CLIENT}], "ports": [{"port": "http"}]}])
    t = trace(with_objects(FRONTEND_ONLY, pol))
    f = found(t, "NetworkPolicyAllows")
    assert "shop/web-from-client spec.ingress[1]: from[0] podSelector app=client" in f.message
    assert not [x for x in t.findings if x.severity == "error"]


def test_egress_to_the_cluster_ip_is_not_egress_to_the_pods():
    pol = policy("client-egress", selector=CLIENT, policyTypes=["Egress"],
                 egress=[{"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}]}])
    t = trace(with_objects(pol))
    f = found(t, "NetworkPolicyDeniesEgress")
    assert "egress of shop/client to shop/web-1, shop/web-2" in f.message
    assert "ipBlock 10.96.0.0/12" in f.evidence
    d = found(t, "NetworkPolicyDeniesDns")  # and CoreDNS's pods are not in 10.96/12 either
    assert "53/UDP" in d.message


def test_egress_allowing_the_pod_cidr_and_dns():
    pol = policy("client-egress", selector=CLIENT, policyTypes=["Egress"], egress=[
        {"to": [{"ipBlock": {"cidr": "10.244.0.0/16"}}], "ports": [{"port": 8080}]},
        {"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
         "ports": [{"port": 53, "protocol": "UDP"}]}])
    t = trace(with_objects(pol))
    assert not [x for x in t.findings if x.code.startswith("NetworkPolicyDenies")]
    assert "egress of shop/client by shop/client-egress spec.egress[0]" in found(
        t, "NetworkPolicyAllows").message


KINDNET_023 = {"spec": {"template": {"spec": {"containers": [
    {"name": "kindnet-cni", "image": "docker.io/kindest/kindnetd:v20240513-cd2ac642"}]}}}}
KINDNET_024 = {"spec": {"template": {"spec": {"containers": [
    {"name": "kindnet-cni", "image": "docker.io/kindest/kindnetd:v20240813-c6f155d6"}]}}}}


def test_old_kindnet_does_not_enforce():
    t = trace(with_objects(FRONTEND_ONLY, daemonsets={"kindnet": KINDNET_023}))
    f = found(t, "NetworkPolicyNotEnforced")
    assert "kindnetd:v20240513-cd2ac642" in f.evidence and "kind 0.24" in f.evidence
    assert "would deny shop/web-1, shop/web-2" in f.message
    assert not [x for x in t.findings if x.severity == "error"]


def test_kindnet_of_kind_024_or_unknown_version_enforces_or_is_not_claimed():
    for ds in (KINDNET_024, None):
        t = trace(with_objects(FRONTEND_ONLY, daemonsets={"kindnet": ds} if ds else None))
        found(t, "NetworkPolicyDeniesIngress")
        assert "NetworkPolicyNotEnforced" not in [x.code for x in t.findings]


def test_flannel_alone_does_not_enforce_but_canal_does():
    flannel = {"metadata": {"namespace": "kube-system", "name": "kube-flannel-ds"}}
    t = trace(with_objects(FRONTEND_ONLY, daemonsets={"kindnet": flannel}))
    assert "flannel (DaemonSet kube-flannel-ds)" in found(t, "NetworkPolicyNotEnforced").evidence
    canal = {"apiVersion": "apps/v1", "kind": "DaemonSet",
             "metadata": {"namespace": "kube-system", "name": "canal"}}
    t = trace(with_objects(FRONTEND_ONLY, canal, daemonsets={"kindnet": flannel}))
    found(t, "NetworkPolicyDeniesIngress")


def test_namespace_labels_come_from_the_namespace_object():
    pol = policy("web-from-team", ingress=[{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "shop"}}}]}])
    found(trace(with_objects(pol)), "NetworkPolicyDeniesIngress")
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {
        "kubernetes.io/metadata.name": "shop", "team": "shop"}}}
    found(trace(with_objects(pol, ns)), "NetworkPolicyAllows")


def test_not_checked_is_a_note_not_a_finding():
    snap = with_objects()
    snap.meta = {**snap.meta, "networkPolicyNotChecked": "forbidden: list networkpolicies"}
    t = trace(snap)
    assert "NetworkPolicy not checked: forbidden: list networkpolicies" in t.extra[
        "diagnosisNotes"]
    assert not [x for x in t.findings if x.code.startswith("NetworkPolicy")]


# -- live capture over the fake API server --------------------------------------------------


def test_live_capture_carries_policies_and_namespaces(tmp_path):
    from fakeapi import FakeCluster
    from test_live_trace import populate, run

    with FakeCluster() as fc:
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        populate(fc)
        fc.add({**policy("web-from-frontend", ns="default"), "spec": FRONTEND_ONLY["spec"]})
        fc.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default",
                "labels": {"kubernetes.io/metadata.name": "default"}}})
        r = run(fc, tmp_path, "trace", "web", "--from", "client", "-o", "json")
        assert r.exit_code == 1, r.stderr
        doc = json.loads(r.stdout)
        codes = [f["code"] for f in doc["findings"]]
        assert "NetworkPolicyDeniesIngress" in codes
        paths = [p for _, p in fc.api_requests()]
        assert "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies" in paths
        assert "/api/v1/namespaces/default" in paths

        fc.forbid("list", "networkpolicies", "default")
        r = run(fc, tmp_path, "trace", "web", "--from", "client", "-o", "json")
        assert r.exit_code == 0, r.stderr
        warnings = [x for x in r.stderr.splitlines() if "NetworkPolicy not checked" in x]
        assert len(warnings) == 1 and "networkpolicies" in warnings[0]
        doc = json.loads(r.stdout)
        assert any("NetworkPolicy not checked" in n for n in doc["diagnosisNotes"])


def test_flannel_with_calico_elsewhere_is_not_claimed():
    """Calico installed by its operator runs in calico-system (not captured) but annotates
    the nodes: then nothing is claimed about enforcement."""
    snap = with_objects(FRONTEND_ONLY, daemonsets={"kindnet": {"metadata": {
        "namespace": "kube-system", "name": "kube-flannel-ds"}}})
    for o in snap.objects:
        if o["kind"] == "Node":
            o["metadata"]["annotations"] = {"projectcalico.org/IPv4Address": "172.18.0.2/16"}
    t = trace(snap)
    assert "NetworkPolicyNotEnforced" not in [f.code for f in t.findings]
    found(t, "NetworkPolicyDeniesIngress")


def test_a_masqueraded_request_reaches_the_endpoint_from_the_node():
    """Hairpin: web-1 calls its own Service. To itself it is masqueraded, so it arrives from
    its own node (always allowed); to web-2 it is not, and web-2 sees pod web-1 (app=web)."""
    (t,) = run_trace(with_objects(FRONTEND_ONLY), Request(target="shop/web", source_ip=S.WEB1))
    assert {c.ip: c.masquerade for c in t.candidates} == {S.WEB1: True, S.WEB2: False}
    f = found(t, "NetworkPolicyDeniesIngress")
    assert "1 of 2 endpoints (shop/web-2)" in f.message and "from shop/web-1" in f.message
