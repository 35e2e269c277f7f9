"""Real pastes from public issues and docs (tests/data/pastes/iptables/README.md cites each)
traced as worked out by hand in that README."""

from __future__ import annotations

from pathlib import Path

from kubectl_clusterip.dumps import build_dataplanes
from kubectl_clusterip.model import Packet

CORPUS = Path(__file__).parent / "data" / "pastes" / "iptables"


def dataplane(name: str):
    (dp,) = build_dataplanes([(name, (CORPUS / name).read_text())])
    return dp


def codes(trace) -> list[str]:
    return [f.code for f in trace.findings]


def test_handbook_listing_with_prose_annotations_and_names():
    dp = dataplane("handbook-nat-L-n.md")
    t = dp.trace(Packet("172.16.50.9", "192.168.3.237", 80))
    assert (t.verdict, t.service) == ("dnat", "default/webpod-service")
    assert [(c.ip, c.port, c.probability, c.masquerade) for c in t.candidates] == [
        ("172.16.16.2", 80, 0.5, False), ("172.16.91.2", 80, 0.5, False)]
    assert "PasteAssumption" not in codes(t)  # the prompt named the table
    api = dp.trace(Packet("172.16.50.9", "192.168.3.1", 443))
    assert (api.service, [(c.ip, c.port, c.probability) for c in api.candidates]) == (
        "default/kubernetes", [("192.168.190.128", 6443, 1.0)])
    hairpin = dp.trace(Packet("172.16.16.2", "192.168.3.237", 80))
    mine = next(c for c in hairpin.candidates if c.ip == "172.16.16.2")
    assert any(s.effect == "mark 0x4d415351" for s in mine.steps)


def test_47533_fragment_old_masquerade_in_kube_services_and_affinity():
    dp = dataplane("k8s-47533-save-fragment.txt")
    t = dp.trace(Packet("172.17.0.5", "10.96.0.1", 443))
    assert (t.verdict, t.service, t.candidates) == ("no-match", "default/kubernetes:https", [])
    (path,) = dp.walk(Packet("172.17.0.5", "10.96.0.1", 443))
    effects = [s.effect for s in path.steps]
    assert effects[:4] == ["jump KUBE-SERVICES", "jump KUBE-MARK-MASQ", "mark 0x4000",
                           "jump KUBE-SVC-NPX46M4PTMTKRN6Y"]
    assert "jump KUBE-SEP-6FZLAPUAJM6OKK6A" in effects and path.masquerade
    assert any("KUBE-SEP-6FZLAPUAJM6OKK6A is not in the dump" in n for n in t.notes)
    messages = [f.message for f in t.findings if f.code == "PasteAssumption"]
    assert any("carry no table" in m and "nat 8 rules" in m for m in messages)
    assert any("not in the paste (KUBE-NODEPORTS, KUBE-SEP-6FZLAPUAJM6OKK6A" in m
               for m in messages)
    assert "NoServiceRule" not in codes(t)  # a rule did capture it; the paste is partial
    # the capture is the jump to the service chain, not old kube-proxy's masquerade mark
    assert t.capture[-1].rule.endswith("-j KUBE-SVC-NPX46M4PTMTKRN6Y")
    assert "not in the paste" in t.findings[0].message  # why no endpoint is known, first
    dns = dp.walk(Packet("10.244.1.5", "10.96.0.10", 53, "udp"))
    assert [p.masquerade for p in dns] == [False]
    assert "jump KUBE-SVC-TCOU7JCQXEZGVUNU" in [s.effect for s in dns[0].steps]


def test_67572_iptables_S_t_nat_behind_a_root_prompt():
    dp = dataplane("k8s-67572-iptables-S-t-nat.txt")
    nat = dp.ruleset.table("nat")
    assert set(dp.ruleset.tables) == {"nat"}
    assert nat.rules("KUBE-MARK-DROP")[0].target_option("--set-xmark").value == "0x8000/0x8000"
    assert nat.rules("POSTROUTING")[1].target == "MASQUERADE"
    t = dp.trace(Packet("10.244.1.5", "10.96.0.1", 443))
    assert t.verdict == "no-match" and "NoServiceRule" in codes(t)
    assert "PasteAssumption" not in codes(t)


def test_26292_five_decimal_odds_across_an_elision():
    dp = dataplane("k8s-26292-consul-odds.txt")
    t = dp.trace(Packet("10.2.0.5", "192.168.0.15", 8400))
    assert (t.verdict, t.service) == ("no-match", "kube-system/consul:rpc")
    odds = {p.steps[-1].effect: round(p.probability, 11)
            for p in dp.walk(Packet("10.2.0.5", "192.168.0.15", 8400))}
    assert odds == {"jump KUBE-SEP-OBK7ESLXBESBIWIF": 0.33332999982,
                    "jump KUBE-SEP-KRXSANPX46SUX3C2": 0.33333500009,
                    "jump KUBE-SEP-VVA24HJZHJLLX4MA": 0.33333500009}
    assert any("elided (`...` at line 9)" in f.message for f in t.findings)
