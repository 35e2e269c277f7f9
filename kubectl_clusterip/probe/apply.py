"""Attach a snapshot's probe observations to the traces they belong to.

A probed snapshot holds the probe's log (`nodes/NODE/probe-log.txt`), the node's conntrack
events (`nodes/NODE/conntrack-events.txt`) and `snapshot.yaml` → `probe` (where the probe
ran and what it targeted); a replay judges them exactly as the live trace did.
"""

from __future__ import annotations

from kubectl_clusterip.findings import ordered, summary
from kubectl_clusterip.model import Trace
from kubectl_clusterip.probe.judge import judge
from kubectl_clusterip.probe.observed import Observed, join, parse_probe_log
from kubectl_clusterip.snapshot import Snapshot

PROBE_LOG = "probe-log.txt"
EVENTS = "conntrack-events.txt"


def observed_for(snap: Snapshot, node: str, trace: Trace) -> Observed | None:
    meta = snap.meta.get("probe")
    files = snap.nodes[node].files if node in snap.nodes else {}
    if not isinstance(meta, dict) or PROBE_LOG not in files:
        return None
    p = trace.packet
    if str(meta.get("target")) != f"{p.dst_ip}:{p.dst_port}/{p.protocol}":
        return None
    log = parse_probe_log(files[PROBE_LOG])
    events = files.get(EVENTS)
    conns = join(log, events, meta.get("ip"))
    notes = list(meta.get("notes") or [])
    if not log.complete:
        notes.append("the probe's log ends early: it was cut short (timeout or interrupt)")
    if log.skipped:
        notes.append(f"{log.skipped} line(s) of the probe's log did not parse and were skipped")
    if log.method == "datagram":
        notes.append("no reply protocol known for this UDP port: only the DNAT choice is "
                     "observed, not whether the endpoint answers")
    if events is None:
        notes.append("the node's conntrack events were not read: each connection's endpoint "
                     "is unknown")
    return Observed({k: v for k, v in meta.items() if k != "notes"}, p.protocol,
                    log.method or str(meta.get("method") or ""), conns, log.resolution,
                    events is not None, notes)


def apply(snap: Snapshot, node: str, traces: list[Trace]) -> None:
    for t in traces:
        obs = observed_for(snap, node, t)
        if obs is None:
            continue
        found, doc = judge(t, obs, snap, node)
        codes = {(f.code, f.message) for f in t.findings}
        t.findings = ordered(t.findings + [f for f in found if (f.code, f.message) not in codes])
        t.extra["observed"] = doc
        t.extra["summary"] = summary(t)
