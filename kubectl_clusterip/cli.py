"""The `kubectl clusterip` command line: a thin shell over the pure engine."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

import click

from kubectl_clusterip import __version__, style
from kubectl_clusterip.model import PROTOCOLS, ClusterIPError, select_ports

if TYPE_CHECKING:  # each command imports what it uses, when it runs (start-up: launch.py)
    from kubectl_clusterip.snapshot import Snapshot

EXIT_BROKEN = 1  # traced, and an error-level finding says the path is broken
EXIT_FAILED = 2  # could not trace: bad usage, unreadable input, missing service

OUTPUTS = click.Choice(["text", "json", "yaml"])


ISSUES = "https://github.com/kubectl-clusterip/kubectl-clusterip/issues"


class Group(click.Group):
    """Turns ClusterIPError into one line on stderr and exit code 2, never a traceback.

    Anything else is a bug of ours: one line asking for a report, exit 2, and the traceback
    only with --debug (tests hold every input to the first kind; none relies on this one).
    """

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ClusterIPError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_FAILED)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # the last resort
            if ctx.meta.get(DEBUG):
                import traceback
                traceback.print_exc()
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f" in {tb.tb_frame.f_code.co_name}()" if tb is not None else ""
            click.echo(f"error: internal error ({type(e).__name__}{where}); please report this "
                       f"at {ISSUES} with the command line (--debug shows the traceback)",
                       err=True)
            sys.exit(EXIT_FAILED)


DEBUG = "kubectl_clusterip.debug"


def debug_option(f):
    """--debug / -v, before or after the subcommand: an internal error shows its traceback."""
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[DEBUG] = True

    return click.option("--debug", "-v", is_flag=True, expose_value=False, is_eager=True,
                        callback=callback, help="On an internal error, print its "
                        "traceback.")(f)


def load_snapshot_from(rules_files: tuple[str, ...], snapshot_dir: str | None,
                       live: Callable[[], Snapshot] | None = None) -> Snapshot:
    """Offline inputs become a snapshot; the live cluster is the default when none is given."""
    from kubectl_clusterip.dumps import read_text
    from kubectl_clusterip.snapshot import from_rule_files, load_snapshot

    if rules_files and snapshot_dir:
        raise ClusterIPError("give --rules-file or --snapshot, not both")
    if snapshot_dir:
        return load_snapshot(snapshot_dir)
    if rules_files:
        return from_rule_files(list(rules_files), read_text)
    if live is not None:
        return live()
    raise ClusterIPError("give --rules-file DUMP or --snapshot DIR")


# -- the live cluster: kubectl's connection flags and the capture options ----------------
def live_options(f):
    """kubectl's connection flags and how the node's rules and DNS are read."""
    for name, kw in reversed([
        ("--kubeconfig", {"metavar": "FILE", "help": "Kubeconfig file (default: $KUBECONFIG, "
                          "then ~/.kube/config)."}),
        ("--context", {"metavar": "NAME", "help": "The kubeconfig context to use."}),
        ("--cluster", {"metavar": "NAME", "help": "The kubeconfig cluster to use."}),
        ("--user", {"metavar": "NAME", "help": "The kubeconfig user to use."}),
        ("--request-timeout", {"metavar": "DURATION", "help": "Per API request, e.g. 30s "
                               "(0: no timeout)."}),
        ("--from", {"metavar": "[NS/]POD", "help": "Trace from this pod: its node and IP are "
                    "the client."}),
        ("--image", {"metavar": "IMAGE", "help": "Debug pod image with iptables, nft, ipvsadm, "
                     "ipset, conntrack, iproute2.", "show_default": True}),
        ("--via", {"type": click.Choice(["pod", "kube-proxy"]), "default": "pod",
                   "show_default": True, "help": "Read the rules with a node debug pod, or by "
                   "exec into the node's kube-proxy pod."}),
        ("--dns-server", {"metavar": "IP[:PORT]", "help": "Ask this DNS server directly "
                          "instead of CoreDNS through a port-forward."}),
        ("--pod-timeout", {"type": click.FloatRange(1, 3600), "default": 120,
                           "show_default": True, "help": "Seconds to wait for the debug pod."}),
        ("--conntrack", {"is_flag": True, "help": "Also dump the node's conntrack entries "
                         "for the service IP."}),
        ("--debug-namespace", {"metavar": "NS", "default": "kube-system", "show_default": True,
                               "help": "Namespace of the debug pod (its Pod Security level "
                               "must allow hostNetwork and NET_ADMIN)."}),
        ("-q", {"is_flag": True, "help": "No progress line (errors and warnings only)."}),
    ]):
        if name == "--image":
            from kubectl_clusterip.cluster import DEFAULT_IMAGE
            kw = {**kw, "default": DEFAULT_IMAGE}
        dest = {"--from": "client_pod", "-q": "quiet"}.get(name, name[2:].replace("-", "_"))
        f = click.option(*([name, "--quiet"] if name == "-q" else [name]), dest, **kw)(f)
    return f


def live_source(live: dict, target: str | None, namespace: str | None, node: str | None,
                source_ip: str | None, dns: bool = True) -> Callable[[], Snapshot]:
    """The capture to run when no offline input is given (the kubernetes client loads late)."""
    def run() -> Snapshot:
        from kubectl_clusterip.cluster.capture import capture_snapshot
        from kubectl_clusterip.statusline import StatusLine
        with StatusLine(quiet=bool(live["quiet"])) as progress:
            return capture_snapshot(*live_setup(live, target, namespace, node, source_ip, dns),
                                    progress)
    return run


def live_setup(live: dict, target: str | None, namespace: str | None, node: str | None,
               source_ip: str | None, dns: bool = True) -> tuple:
    """The connection flags and LiveOptions from the command's options."""
    from kubectl_clusterip.cluster.capture import LiveOptions
    from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags
    flags = ConnectionFlags(live["kubeconfig"], live["context"], live["cluster"],
                            live["user"], namespace, live["request_timeout"])
    return flags, LiveOptions(target, live["client_pod"], node, source_ip, live["image"],
                              live["via"], live["dns_server"], live["pod_timeout"],
                              live["conntrack"], dns, live["debug_namespace"],
                              live.get("probe") or 0, int(live.get("probe_timeout") or 2),
                              bool(live.get("probe_in_pod")))


def fleet_options(f):
    """Every node at once (live cluster only)."""
    f = click.option("--parallel", type=click.IntRange(1, 100), default=10, show_default=True,
                     help="With --all-nodes/--nodes: debug pods alive at once.")(f)
    f = click.option("--nodes", "node_selector", metavar="SELECTOR", help="Every node this "
                     "label selector picks, one debug pod each (like --all-nodes).")(f)
    return click.option("--all-nodes", is_flag=True, help="Every node of the cluster, one "
                        "debug pod each: a row per node and a summary.")(f)


def fleet_selector(all_nodes: bool, node_selector: str | None) -> str | bool | None:
    """False: one node as usual; None: every node; else the label selector."""
    if node_selector is not None:
        return node_selector
    return None if all_nodes else False


def probe_options(f):
    """--probe [N]: real connections from the client's position, beside the prediction."""
    f = click.option("--probe-in-pod", is_flag=True, help="With --from POD: probe from "
                     "inside that pod, as an ephemeral container (it stays in the pod's spec "
                     "until the pod is deleted).")(f)
    f = click.option("--probe-timeout", type=click.IntRange(1, 30), default=2,
                     show_default=True, metavar="SECONDS",
                     help="Per probe connection: how long to wait for an answer.")(f)
    return click.option(
        "--probe", type=click.IntRange(1, 500), is_flag=False, flag_value=20, default=None,
        metavar="[N]", help="Also send N real connections (default 20, at most 500, 20 a "
        "second) from a short-lived pod on the client's node in its namespace, plus one "
        "direct connection per endpoint, and compare what happened with the prediction.")(f)


def rules_source_options(f):
    f = click.option("--snapshot", "snapshot_dir", metavar="DIR",
                     help="A snapshot directory (see `capture`) instead of a live cluster.")(f)
    f = click.option("--rules-file", "rules_files", multiple=True, metavar="DUMP",
                     help="A node's rule dump as saved or pasted: iptables-save, iptables -S "
                          "or -L -n -v (also ip6tables), nft [-j] list ruleset, ipvsadm-save -n "
                          "or ipvsadm -L, ipset save or list, or Cilium's service list and bpf "
                          "lb list; the format is read from the content (repeatable; - is "
                          "stdin).")(f)
    return f


def color_option(default: str | None):
    """--color before or after the subcommand, as kubectl users place global flags."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:  # a subcommand's unset flag leaves the group's choice alone
            style.click_callback(ctx, param, value)

    return click.option("--color", type=click.Choice(style.MODES), default=default,
                        show_default=default is not None, expose_value=False, is_eager=True,
                        callback=callback, help="Color the text report: auto colors a "
                        "terminal unless NO_COLOR is set.")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="kubectl clusterip",
                      message="%(prog)s %(version)s")
@color_option("auto")
@debug_option
def main() -> None:
    """Trace and diagnose Kubernetes ClusterIP Services.

    \b
    Follow one request from the ClusterIP through kube-proxy's rules to the endpoint
    that answers, and back through conntrack; say which step is broken and why.

    \b
    Examples:
      kubectl clusterip trace my-service                     # live cluster
      kubectl clusterip trace default/my-service --snapshot examples/kind-my-service
      kubectl clusterip rules --node kind-worker
      kubectl clusterip capture my-service -o ./support-bundle

    \b
    Exit codes: 0 healthy, 1 a step is broken (an error-level finding),
    2 could not trace (bad usage or input, missing service, API or debug pod failure).
    """


@main.command(short_help="Save what a trace of a Service needs, for offline replay.")
@click.argument("service")
@click.option("-o", "--output-dir", "directory", required=True, metavar="DIR",
              help="Write the snapshot into this directory.")
@click.option("-n", "--namespace", help="Namespace of SERVICE (default: the context's).")
@click.option("--node", "node", metavar="NODE", help="Read the rules of this node.")
@click.option("--source-ip", metavar="IP", help="Client address to record.")
@fleet_options
@debug_option
@live_options
@probe_options
def capture(service: str, directory: str, namespace: str | None, node: str | None,
            source_ip: str | None, all_nodes: bool, node_selector: str | None, parallel: int,
            **live: object) -> None:
    """Save everything a trace of SERVICE uses into a snapshot directory.

    \b
    The directory replays offline with `trace --snapshot DIR` (format: docs/snapshot.md).

    \b
    Examples:
      kubectl clusterip capture default/my-service -o my-service-snapshot
      kubectl clusterip capture my-service --from client-abc -o snap --conntrack
    """
    from kubectl_clusterip.flags import parse_ip
    from kubectl_clusterip.snapshot import write_snapshot
    if source_ip is not None:
        parse_ip("--source-ip", source_ip)
    sel = fleet_selector(all_nodes, node_selector)
    if sel is not False:
        from kubectl_clusterip import fleetcli
        fleetcli.check_usage(sel, node=node, probe=live["probe"],
                             **{"from": live["client_pod"]})
        snap = fleetcli.capture_all(*live_setup(live, service, namespace, None, source_ip, False),
                                    sel, parallel, bool(live["quiet"]))
    else:
        snap = live_source(live, service, namespace, node, source_ip)()
    try:
        write_snapshot(snap, directory)
    except OSError as e:
        raise ClusterIPError(f"{directory}: cannot write the snapshot: {e.strerror}") from None
    click.echo(f"wrote {directory}: {len(snap.objects)} objects, rules"
               + (f" of {len(snap.nodes)} nodes" if len(snap.nodes) > 1 else
                  f" of node {snap.meta.get('clientNode')}"), err=True)


@main.command(short_help="Trace one request to a Service, step by step.")
@click.argument("target", required=False)
@color_option(None)
@debug_option
@rules_source_options
@click.option("--to", "to", metavar="IP:PORT", help="Trace a request to this address.")
@click.option("-n", "--namespace", help="Namespace of TARGET when it has none.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), help="Protocol (default: tcp, or "
              "the service port's own).")
@click.option("--source-ip", metavar="IP", help="Client address (default: the --from or "
              "captured client pod, else an assumed pod address).")
@click.option("--source-port", type=click.IntRange(1, 65535), default=51234, show_default=True,
              help="Client port.")
@click.option("--from-host", is_flag=True, help="The client is a host-network process: the "
              "request enters nat OUTPUT instead of PREROUTING.")
@click.option("--node", "node", metavar="NODE", help="Trace on this node of the snapshot.")
@click.option("--node-ip", "node_ips", multiple=True, metavar="IP",
              help="An address of the node (repeatable): decides addrtype LOCAL matches.")
@click.option("-o", "--output", type=OUTPUTS, default="text", show_default=True)
@fleet_options
@live_options
@probe_options
def trace(target: str | None, rules_files: tuple[str, ...], snapshot_dir: str | None,
          to: str | None, namespace: str | None, protocol: str | None, source_ip: str | None,
          source_port: int, from_host: bool, node: str | None, node_ips: tuple[str, ...],
          output: str, all_nodes: bool, node_selector: str | None, parallel: int,
          **live: object) -> None:
    """Trace one request to a Service through the node's kube-proxy rules.

    \b
    TARGET is NAMESPACE/NAME[:PORT] (or NAME with -n), read from the cluster or the
    snapshot; with bare --rules-file dumps it is found through kube-proxy's rule
    comments. Or give --to IP:PORT. Without --snapshot or --rules-file the live
    cluster of your kubeconfig is asked.

    \b
    Examples:
      kubectl clusterip trace default/my-service --snapshot examples/kind-my-service
      kubectl clusterip trace default/my-service --rules-file iptables-save.txt
      kubectl clusterip trace --to 10.96.0.10:53 --protocol udp --rules-file dump.txt
      kubectl clusterip trace --to [fd00:10:96::a]:53 --rules-file v4.txt --rules-file v6.txt
      kubectl clusterip trace my-service -n default --from default/client-abc
      kubectl clusterip trace kube-system/kube-dns:dns --node worker-1 --context kind-kind

    \b
    Exit codes: 0 the request reaches an endpoint, 1 a step is broken (an error-level
    finding), 2 the trace could not be made (bad usage or input, missing service, API
    or debug pod failure).
    """
    from kubectl_clusterip.engine import (
        Request,
        node_context,
        node_name,
        require_one_target,
        run_trace,
    )
    from kubectl_clusterip.findings import has_errors
    from kubectl_clusterip.render import dump, trace_report, traces_document

    require_one_target(target, to, source_ip, node_ips)
    sel = fleet_selector(all_nodes, node_selector)
    if sel is not False:
        from kubectl_clusterip import fleetcli
        fleetcli.check_usage(sel, snapshot=snapshot_dir, rules_file=rules_files, node=node,
                             to=to, source_ip=source_ip, probe=live["probe"],
                             **{"from": live["client_pod"]})
        req = Request(target, namespace, None, protocol, None, source_port, from_host,
                      None, node_ips)
        sys.exit(fleetcli.trace_all(*live_setup(live, target, namespace, None, None, False),
                                    req, sel, parallel, output, bool(live["quiet"])))
    if live["probe_in_pod"] and not (live["probe"] and live["client_pod"]):
        raise ClusterIPError("--probe-in-pod needs --probe and --from POD")
    if live["probe"] and (rules_files or snapshot_dir or to):
        raise ClusterIPError("--probe needs a live cluster and a TARGET service (a snapshot "
                             "replays the observations `capture --probe` kept)")
    snap = load_snapshot_from(rules_files, snapshot_dir,
                              live_source(live, target, namespace, node, source_ip))
    namespace = namespace or snap.meta.get("namespace")  # live: the context's namespace
    req = Request(target, namespace, to, protocol, source_ip, source_port, from_host, node,
                  node_ips)
    traces = run_trace(snap, req)
    ctx = node_context(snap, node_name(snap, req), node_ips)
    if output == "text":
        click.echo("\n\n".join(trace_report(t, ctx) for t in traces))
    else:
        click.echo(dump(traces_document(traces), output))
    if any(has_errors(t.findings) for t in traces):
        sys.exit(EXIT_BROKEN)


@main.command(short_help="Show the service ports kube-proxy programs on a node.")
@click.argument("target", required=False)
@color_option(None)
@debug_option
@rules_source_options
@click.option("-n", "--namespace", help="Only services in this namespace.")
@click.option("--node", "node", metavar="NODE", help="The node of the snapshot to show.")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "json", "yaml"]),
              default="table", show_default=True)
@fleet_options
@live_options
def rules(target: str | None, rules_files: tuple[str, ...], snapshot_dir: str | None,
          namespace: str | None, node: str | None, output: str, all_nodes: bool,
          node_selector: str | None, parallel: int, **live: object) -> None:
    """Show every service port kube-proxy programs on a node, with its endpoints and odds.

    \b
    Examples:
      kubectl clusterip rules --snapshot examples/kind-my-service
      kubectl clusterip rules kube-system/kube-dns --rules-file iptables-save.txt -o json
    """
    from kubectl_clusterip.engine import parse_target, service_ports
    from kubectl_clusterip.reads import cut
    from kubectl_clusterip.render import dump, services_table

    def keep(ports: list) -> list:
        if target:
            ns, name, port_sel = parse_target(target, namespace)
            ports = select_ports(ports, ns, name, port_sel)
            if not ports:
                raise ClusterIPError(f"service {cut(target)} not found in the rules")
        elif namespace:
            ports = [sp for sp in ports if sp.namespace == namespace]
        return ports

    sel = fleet_selector(all_nodes, node_selector)
    if sel is not False:
        from kubectl_clusterip import fleetcli
        fleetcli.check_usage(sel, snapshot=snapshot_dir, rules_file=rules_files, node=node)
        sys.exit(fleetcli.rules_all(*live_setup(live, None, namespace, None, None, False), sel,
                                    parallel, output, bool(live["quiet"]), keep))
    snap = load_snapshot_from(rules_files, snapshot_dir,
                              live_source(live, None, namespace, node, None, dns=False))
    modes, ports = service_ports(snap, node)
    ports = keep(ports)
    if output in ("json", "yaml"):
        click.echo(dump({"kind": "ServicePortList", "proxyMode": ",".join(modes),
                         "items": [sp.to_dict() for sp in ports]}, output))
    elif not ports:
        click.echo("No service ports found.", err=True)
    else:
        click.echo(services_table(ports, wide=output == "wide"))


@main.command(short_help="Install the tab-completion hook for kubectl.")
@click.option("--dir", "directory", metavar="DIR", type=click.Path(file_okay=False),
              help="Install the hook here (default: beside kubectl-clusterip).")
@click.option("--print", "print_only", is_flag=True,
              help="Print the hook script instead of installing it.")
def completion(directory: str | None, print_only: bool) -> None:
    """Install the kubectl_complete-clusterip hook: tab completion through kubectl.

    \b
    kubectl (>= 1.26) completes `kubectl clusterip <TAB>` by running an executable
    named kubectl_complete-clusterip from PATH: subcommands, flags, namespaces,
    services, nodes and pods (from the --snapshot, or the current context's cluster).
    pip and pipx install it with the plugin; krew links only kubectl-clusterip, so
    run this once after a krew install.

    \b
    Examples:
      kubectl clusterip completion                      # beside kubectl-clusterip
      kubectl clusterip completion --dir ~/.local/bin
      kubectl clusterip completion --print > hook && chmod +x hook
    """
    from pathlib import Path

    from kubectl_clusterip.completion import hook

    if print_only:
        click.echo(hook.hook_script(), nl=False)
        return
    where = Path(directory).expanduser() if directory else hook.default_dir()
    packaged = None if directory else hook.packaged_hook(where)
    if packaged:
        click.echo(f"{packaged} is already installed (by pip or pipx); nothing to do")
        return
    try:
        path = hook.install_hook(where)
    except OSError as e:
        raise ClusterIPError(f"cannot write {where / hook.HOOK}: {e.strerror}; choose "
                             "another directory on PATH with --dir") from None
    click.echo(f"wrote {path}")
    if not hook.on_path(where):
        click.echo(f"warning: {where} is not on PATH; kubectl will not find the hook", err=True)
