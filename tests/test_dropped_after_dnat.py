"""A packet kube-proxy DNATs as programmed and a NetworkPolicy agent then drops on its way to
the endpoint pod is not kube-proxy drift: `DroppedAfterDnat` names the chain and rule.

The policy chains are modelled on kube-router's netpol controller as pasted from real nodes:
k0sproject/k0s#2849 and k3s-io/k3s#3373 (`KUBE-POD-FW-…` per local pod: stateful ACCEPT,
INVALID DROP, addrtype LOCAL ACCEPT, `KUBE-NWPLCY-…` jumps, NFLOG then REJECT when mark
0x10000 is unset, then the 0x20000 accept mark) and k3s-io/k3s#10010 (`KUBE-ROUTER-FORWARD`
jumping per pod address `-d POD -j KUBE-POD-FW-…`). kube-router enforces ingress on the
destination pod's node, so the dropped endpoint is web-1, on the client's node kind-worker.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import snapshots as S
from test_diagnose import codes, trace, with_dump
from test_diagnose_policy import policy

from kubectl_clusterip.model import Node
from kubectl_clusterip.render import trace_report

POD_FW = "KUBE-POD-FW-4H3XLAYJZ6N5M7QB"
NWPLCY = "KUBE-NWPLCY-5LXFJDSJ2ZBBXHNR"
REJECT = (f'-A {POD_FW} -m comment --comment "rule to REJECT traffic destined for POD '
          f'name:web-1 namespace: shop" -m mark ! --mark 0x10000/0x10000 -j REJECT '
          "--reject-with icmp-port-unreachable")
CHAINS = [":KUBE-NWPLCY-DEFAULT - [0:0]", f":{NWPLCY} - [0:0]", f":{POD_FW} - [0:0]",
          ":KUBE-ROUTER-FORWARD - [0:0]"]
RULES = [
    '-A KUBE-NWPLCY-DEFAULT -m comment --comment "rule to mark traffic matching a network '
    'policy" -j MARK --set-xmark 0x10000/0x10000',
    f'-A {POD_FW} -m comment --comment "rule for stateful firewall for pod" -m conntrack '
    "--ctstate RELATED,ESTABLISHED -j ACCEPT",
    f'-A {POD_FW} -m comment --comment "rule to drop invalid state for pod" -m conntrack '
    "--ctstate INVALID -j DROP",
    f'-A {POD_FW} -d {S.WEB1}/32 -m comment --comment "rule to permit the traffic traffic to '
    "pods when source is the pod\\'s local node\" -m addrtype --src-type LOCAL -j ACCEPT",
    f'-A {POD_FW} -s {S.WEB1}/32 -m comment --comment "run through default egress network '
    'policy  chain" -j KUBE-NWPLCY-DEFAULT',
    f'-A {POD_FW} -d {S.WEB1}/32 -m comment --comment "run through nw policy web-1-deny" '
    f"-j {NWPLCY}",
    f'-A {POD_FW} -m comment --comment "rule to log dropped traffic POD name:web-1 namespace: '
    'shop" -m mark ! --mark 0x10000/0x10000 -m limit --limit 10/min --limit-burst 10 '
    "-j NFLOG --nflog-group 100",
    REJECT,
    f"-A {POD_FW} -j MARK --set-xmark 0x0/0x10000",
    f'-A {POD_FW} -m comment --comment "set mark to ACCEPT traffic that comply to network '
    'policies" -j MARK --set-xmark 0x20000/0x20000',
    f'-A KUBE-ROUTER-FORWARD -d {S.WEB1}/32 -m comment --comment "rule to jump traffic '
    f'destined to POD name:web-1 namespace: shop to chain {POD_FW}" -j {POD_FW}',
    '-A KUBE-ROUTER-FORWARD -m comment --comment "rule to explicitly ACCEPT traffic that '
    'comply to network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT',
]
FORWARD_JUMP = ('-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" '
                "-j KUBE-ROUTER-FORWARD")


def kube_router(text: str) -> str:
    """The healthy node's dump with kube-router's policy chains in filter, its FORWARD jump
    first (kube-router inserts at position 1), as iptables-save orders them."""
    head, sep, filt = text.partition("*filter\n")
    assert sep
    decl_end = filt.index("\n-A ") + 1
    filt = filt[:decl_end] + "\n".join(CHAINS) + "\n" + filt[decl_end:]
    first_forward = filt.index("-A FORWARD ")
    filt = filt[:first_forward] + FORWARD_JUMP + "\n" + filt[first_forward:]
    commit = filt.index("COMMIT")
    filt = filt[:commit] + "\n".join(RULES) + "\n" + filt[commit:]
    return head + sep + filt


def test_policy_reject_of_one_endpoint_is_not_drift():
    t = trace(with_dump(S.load("healthy"), kube_router))
    assert t.verdict == "dnat"
    got = [f for f in t.findings if f.code == "DroppedAfterDnat"]
    assert len(got) == 1, codes(t)
    f = got[0]
    assert (f.severity, f.step) == ("warning", "forward")  # web-2 still answers
    assert f"{S.WEB1}:8080" in f.message and f"filter {POD_FW}" in f.message
    assert "rejected" in f.message and "50.0%" in f.message
    assert f.evidence == REJECT
    for drift in ("MissingEndpointRules", "PartialDispatch", "StaleEndpointRules",
                  "DroppedByRule"):
        assert drift not in codes(t)
    by_ip = {c.ip: c for c in t.candidates}
    assert by_ip[S.WEB1].extra["droppedBy"] == {
        "table": "filter", "chain": POD_FW, "rule": REJECT, "verdict": "reject",
        "probability": 0.5}
    assert "droppedBy" not in by_ip[S.WEB2].extra
    assert t.extra["expected"]["endpoints"] == [f"{S.WEB1}:8080", f"{S.WEB2}:8080"]
    assert t.extra["summary"].startswith("OK with")
    assert t.to_dict()["dnat"][0]["droppedBy"]["chain"] == POD_FW


def test_hint_points_at_the_network_policy_that_denies():
    def edit(objs):
        S.find(objs, "Pod", "shop", "web-1")["metadata"]["labels"]["tier"] = "locked"
        objs.append(policy("web-1-deny", selector={"matchLabels": {"tier": "locked"}},
                           policyTypes=["Ingress"]))
    snap = with_dump(S.mutate(S.load("healthy"), edit), kube_router)
    t = trace(snap)
    f = next(f for f in t.findings if f.code == "DroppedAfterDnat")
    deny = next(f for f in t.findings if f.code == "NetworkPolicyDeniesIngress")
    assert "shop/web-1" in deny.message and "web-2" not in deny.message
    assert f.hint.startswith("NetworkPolicyDeniesIngress") and "web-1-deny" in f.hint


def test_admitting_policies_say_the_rule_is_not_theirs():
    snap = with_dump(S.mutate(S.load("healthy"), lambda objs: objs.append(
        policy("allow-all", ingress=[{}]))), kube_router)
    f = next(f for f in trace(snap).findings if f.code == "DroppedAfterDnat")
    assert "admit this path" in f.hint


def test_kube_proxy_own_drop_keeps_its_meaning():
    """A DROP in kube-proxy's own KUBE-FORWARD is not a foreign rule: the old reading holds
    (kube-proxy's ruleset does not deliver web-2)."""
    rule = f"-A KUBE-FORWARD -d {S.WEB2}/32 -j DROP"
    t = trace(with_dump(S.load("healthy"), lambda text: text.replace(
        "-A KUBE-FORWARD ", rule + "\n-A KUBE-FORWARD ", 1)))
    assert "DroppedAfterDnat" not in codes(t)
    assert "PartialDispatch" in codes(t)


def test_text_report_shows_the_drop_at_forwarding():
    t = trace(with_dump(S.load("healthy"), kube_router))
    out = trace_report(t, Node(name=S.NODE))
    assert f"{S.WEB1}:8080: same node (kind-worker): REJECT by filter {POD_FW}" in out
    assert f"{S.WEB1}:8080: none, the request never arrives" in out


def test_a_forward_policy_drop_is_named():
    """FORWARD policy DROP with only web-2 accepted: no rule drops web-1, the policy does."""
    def edit(text: str) -> str:
        text = text.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]", 1)
        return text.replace("-A FORWARD ", f"-A FORWARD -d {S.WEB2}/32 -j ACCEPT\n-A FORWARD ", 1)
    t = trace(with_dump(S.load("healthy"), edit))
    f = next(f for f in t.findings if f.code == "DroppedAfterDnat")
    assert f"{S.WEB1}:8080" in f.message and "dropped by filter FORWARD" in f.message
    assert f.evidence.startswith("policy DROP after: -A FORWARD ")
    assert "PartialDispatch" not in codes(t)
