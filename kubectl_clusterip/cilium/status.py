"""`cilium-dbg status --verbose` (its KubeProxyReplacement part: socket-LB coverage, backend
selection) and the service entries of `cilium-dbg bpf ct list global`."""

from __future__ import annotations

import re

from kubectl_clusterip.cilium.model import CtEntry, KprStatus

# -- status --verbose --------------------------------------------------------------------------


def parse_status(text: str, source: str = "") -> KprStatus:
    st = KprStatus(source=source or "status")
    in_details = False
    for raw in text.splitlines():
        line = raw.strip()
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "KubeProxyReplacement" and value:
            st.mode = value.split()[0]
            st.evidence.append(line)
            if "HostReachableServices" in value or "Socket LB" in value:
                st.socket_lb = True
        elif key == "KubeProxyReplacement Details":
            in_details = True
        elif in_details and raw[:1] not in (" ", "\t") and key and not key.startswith("-"):
            in_details = False
        if not in_details:
            continue
        on = value.split()[0].lower() in ("enabled", "true") if value else None
        if key == "Status":
            st.mode = st.mode or value
        elif key == "Socket LB":
            st.socket_lb = on
        elif key == "Socket LB Coverage":
            st.coverage = value
        elif key in ("BPFSocketLBHostnsOnly", "Socket LB Hostns-only"):
            st.hostns_only = on
        elif key == "Backend Selection":
            st.backend_selection = value
        elif key == "Session Affinity":
            st.session_affinity = on
        elif key == "Graceful Termination":
            st.graceful_termination = on
        elif key == "Socket LB Protocols":
            st.protocols = value
        else:
            continue
        st.evidence.append(line)
    return st


# -- bpf ct list global ------------------------------------------------------------------------

_CT = re.compile(r"^\s*(?P<proto>TCP|UDP|SCTP)\s+(?P<kind>OUT|IN|SVC)\s+(?P<src>\S+):(?P<sport>\d+)"
                 r" -> (?P<dst>\S+):(?P<dport>\d+)\s+(?P<svc>service\s+)?(?P<rest>.*)$")


def parse_ct(text: str, source: str = "") -> list[CtEntry]:
    """Service-related entries: SVC ones (the backend choice) and those with a revNAT id."""
    out = []
    for raw in text.splitlines():
        m = _CT.match(raw)
        if m is None:
            continue
        rest = m.group("rest")
        rn = re.search(r"\bRevNAT=(\d+)", rest)
        be = re.search(r"\bBackendID=(\d+)", rest)
        kind = "service" if m.group("svc") else m.group("kind")
        revnat = int(rn.group(1)) if rn else None
        if kind == "IN" or (kind == "OUT" and not revnat):
            continue
        out.append(CtEntry(m.group("proto").lower(), kind, m.group("src").strip("[]"),
                           int(m.group("sport")), m.group("dst").strip("[]"),
                           int(m.group("dport")), revnat, int(be.group(1)) if be else None,
                           raw.strip()))
    return out
