"""The typed boundary for snapshot objects and meta: every field the code reads, checked once.

Objects reach the engine from objects.yaml (hand-edited, truncated, pasted) or from the live
API; both become a Snapshot, which checks them here on construction. A field of the wrong
type, or an address, port or protocol the walkers cannot use, is a ClusterIPError naming
the file, the path (`items[3].spec.ports[0].port`), the object and the value cut short.
Past this point the diagnosis, the walkers and the renderers read fields without checking.
Fields the code never reads are not looked at; a missing field stays missing (null is
treated as missing, as the API's omitempty does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.reads import cut

Check = Callable[[Any, str], None]  # raises _Bad(path suffix, expectation)


class _Bad(Exception):
    def __init__(self, path: str, expected: str, value: Any) -> None:
        super().__init__(path)
        self.path, self.expected, self.value = path, expected, value


def _scalar(kind: type | tuple[type, ...], expected: str,
            valid: Callable[[Any], bool] | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int) or \
                (valid is not None and not valid(value)):
            raise _Bad(path, expected, value)
    return check


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


STR = _scalar(str, "a string")
INT = _scalar(int, "an integer")
BOOL = _scalar(bool, "true or false")
PORT = _scalar(int, "a port number from 1 to 65535", lambda v: 0 < v < 65536)
NODE_PORT = _scalar(int, "a port number from 0 to 65535", lambda v: 0 <= v < 65536)
INT_OR_STR = _scalar((int, str), "a port number or name",
                     lambda v: isinstance(v, str) or 0 <= v < 65536)
PROTOCOL = _scalar(str, "TCP, UDP or SCTP", lambda v: v in ("TCP", "UDP", "SCTP"))
IP = _scalar(str, "an IP address", _is_ip)
CIDR = _scalar(str, "a CIDR", _is_cidr)
CLUSTER_IP = _scalar(str, 'an IP address, "None" or ""',
                     lambda v: v in ("", "None") or _is_ip(v))
ANY_MAPPING = _scalar(dict, "a mapping")


def of(item: Check) -> Check:
    """A list whose items pass `item`."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _Bad(path, "a list", value)
        for i, v in enumerate(value):
            if v is None:
                raise _Bad(f"{path}[{i}]", "a value", v)
            item(v, f"{path}[{i}]")
    return check


def fields(**spec: Check) -> Check:
    """A mapping whose listed fields (when present and not null) pass their checks."""
    spec = {k.rstrip("_"): v for k, v in spec.items()}  # from_ -> from

    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Bad(path, "a mapping", value)
        for key, sub in spec.items():
            v = value.get(key)
            if v is not None:
                sub(v, f"{path}.{key}" if path else key)
    return check


def _string_map(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _Bad(path, "a mapping of strings", value)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _Bad(f"{path}.{k}", "a string", v)


STRINGS = of(STR)
METADATA = fields(name=STR, namespace=STR, labels=_string_map, annotations=_string_map,
                  uid=STR, ownerReferences=of(fields(kind=STR, name=STR)))
SELECTOR = fields(matchLabels=_string_map, matchExpressions=of(fields(
    key=STR, operator=STR, values=STRINGS)))
CONTAINERS = of(fields(name=STR, image=STR, args=STRINGS, command=STRINGS, ports=of(fields(
    name=STR, containerPort=PORT, protocol=PROTOCOL, hostPort=NODE_PORT))))
CONDITIONS = of(fields(type=STR, status=STR, reason=STR, message=STR))
POLICY_PORTS = of(fields(port=INT_OR_STR, endPort=PORT, protocol=PROTOCOL))
PEERS = of(fields(podSelector=SELECTOR, namespaceSelector=SELECTOR,
                  ipBlock=fields(cidr=CIDR, except_=of(CIDR))))

KINDS: dict[str, Check] = {
    "Service": fields(metadata=METADATA, spec=fields(
        type=STR, clusterIP=CLUSTER_IP, clusterIPs=of(CLUSTER_IP), ipFamilies=STRINGS,
        ipFamilyPolicy=STR, ports=of(fields(name=STR, port=PORT, protocol=PROTOCOL,
                                            targetPort=INT_OR_STR, nodePort=NODE_PORT,
                                            appProtocol=STR)),
        selector=_string_map, externalIPs=STRINGS, externalName=STR, sessionAffinity=STR,
        sessionAffinityConfig=fields(clientIP=fields(timeoutSeconds=INT)),
        internalTrafficPolicy=STR, externalTrafficPolicy=STR, trafficDistribution=STR,
        loadBalancerSourceRanges=STRINGS, healthCheckNodePort=NODE_PORT,
        publishNotReadyAddresses=BOOL),
        status=fields(loadBalancer=fields(ingress=of(fields(ip=STR, hostname=STR,
                                                           ipMode=STR))))),
    "EndpointSlice": fields(metadata=METADATA, addressType=STR, endpoints=of(fields(
        addresses=STRINGS, nodeName=STR, zone=STR, hostname=STR,
        conditions=fields(ready=BOOL, serving=BOOL, terminating=BOOL),
        hints=fields(forZones=of(fields(name=STR)), forNodes=of(fields(name=STR))),
        targetRef=fields(kind=STR, name=STR, namespace=STR))),
        ports=of(fields(name=STR, port=NODE_PORT, protocol=PROTOCOL, appProtocol=STR))),
    "Pod": fields(metadata=METADATA, spec=fields(
        nodeName=STR, hostNetwork=BOOL, containers=CONTAINERS, initContainers=CONTAINERS,
        dnsPolicy=STR),
        status=fields(podIP=IP, podIPs=of(fields(ip=IP)), hostIP=STR, phase=STR,
                      conditions=CONDITIONS, containerStatuses=of(fields(
                          name=STR, ready=BOOL, restartCount=INT, state=ANY_MAPPING,
                          lastState=ANY_MAPPING)))),
    "Node": fields(metadata=METADATA, spec=fields(podCIDR=CIDR, podCIDRs=of(CIDR),
                                                  unschedulable=BOOL),
                   status=fields(addresses=of(fields(type=STR, address=STR)),
                                 conditions=CONDITIONS)),
    "ConfigMap": fields(metadata=METADATA, data=_string_map),
    "DaemonSet": fields(metadata=METADATA, spec=fields(
        selector=SELECTOR, template=fields(metadata=METADATA, spec=fields(
            containers=CONTAINERS, hostNetwork=BOOL))),
        status=fields(desiredNumberScheduled=INT, numberReady=INT, numberAvailable=INT,
                      numberUnavailable=INT, currentNumberScheduled=INT,
                      updatedNumberScheduled=INT)),
    "NetworkPolicy": fields(metadata=METADATA, spec=fields(
        podSelector=SELECTOR, policyTypes=STRINGS,
        ingress=of(fields(from_=PEERS, ports=POLICY_PORTS)),
        egress=of(fields(to=PEERS, ports=POLICY_PORTS)))),
    "Namespace": fields(metadata=METADATA),
}

_ROUTE_DST = _scalar(str, 'a CIDR or "default"', lambda v: v == "default" or _is_cidr(v))
IP_ADDR = of(fields(ifname=STR, addr_info=of(fields(
    family=STR, scope=STR, local=IP, prefixlen=_scalar(int, "a prefix length from 0 to 128",
                                                       lambda v: 0 <= v <= 128)))))
IP_ROUTE = of(fields(type=STR, dst=_ROUTE_DST, dev=STR, prefsrc=IP, gateway=IP))

META = fields(
    namespace=STR, clientNode=STR, service=STR, context=STR, dnsNotChecked=STR,
    networkPolicyNotChecked=STR, client=fields(pod=STR, ip=IP, node=STR),
    dns=fields(query=STR, fqdn=STR, searchPath=STRINGS, ndots=INT, server=STR, error=STR,
               answers=of(fields(name=STR, type=STR, rcode=STR, records=STRINGS))),
    nodeFailures=_string_map)


def _value(value: Any) -> str:
    """A bad value as the message shows it: quoted when a string, cut short."""
    return cut(repr(value), 60)


def _fail(where: str, e: _Bad, obj: Any = None) -> ClusterIPError:
    what = ""
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        md = obj["metadata"]
        name = "/".join(x for x in (md.get("namespace"), md.get("name")) if isinstance(x, str))
        what = f" ({cut(obj.get('kind'), 20)} {cut(name, 60)})" if name else ""
    return ClusterIPError(f"{where}: {e.path}{what}: expected {e.expected}, not "
                          f"{_value(e.value)}")


def check_objects(objects: Any, where: str) -> None:
    """Every object of a kind the code reads, checked against its fields' types and values."""
    if not isinstance(objects, list):
        raise ClusterIPError(f"{where}: items: expected a list of objects, not {_value(objects)}")
    for i, obj in enumerate(objects):
        path = f"items[{i}]"
        if not isinstance(obj, dict):
            raise ClusterIPError(f"{where}: {path}: expected an object, not {_value(obj)}")
        kind = obj.get("kind")
        if not isinstance(kind, str):
            raise ClusterIPError(f"{where}: {path}.kind: expected a kind such as Service, "
                                 f"not {_value(kind)}")
        try:
            if not isinstance(obj.get("metadata"), dict) or \
                    not isinstance(obj["metadata"].get("name"), str):
                raise _Bad(f"{path}.metadata.name", "a name", (obj.get("metadata") or {})
                           .get("name") if isinstance(obj.get("metadata"), dict)
                           else obj.get("metadata"))
            check = KINDS.get(kind)
            if check is not None:
                check(obj, path)
        except _Bad as e:
            raise _fail(where, e, obj) from None


def check_meta(meta: Any, where: str) -> None:
    if not isinstance(meta, dict):
        raise ClusterIPError(f"{where}: expected a mapping, not {_value(meta)}")
    try:
        META(meta, "")
    except _Bad as e:
        raise _fail(where, e) from None


def check_json(doc: Any, where: str, check: Check) -> None:
    """Decoded JSON (e.g. `ip -j` output) against its shape: `where: [2].addr_info[0].local`."""
    try:
        check(doc, "")
    except _Bad as e:
        raise _fail(where, e) from None
