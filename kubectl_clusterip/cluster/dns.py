"""The DNS step: resolve the service as the client would, and record what was answered.

The client's resolver walks its search path (names with fewer dots than ndots get each
search domain first), so the same name may mean different services from different
namespaces; the walk is recorded so a wrong or missing answer shows where it came from.
The server is CoreDNS through a port-forward (TCP), or one given with --dns-server.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from kubectl_clusterip.cluster.api import Forbidden, stream_error
from kubectl_clusterip.flags import parse_host_port
from kubectl_clusterip.model import ClusterIPError

CLUSTER_DOMAIN = "cluster.local"
Ask = Callable[[dns.message.Message], dns.message.Message]


def corefile_domain(corefile: str) -> str | None:
    """The cluster domain: the first zone of the Corefile's `kubernetes` plugin that is not
    a reverse zone (`kubernetes cluster.local in-addr.arpa ip6.arpa {`)."""
    for line in corefile.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["kubernetes"]:
            for zone in words[1:]:
                if zone == "{":
                    break
                zone = zone.rstrip(".").lower()
                if zone and not zone.endswith(".arpa"):
                    return zone
    return None


def cluster_domain(configmap: dict | None) -> tuple[str, str]:
    """The cluster domain, and where it came from (the report says so)."""
    if configmap is None:
        return CLUSTER_DOMAIN, "assumed: ConfigMap kube-system/coredns not readable"
    corefile = str((configmap.get("data") or {}).get("Corefile") or "")
    domain = corefile_domain(corefile)
    if domain is None:
        return CLUSTER_DOMAIN, "assumed: no kubernetes plugin zone in the coredns Corefile"
    return domain, "the kubernetes plugin's zone in ConfigMap kube-system/coredns"


def cluster_search(namespace: str, domain: str = CLUSTER_DOMAIN) -> list[str]:
    return [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]


def client_resolv(pod: dict | None, namespace: str, domain: str = CLUSTER_DOMAIN
                  ) -> tuple[list[str], int]:
    """Search path and ndots the kubelet writes into the pod's resolv.conf (dnsPolicy,
    dnsConfig); the cluster default when there is no client pod. The node's own search
    domains (appended for ClusterFirst) are not known here and are left out."""
    if pod is None:
        return cluster_search(namespace, domain), 5
    spec = pod.get("spec") or {}
    ns = (pod.get("metadata") or {}).get("namespace") or namespace
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if policy == "ClusterFirst" and spec.get("hostNetwork"):
        policy = "Default"
    search: list[str] = []
    ndots = 1
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        search, ndots = cluster_search(ns, domain), 5
    cfg = spec.get("dnsConfig") or {}
    for s in cfg.get("searches") or []:
        if s not in search:
            search.append(s)
    for opt in cfg.get("options") or []:
        if opt.get("name") == "ndots" and str(opt.get("value", "")).isdigit():
            ndots = int(opt["value"])
    return search, ndots


def candidates(query: str, search: list[str], ndots: int) -> list[str]:
    """The names a glibc/musl resolver tries, in order, as absolute names."""
    if query.endswith("."):
        return [query]
    with_search = [f"{query}.{s.strip('.')}." for s in search]
    if query.count(".") >= ndots:
        return [f"{query}.", *with_search]
    return [*with_search, f"{query}."]


def parse_server(value: str) -> tuple[str, int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT`."""
    return parse_host_port("--dns-server", value, default_port=53)


def udp_asker(host: str, port: int, timeout: float) -> Ask:
    """Ask a server directly: UDP, and TCP when the answer is truncated."""
    def ask(q: dns.message.Message) -> dns.message.Message:
        return dns.query.udp_with_fallback(q, host, timeout=timeout, port=port)[0]
    return ask


def tcp_asker(sock: socket.socket, timeout: float) -> Ask:
    """Ask over one TCP stream (a port-forward's socket): queries one after another."""
    def ask(q: dns.message.Message) -> dns.message.Message:
        return dns.query.tcp(q, "127.0.0.1", timeout=timeout, sock=sock)
    return ask


@contextmanager
def port_forward_asker(api, pod: dict, timeout: float, port: int = 53) -> Iterator[Ask]:
    """A TCP asker through the API server's port-forward to one CoreDNS pod."""
    from kubernetes.stream import portforward

    name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
    api.calls += 1
    try:
        pf = portforward(api.core().connect_get_namespaced_pod_portforward, name, ns,
                         ports=str(port))
        sock = pf.socket(port)
    except Exception as e:  # websocket errors, ApiException: many types, one line
        refused = stream_error(e, f"create pods/portforward in namespace {ns}")
        if isinstance(refused, Forbidden):
            raise ClusterIPError(f"forbidden: you may not create pods/portforward in namespace "
                                 f"{ns}; pass --dns-server IP to ask a server directly"
                                 ) from None
        why = str(refused or getattr(e, "reason", None) or e).strip().splitlines()[0]
        why = why.split(" -+-+- ")[0]  # websocket-client appends headers and body
        raise ClusterIPError(f"port-forward to {ns}/{name} failed: {why}") from None
    ask = tcp_asker(sock, timeout)

    def ask_saying_why(q: dns.message.Message) -> dns.message.Message:
        try:
            return ask(q)
        except (OSError, EOFError) as e:  # the kubelet says why on the port's error channel
            why = pf.error(port)
            if isinstance(why, str) and why.strip():
                raise EOFError(f"port-forward error: {why.strip().splitlines()[0]}") from e
            raise

    try:
        yield ask_saying_why
    finally:
        try:
            sock.close()
            pf.close()
        except Exception:  # closing a broken stream must not hide the answer
            pass


def _ask_one(ask: Ask, name: str, rtype: str) -> dict:
    response = ask(dns.message.make_query(name, rtype))
    records = []
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rtype):
            records.extend(r.to_text() for r in rrset)
    return {"name": name, "type": rtype, "rcode": dns.rcode.to_text(response.rcode()),
            "records": records}


def lookup(query: str, search: list[str], ndots: int, ask: Ask, server: str,
           srv_ports: list[tuple[str, str]] = (), max_queries: int = 12) -> dict:
    """meta["dns"]: the search walk (A, then AAAA where A is empty), AAAA and SRV for the
    name found. srv_ports: (port name, protocol) of the service's named ports."""
    out: dict = {"query": query, "fqdn": None, "searchPath": list(search), "ndots": ndots,
                 "server": server, "answers": [], "error": None}
    asked = out["answers"]
    try:
        for name in candidates(query, search, ndots)[:max_queries]:
            a = _ask_one(ask, name, "A")
            asked.append(a)
            if a["rcode"] == "NOERROR" and not a["records"]:
                aaaa = _ask_one(ask, name, "AAAA")
                asked.append(aaaa)
                if aaaa["records"]:
                    out["fqdn"] = name
                    break
            elif a["records"]:
                out["fqdn"] = name
                asked.append(_ask_one(ask, name, "AAAA"))
                break
        if out["fqdn"]:
            labels = out["fqdn"].rstrip(".").split(".")
            if len(labels) >= 4 and labels[2] == "svc":  # name.ns.svc.domain: SRV exists
                for port_name, proto in srv_ports[:max_queries]:
                    asked.append(_ask_one(ask, f"_{port_name}._{proto.lower()}.{out['fqdn']}",
                                          "SRV"))
    except (dns.exception.Timeout, TimeoutError):
        out["error"] = f"timeout: {server} did not answer (after {len(asked)} answer(s))"
    except (OSError, EOFError, dns.exception.DNSException) as e:
        out["error"] = f"{type(e).__name__} asking {server}: {e}"
    return out
