"""The probe's lines in the text report, read from the `observed` block of a trace."""

from __future__ import annotations

PAD = " " * 15


def _row(obs: dict, endpoint: str) -> dict | None:
    return next((r for r in obs.get("endpoints") or [] if r.get("endpoint") == endpoint), None)


def observed_cell(obs: dict, endpoint: str) -> str:
    """Step 4's OBSERVED column: `9/20 (45.0%)`."""
    r = _row(obs, endpoint)
    total = sum(x.get("connections") or 0 for x in obs.get("endpoints") or [])
    if r is None or not total:
        return "-"
    return f"{r['connections']}/{total} ({r['connections'] / total:.1%})"


def _outcomes(r: dict) -> str:
    out = ", ".join(f"{n} {o}" for o, n in (r.get("outcomes") or {}).items())
    if r.get("medianLatencyMs") is not None:
        out += f" (median {r['medianLatencyMs']:g} ms)"
    return out


def lines(obs: dict | None, step: str, predicted: list[str]) -> list[str]:
    """Extra lines for step 3 (dns), 4 (dnat), 5 (forward) or 6 (reply)."""
    if not obs:
        return []
    probe = obs.get("probe") or {}
    rows = obs.get("endpoints") or []
    out: list[str] = []
    if step == "dns":
        res = obs.get("resolution")
        if res:
            got = ", ".join(res.get("addresses") or []) or f"no address ({res.get('error')})"
            out.append(f"{PAD}probe pod: {res.get('name')} -> {got} (its resolv.conf: search "
                       f"{' '.join(res.get('searchPath') or []) or '(none)'}, ndots:"
                       f"{res.get('ndots')})")
    elif step == "dnat":
        n = len([c for c in obs.get("connections") or [] if c.get("path") == "service"])
        where = probe.get("pod") or "?"
        out.append(f"{PAD}observed: {n} connection(s) from {where} ({probe.get('ip')}), "
                   f"{obs.get('method')}; endpoint of each from the node's conntrack")
        for r in rows:
            if r["endpoint"] not in predicted and r.get("connections"):
                out.append(f"{PAD}  {r['endpoint']}: {r['connections']} connection(s), "
                           "NOT in the prediction")
        if obs.get("unattributed"):
            out.append(f"{PAD}  {obs['unattributed']} connection(s) with no conntrack DNAT seen")
        fit = obs.get("fit")
        if fit:
            from kubectl_clusterip.probe.fit import Fit
            out.append(f"{PAD}  " + Fit(fit["verdict"], fit["connections"], fit.get(
                "statistic"), fit.get("df", 0), fit.get("pValue"), fit.get("needed", 0)
            ).describe())
        out += [f"{PAD}  note: {n}" for n in obs.get("notes") or []]
    elif step == "forward":
        for r in rows:
            d = r.get("direct")
            direct = (f"direct {d['outcome']}" + (f" in {d['latencyMs']:g} ms"
                                                  if d.get("latencyMs") is not None else "")
                      if d else "no direct check")
            svc = _outcomes(r) or "no Service connection"
            out.append(f"{PAD}{r['endpoint']}: observed via Service: {svc}; {direct}")
    elif step == "reply":
        for r in rows:
            ok = sum((r.get("outcomes") or {}).get(o, 0) for o in ("connected", "answered"))
            if r.get("connections") and obs.get("method") != "datagram":
                out.append(f"{PAD}{r['endpoint']}: {ok}/{r['connections']} connection(s) "
                           "answered, the reply un-NATed by conntrack")
    return out
