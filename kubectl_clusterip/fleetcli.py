"""`--all-nodes` / `--nodes SELECTOR` on trace, rules and capture: output and exit codes.

The pods run in cluster/fleetrun.py, the rows are made in fleet.py; here they are printed:
a table and a summary line (or `-o json|yaml`: one object per node), exit code 1 when any
node differs (broken, or its rules could not be read).
"""

from __future__ import annotations

import click
from tabulate import tabulate

from kubectl_clusterip import fleet
from kubectl_clusterip.cluster.capture import LiveOptions
from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags
from kubectl_clusterip.engine import Request
from kubectl_clusterip.model import ClusterIPError, ServicePort
from kubectl_clusterip.render import dump
from kubectl_clusterip.snapshot import Snapshot
from kubectl_clusterip.statusline import StatusLine

EXIT_OK, EXIT_DIFFERS = 0, 1


def check_usage(selector: str | None, **others: object) -> None:
    """The fleet reads the live cluster's nodes itself: no offline input, no one node."""
    given = [f"--{k.replace('_', '-')}" for k, v in others.items() if v]
    if given:
        raise ClusterIPError(f"--all-nodes/--nodes reads every selected node of the live "
                             f"cluster: drop {', '.join(given)}")
    if selector is not None and not selector.strip():
        raise ClusterIPError("--nodes needs a label selector, e.g. --nodes "
                             "node-role.kubernetes.io/worker=")


def trace_all(flags: ConnectionFlags, opts: LiveOptions, req: Request, selector: str | None,
              parallel: int, output: str, quiet: bool) -> int:
    from kubectl_clusterip.cluster.fleetrun import trace_fleet
    with StatusLine(quiet=quiet) as progress:
        rows = trace_fleet(flags, opts, req, selector, parallel, progress)
    line = fleet.summary(rows)
    if output == "text":
        click.echo(tabulate(fleet.table_rows(rows), headers=[
            "NODE", "MODE", "VERDICT", "ENDPOINTS", "DRIFT", "NODE FACTS"], tablefmt="plain"))
        click.echo(f"\n{line}")
    else:
        click.echo(dump({"kind": "NodeTraceList", "service": opts.target, "summary": line,
                         "items": [r.to_dict() for r in rows]}, output))
    return EXIT_DIFFERS if any(r.differs for r in rows) else EXIT_OK


def rules_all(flags: ConnectionFlags, opts: LiveOptions, selector: str | None, parallel: int,
              output: str, quiet: bool, keep) -> int:
    from kubectl_clusterip.cluster.fleetrun import rules_fleet

    def kept(ports: list[ServicePort]) -> list[ServicePort]:
        try:
            return keep(ports)
        except ClusterIPError:  # not programmed on this node: the row says none
            return []
    with StatusLine(quiet=quiet) as progress:
        rows = rules_fleet(flags, opts, selector, parallel, progress, kept)
    line = fleet.rules_summary(rows)
    if output in ("json", "yaml"):
        click.echo(dump({"kind": "NodeRulesList", "summary": line,
                         "items": [r.to_dict() for r in rows]}, output))
    else:
        click.echo(tabulate([[r.node, ",".join(r.modes) or "-", r.ports if not r.reason else "-",
                              r.endpoints if not r.reason else "-",
                              r.reason or "; ".join(r.differs)] for r in rows],
                            headers=["NODE", "MODE", "SERVICE PORTS", "ENDPOINTS", "DIFFERS"],
                            tablefmt="plain"))
        click.echo(f"\n{line}")
    return EXIT_DIFFERS if any(r.differs or r.reason for r in rows) else EXIT_OK


def capture_all(flags: ConnectionFlags, opts: LiveOptions, selector: str | None,
                parallel: int, quiet: bool) -> Snapshot:
    from kubectl_clusterip.cluster.fleetrun import capture_fleet
    with StatusLine(quiet=quiet) as progress:
        snap = capture_fleet(flags, opts, selector, parallel, progress)
    for node, why in (snap.meta.get("nodeFailures") or {}).items():
        click.echo(f"warning: node {node} not captured: {why}", err=True)
    return snap
