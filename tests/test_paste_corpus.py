"""Real nftables / IPVS / ipset pastes from public issues and docs (tests/data/pastes/nftables
and ipvs; sources and the hand-worked answers in the README.md beside them), traced the way
`--rules-file` reads them: paste cleaning, format detection, parser and walker."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubectl_clusterip import paste
from kubectl_clusterip.dumps import build_dataplanes
from kubectl_clusterip.ipvs.ipset import parse_ipset
from kubectl_clusterip.model import Packet, Trace

DATA = Path(__file__).parent / "data" / "pastes"
CLIENT = "10.244.0.5"


def trace(name: str, ip: str, port: int, proto: str = "tcp") -> Trace:
    (dp,) = build_dataplanes([(name, (DATA / name).read_text())])
    return dp.trace(Packet(CLIENT, ip, port, proto))


def odds(t: Trace) -> dict[str, float]:
    return {c.endpoint: round(c.probability, 6) for c in t.candidates}


def codes(t: Trace, code: str) -> list[str]:
    return [f.message for f in t.findings if f.code == code]


def test_kubernetes_blog_nftables_fragment():
    name = "nftables/k8s-blog-2025-nftables-kube-proxy.txt"
    t = trace(name, "172.30.0.41", 80)
    assert t.verdict == "no-match" and not t.candidates and not codes(t, "NoServiceRule")
    effects = [s.effect for s in t.steps]
    assert any(e.startswith("goto service-ULMVA6XW-namespace1/service1/tcp/p80") for e in effects)
    found = " | ".join(codes(t, "PasteAssumption"))
    assert "no base chain of ip kube-proxy" in found
    assert "elides elements of ip kube-proxy map service-ips" in found
    assert "line 23 of the paste elides what followed ip kube-proxy chain services" in found
    other = trace(name, "172.30.0.99", 80)
    assert any("service-ips is cut short" in m for m in codes(other, "UndecidedMatch"))


def test_debug_service_doc_with_prompt_and_elisions():
    t = trace("ipvs/k8s-website-pr8652-debug-service.txt", "10.0.0.92", 80)
    assert t.verdict == "dnat"
    assert odds(t) == {"172.17.0.2:937": 0.333333, "172.17.0.4:937": 0.333333,
                       "172.17.0.5:937": 0.333333}
    notes = codes(t, "PasteAssumption")
    assert len(notes) == 2 and "line 4 elides lines" in notes[0] and "line 9" in notes[1]


def test_ipvsadm_L_n_with_root_prompt_and_persistence():
    name = "ipvs/opsnull-251-ipvsadm-L-n.txt"
    t = trace(name, "10.254.0.1", 443)
    assert odds(t) == {"172.16.16.81:6443": 0.5, "172.16.16.82:6443": 0.5}
    assert all(c.sticky for c in t.candidates) and codes(t, "SessionAffinity")
    assert odds(trace(name, "10.254.0.2", 53)) == {"10.253.7.5:53": 0.5, "10.253.35.5:53": 0.5}
    assert not codes(t, "PasteAssumption")


def test_ipvsadm_L_with_service_names_and_a_cut_end():
    name = "ipvs/kube-router-415-ipvsadm-L-names.txt"
    assert odds(trace(name, "100.64.242.48", 9102)) == {"100.99.76.7:9102": 1.0}
    assert odds(trace(name, "100.65.17.84", 80)) == {"100.97.142.17:8080": 1.0}
    assert odds(trace(name, "100.64.134.163", 5432)) == {
        "100.98.126.28:5432": 0.333333, "100.98.253.19:5432": 0.333333,
        "100.99.106.8:5432": 0.333333}
    cut = trace(name, "100.65.95.158", 443)
    assert not cut.candidates
    assert any("line cut short (line 29: '-> 1'), under TCP 100.65.95.158:443" in m
               for m in codes(cut, "PasteAssumption"))


def test_sctp_listing_cut_mid_line():
    name = "ipvs/k8s-pr81477-ipvsadm-ln-sctp.txt"
    t = trace(name, "10.103.164.9", 1000, "sctp")
    assert odds(t) == {"20.20.195.135:1000": 0.5, "20.20.195.136:1000": 0.5}
    assert any("under SCTP 10.103.164.9:1000" in m for m in codes(t, "PasteAssumption"))
    assert odds(trace(name, "10.96.0.10", 53, "udp")) == {"20.20.210.3:53": 0.5,
                                                          "20.20.210.4:53": 0.5}


def test_ipset_list_from_an_issue():
    (seg,) = paste.clean((DATA / "ipvs" / "k8s-issue54203-ipset-list.txt").read_text())
    s = parse_ipset(seg.marked(), "k8s-issue54203")["test"]
    assert (s.type, s.family, s.missing, s.cut) == ("hash:ip,port", 4, 0, False)
    member = [s.test(["dst", "dst"], CLIENT, "8.8.8.8", 1, port, proto)
              for port, proto in ((53, "udp"), (100, "udp"), (53, "tcp"))]
    assert member == [True, True, False]


@pytest.mark.parametrize("name", sorted(p.relative_to(DATA).as_posix()
                                        for sub in ("nftables", "ipvs")
                                        for p in (DATA / sub).glob("*.txt")))
def test_every_corpus_file_is_cited(name: str):
    readme = (DATA / name).parent / "README.md"
    assert f"`{Path(name).name}`" in readme.read_text() and "https://" in readme.read_text()
