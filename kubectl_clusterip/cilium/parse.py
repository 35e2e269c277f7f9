"""Read what Cilium's agent prints, in every shape people paste, 1.10 → current.

- `cilium[-dbg] service list`: `[ID] Frontend  Service Type  Backend`, backends as
  `N => IP:PORT[/PROTO] [(state)]` on continuation lines (cilium-dbg/cmd/service_list.go).
- `service list -o json`: the REST model (api/v1/models: spec/status, backend-addresses
  with state, weight, nodeName; flags with type, namespace, name, traffic policies).
- `bpf lb list`: `SERVICE ADDRESS  BACKEND ADDRESS (REVNAT_ID) (SLOT)` (cilium-dbg/cmd/
  bpf_lb_list.go); `--revnat` and `--backends` print `ID  …`; `--frontends` `BACKEND ID`.
- `cilium-dbg shell -- db/show frontends|backends|services`: the statedb tables (1.17+).
- `status --verbose` and `bpf ct list global`: cilium/status.py.

Format is recognised from the content (`detect`), never from a file name.
"""

from __future__ import annotations

import ipaddress
import json
import re

from kubectl_clusterip import paste
from kubectl_clusterip.cilium.model import (
    Backend,
    Frontend,
    LbEntry,
    LbSlot,
)
from kubectl_clusterip.model import ClusterIPError

_ADDR = r"(?:\[[0-9a-fA-F:.]+\]|\d{1,3}(?:\.\d{1,3}){3}):\d+"
_SVC_HEADER = re.compile(r"^\s*(?:ID\s+)?Frontend\s+Service Type\s+Backend", re.M)
_LB_HEADER = re.compile(r"^\s*(SERVICE ADDRESS|ID)\s+(BACKEND ADDRESS|BACKEND ID)", re.M)
_DB_HEADER = re.compile(r"^\s*(Address\s+Type\s+ServiceName|Address\s+Instances|Name\s+Source)\b",
                        re.M)
_CT_LINE = re.compile(r"^\s*(TCP|UDP|SCTP|ICMP|ICMPv6)\s+(OUT|IN|SVC)\s+\S+:\d+ -> \S+:\d+ ",
                      re.M)
_STATUS = re.compile(r"^\s*KubeProxyReplacement( Details)?:", re.M)
_SERVICE_TYPES = ("ClusterIP", "NodePort", "ExternalIPs", "LoadBalancer", "HostPort",
                  "LocalRedirect")


def detect(text: str) -> str | None:
    """cilium-services | cilium-lb | cilium-status | cilium-ct, or None."""
    head = text[:16384]
    stripped = head.lstrip()
    if stripped.startswith("[") and '"frontend-address"' in head:
        return "cilium-services"
    if _SVC_HEADER.search(head) or _DB_HEADER.search(head):
        return "cilium-services"
    if _LB_HEADER.search(head):
        return "cilium-lb"
    if re.search(r"^\s*KubeProxyReplacement Details:", head, re.M) or (
            _STATUS.search(head) and re.search(r"^\s*(KVStore|Kubernetes|Cilium):", head, re.M)):
        return "cilium-status"
    if _CT_LINE.search(head):
        return "cilium-ct"
    return None


# -- addresses -------------------------------------------------------------------------------


def split_addr(text: str, where: str) -> tuple[str, int, str, bool]:
    """`IP:PORT[/PROTO][/i]` or `IP:PORT:PROTO` → (ip, port, protocol, internal)."""
    m = re.fullmatch(r"(\[[^\]]+\]|[^:/\[\]]+):(\d+)(?:[:/](TCP|UDP|SCTP|ANY|NONE))?(/i)?",
                     text.strip(), re.I)
    if not m:
        raise ClusterIPError(f"{where}: not an address: {text.strip()!r}")
    ip = m.group(1).strip("[]")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise ClusterIPError(f"{where}: not an IP address: {ip!r}") from None
    proto = (m.group(3) or "").lower()
    return ip, int(m.group(2)), "" if proto in ("any", "none") else proto, bool(m.group(4))


# -- service list (text) -----------------------------------------------------------------------

_SVC_ROW = re.compile(
    r"^\s*(?:(?P<id>\d+)\s+)?(?P<fe>\S+)\s+(?P<type>[A-Za-z]+)(?P<remote> \(Remote\))?"
    r"(?:\s+(?P<be>\d+ => .*?))?\s*$")
_BE = re.compile(r"^\s*\d+ => (?P<addr>\S+)(?: \((?P<state>[a-z]+)\))?(?P<pref> \(preferred\))?"
                 r"\s*$")


def is_db_tables(text: str) -> bool:
    return bool(re.search(r"^\s*Address\s+(Type\s+ServiceName|Instances)", text[:16384], re.M))


def parse_services(text: str, source: str = "") -> list[Frontend]:
    """The agent's frontends from any of its service outputs: text, JSON or statedb tables."""
    if text.lstrip().startswith("["):
        return parse_service_json(text, source)
    if is_db_tables(text):
        return parse_db_tables(text, source)
    return parse_service_list(text, source)


def parse_service_list(text: str, source: str = "") -> list[Frontend]:
    """`cilium[-dbg] service list` (or `service get`) text."""
    where = source or "service list"
    out: list[Frontend] = []
    seen_header = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not seen_header:
            seen_header = bool(_SVC_HEADER.match(line))
            continue
        if not line.strip() or paste.is_elision(line):
            continue
        at = f"{where}:{lineno}"
        be = _BE.match(line)
        if be and out and not re.match(r"^\s*\d+\s+\S+\s+[A-Za-z]+", line.split("=>")[0]):
            out[-1].backends.append(_backend(be, at))
            out[-1].line += "\n" + line
            continue
        row = _SVC_ROW.match(line)
        if row is None or row.group("type") not in _SERVICE_TYPES:
            if out:  # a wrapped terminal line or a prompt after the table: the table ended
                break
            raise ClusterIPError(f"{at}: not a `cilium service list` row: {line.strip()[:80]!r}")
        ip, port, proto, internal = split_addr(row.group("fe"), at)
        fe = Frontend(ip, port, proto, row.group("type"), "internal" if internal else "external",
                      id=int(row.group("id")) if row.group("id") else None, source=where,
                      line=line)
        if row.group("be"):
            m = _BE.match(row.group("be"))
            if m is None:
                raise ClusterIPError(f"{at}: unreadable backend {row.group('be')!r}")
            fe.backends.append(_backend(m, at))
        out.append(fe)
    if not seen_header:
        raise ClusterIPError(f"{where}: no `Frontend  Service Type  Backend` header")
    return out


def _backend(m: re.Match, where: str) -> Backend:
    ip, port, proto, _ = split_addr(m.group("addr"), where)
    return Backend(ip, port, proto, m.group("state") or "active")


# -- service list -o json ----------------------------------------------------------------------


def parse_service_json(text: str, source: str = "") -> list[Frontend]:
    where = source or "service list -o json"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterIPError(f"{where}: not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, list):
        raise ClusterIPError(f"{where}: expected a JSON list of services")
    out = []
    for i, svc in enumerate(data):
        spec = ((svc.get("status") or {}).get("realized") or svc.get("spec")) \
            if isinstance(svc, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("frontend-address"), dict):
            raise ClusterIPError(f"{where}: item {i}: no spec.frontend-address")
        fa = spec["frontend-address"]
        flags = (svc.get("spec") or {}).get("flags") or spec.get("flags") or {}
        try:
            ip = str(ipaddress.ip_address(fa.get("ip", "")))
            port = int(fa.get("port", 0))
            backends = [Backend(str(ipaddress.ip_address(b["ip"])), int(b.get("port", 0)),
                                str(b.get("protocol") or fa.get("protocol") or "").lower()
                                .replace("any", ""),
                                b.get("state") or "active",
                                int(b["weight"]) if b.get("weight") is not None else None,
                                b.get("nodeName") or "")
                        for b in spec.get("backend-addresses") or []]
        except (KeyError, TypeError, ValueError) as e:
            raise ClusterIPError(f"{where}: item {i}: unreadable address ({e})") from None
        proto = str(fa.get("protocol") or "").lower()
        name = f"{flags['namespace']}/{flags['name']}" if flags.get("name") else ""
        int_policy = flags.get("intTrafficPolicy") or flags.get("trafficPolicy") or "Cluster"
        out.append(Frontend(
            ip, port, "" if proto in ("any", "none") else proto,
            flags.get("type") or "ClusterIP", fa.get("scope") or "external", backends,
            spec.get("id"), name, int_local=int_policy == "Local", source=where,
            line=json.dumps({"frontend-address": fa, "flags": flags}, sort_keys=True)))
    return out


# -- statedb tables (cilium-dbg shell -- db/show …) ----------------------------------------------


def _columns(header: str) -> list[tuple[str, int]]:
    return [(m.group(0), m.start()) for m in re.finditer(r"\S+", header)]


def _cells(line: str, cols: list[tuple[str, int]]) -> dict[str, str]:
    """Cells by the header's column starts (tabwriter aligns them)."""
    out = {}
    for i, (name, start) in enumerate(cols):
        end = cols[i + 1][1] if i + 1 < len(cols) else None
        out[name] = line[start:end].strip() if end is not None else line[start:].strip()
    return out


def parse_db_tables(text: str, source: str = "") -> list[Frontend]:
    """db/show frontends (+ backends for the states, + services for the policies)."""
    where = source or "db/show"
    tables: dict[str, list[dict[str, str]]] = {}
    cols: list[tuple[str, int]] = []
    kind = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if re.match(r"^\s*Address\s+Type\s+ServiceName", line):
            kind, cols = "frontends", _columns(line)
        elif re.match(r"^\s*Address\s+Instances", line):
            kind, cols = "backends", _columns(line)
        elif re.match(r"^\s*Name\s+Source", line):
            kind, cols = "services", _columns(line)
        elif line.strip() and kind and not line.lstrip().startswith(("#", "$", "--")):
            tables.setdefault(kind, []).append(_cells(line, cols))
        elif not line.strip():
            kind = ""
    if "frontends" not in tables:
        raise ClusterIPError(f"{where}: db/show backends or services alone do not say which "
                             "address serves which Service; add `db/show frontends`")
    states: dict[tuple[str, str], tuple[str, str]] = {}  # (addr, service) -> (state, node)
    for row in tables.get("backends", []):
        for inst in re.split(r",\s*(?=[\w.-]+/)", row.get("Instances", "")):
            m = re.match(r"(\S+)(?: \[(\w+)\])?", inst.strip())
            if m:
                state = {"unhealthy": "quarantined"}.get(m.group(2) or "", m.group(2) or "active")
                states[(row.get("Address", ""), m.group(1))] = (state, row.get("NodeName", ""))
    policies = {row.get("Name", ""): row for row in tables.get("services", [])}
    out = []
    for row in tables["frontends"]:
        at = f"{where}: {row.get('Address', '')}"
        ip, port, proto, internal = split_addr(row.get("Address", ""), at)
        name = row.get("ServiceName", "")
        svc = policies.get(name, {})
        backends = []
        for addr in re.split(r",\s*", row.get("Backends", "")):
            if not addr or addr.startswith("+") or "more" in addr:
                continue
            bip, bport, bproto, _ = split_addr(addr, at)
            state, node = states.get((addr, name), ("active", ""))
            backends.append(Backend(bip, bport, bproto, state, node=node))
        policy = svc.get("TrafficPolicy", "")
        flags = svc.get("Flags", "")
        out.append(Frontend(
            ip, port, proto, row.get("Type") or "ClusterIP",
            "internal" if internal else "external", backends, name=name,
            port_name=row.get("PortName", ""),
            int_local=bool(re.search(r"(Int=Local|^Local$)", policy)),
            affinity="SessionAffinity" in flags, status=row.get("Status", ""), source=where,
            line="  ".join(f"{k}={v}" for k, v in row.items() if v)))
    return out


# -- bpf lb list -------------------------------------------------------------------------------

_LB_ENTRY = re.compile(
    rf"^(?P<addr>{_ADDR})(?:/(?P<proto>[A-Z]+))?\s+\((?P<revnat>\d+)\)(?:\s+\((?P<slot>\d+)\))?"
    r"(?:\s+\[(?P<flags>[^\]]*)\])?(?:\s+\(L7LB Proxy Port: \d+\))?\s*$")


def parse_bpf_lb(text: str, source: str = "") -> tuple[list[LbEntry], dict[int, tuple],
                                                      dict[int, Backend]]:
    """`bpf lb list` [--revnat | --backends | --frontends] → (entries, revnat, backends).

    revnat: id → (ip, port); backends: id → Backend (`--backends`, `PROTO://IP:PORT`).
    """
    where = source or "bpf lb list"
    entries: dict[tuple, LbEntry] = {}
    revnat: dict[int, tuple] = {}
    backends: dict[int, Backend] = {}
    kind = ""
    current: LbEntry | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or paste.is_elision(line):
            continue
        at = f"{where}:{lineno}"
        head = _LB_HEADER.match(line)
        if head:
            kind = "frontends" if head.group(2) == "BACKEND ID" else (
                "svc" if head.group(1) == "SERVICE ADDRESS" else "ids")
            current = None
            continue
        if not kind:
            continue
        if kind == "ids":
            m = re.match(r"^\s*(\d+)\s+(?:(\w+)://)?(\S+?)(?:\s+\((\w+)\))?(?:\s+\S+)*\s*$", line)
            if m is None:
                raise ClusterIPError(f"{at}: not a `bpf lb list` row: {line.strip()[:80]!r}")
            ip, port, proto, _ = split_addr(m.group(3), at)
            if m.group(2):  # PROTO://ADDR: the backend map
                backends[int(m.group(1))] = Backend(ip, port, m.group(2).lower()
                                                    .replace("any", ""), id=int(m.group(1)))
            else:
                revnat[int(m.group(1))] = (ip, port)
            continue
        indented = line[:1].isspace()
        if kind == "frontends":  # KEY [(SLOT)]  BACKEND_ID COUNT[[QCOUNT]] (REVNAT) [FLAGS]
            m = re.match(r"^\s*(\S+)(?:\s+\((\d+)\))?\s+(\d+)\s+(\d+)(?:\[(\d+)\])?\s+\((\d+)\)",
                         line)
            if m is None:
                raise ClusterIPError(f"{at}: not a `bpf lb list --frontends` row: "
                                     f"{line.strip()[:80]!r}")
            ip, port, proto, internal = split_addr(m.group(1), at)
            entry = entries.setdefault((ip, port, proto, internal),
                                       LbEntry(ip, port, proto, internal, source=where))
            slot, count = m.group(2), int(m.group(4))
            if slot == "0" or (slot is None and count > (entry.count or 0)):
                entry.count = count
                entry.qcount = int(m.group(5)) if m.group(5) else None
            continue
        if not indented:
            key_text, _, rest = line.strip().partition(" ")
            ip, port, proto, internal = split_addr(key_text, at)
            key = (ip, port, proto, internal)
            current = entries.setdefault(key, LbEntry(ip, port, proto, internal, source=where))
            body = re.sub(r"^\s*\(\d+\)\s+(?=\S)", "", rest.strip()) if \
                re.match(r"^\s*\(\d+\)\s+\S+:", rest) else rest.strip()
        else:
            if current is None:
                raise ClusterIPError(f"{at}: backend row before any service address")
            body = line.strip()
        _add_slot(current, body, at, line)
    return list(entries.values()), revnat, backends


def merge_lb(entries: list[LbEntry]) -> list[LbEntry]:
    """One entry per frontend from several `bpf lb list` views; counts-only ones (from
    `--frontends` alone) say nothing about backends and are left out."""
    out: dict[tuple, LbEntry] = {}
    counts: dict[tuple, LbEntry] = {}
    for e in entries:
        key = (e.ip, e.port, e.protocol, e.internal)
        if e.master is None and not e.slots:
            counts[key] = e
        elif key in out:
            out[key].slots += e.slots
            out[key].master = out[key].master or e.master
        else:
            out[key] = e
    for key, c in counts.items():
        for k in (key, (key[0], key[1], "", key[3])):
            if k in out:
                out[k].count, out[k].qcount = c.count, c.qcount
    return list(out.values())


def _add_slot(entry: LbEntry, body: str, at: str, line: str) -> None:
    missing = re.match(r"^backend (\d+) not found", body)
    if missing:
        entry.slots.append(LbSlot("", 0, missing_backend=int(missing.group(1)), line=line))
        return
    m = _LB_ENTRY.match(body)
    if m is None:
        raise ClusterIPError(f"{at}: not a `bpf lb list` entry: {body[:80]!r}")
    ip, port, _, _ = split_addr(m.group("addr"), at)
    slot = LbSlot(ip, port, (m.group("proto") or "").lower().replace("any", ""),
                  int(m.group("revnat")), int(m.group("slot")) if m.group("slot") else None,
                  tuple(f.strip() for f in (m.group("flags") or "").split(",") if f.strip()),
                  line=line)
    is_master = (slot.slot == 0) if slot.slot is not None else (
        port == 0 and ipaddress.ip_address(ip).is_unspecified)
    if is_master:
        entry.master = slot
    else:
        entry.slots.append(slot)
