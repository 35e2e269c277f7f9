"""The values a rule carries, checked where the rule is parsed, so the walker can trust them.

A dump from a ticket may be hand-edited or cut: a port of 70000, a probability of 1.5 or
a mark that is not a number would otherwise surface deep in a walk as a Python exception.
Each check raises ClusterIPError naming the option and the value (cut short); the table
adds the file and line.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.paste import shorten

TCP_FLAGS = frozenset(("SYN", "ACK", "FIN", "RST", "URG", "PSH", "ALL", "NONE"))
MAX_U32 = 0xFFFFFFFF
# Dotted quads (and /0../32) that ipaddress accepts, recognised without building an address
# object: every endpoint of a big dump has a DNAT target and a -s, so this is most of the
# values read; whatever does not match is judged by ipaddress itself, as before.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
IPV4_NET = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?")


def bad(option: str, value: str, why: str) -> ClusterIPError:
    return ClusterIPError(f"{option} {shorten(value, 60)!r}: {why}")


@lru_cache(maxsize=65536)
def _network_ok(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        try:  # iptables also prints dotted masks: 10.0.0.0/255.0.0.0
            host, _, mask = value.partition("/")
            ipaddress.ip_network(f"{host}/{ipaddress.ip_address(mask)}", strict=False)
        except ValueError:
            return False
    return True


def check_cidr(option: str, value: str) -> None:
    if IPV4_NET.fullmatch(value) is None and not _network_ok(value):
        raise bad(option, value, "not an IP address or CIDR")


def check_port(option: str, value: str) -> None:
    """`80` or a range `80:90` (either end may be empty), each 0..65535."""
    for part in value.split(":", 1):
        if part and not (part.isascii() and part.isdigit() and int(part) <= 65535):
            raise bad(option, value, "not a port from 0 to 65535")


def check_ports(option: str, value: str) -> None:
    for item in value.split(","):
        check_port(option, item)


def check_probability(option: str, value: str) -> None:
    try:
        p = float(value)
    except ValueError:
        raise bad(option, value, "not a number") from None
    if not 0.0 < p <= 1.0:  # also refuses nan
        raise bad(option, value, "a probability must be above 0 and at most 1")


def check_u32(option: str, value: str) -> None:
    """A mark: `0x4000` or `0x4000/0x4000`, each part an unsigned 32-bit number."""
    for part in value.split("/", 1):
        try:
            n = int(part, 0)
        except ValueError:
            raise bad(option, value, "not a number") from None
        if not 0 <= n <= MAX_U32:
            raise bad(option, value, "outside 0..0xffffffff")


def check_tcp_flags(option: str, values: tuple[str, ...]) -> None:
    if len(values) != 2 or not all(set(v.split(",")) <= TCP_FLAGS for v in values):
        raise bad(option, " ".join(values), "expected MASK COMP, e.g. FIN,SYN,RST,ACK SYN")


def check_nat_to(option: str, value: str) -> None:
    """DNAT/SNAT `IP[-IP][:PORT[-PORT]]`, IPv6 as `[IP]:PORT`."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if not sep or port is None:
            raise bad(option, value, "expected [IPv6]:PORT")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    for h in host.split("-", 1):
        if not _ip_ok(h):
            raise bad(option, value, "not an IP address")
    for p in port.split("-", 1) if port else ():
        if not (p.isascii() and p.isdigit() and 0 < int(p) <= 65535):
            raise bad(option, value, "not a port from 1 to 65535")


def _ip_ok(host: str) -> bool:
    """An IP address; IPv4 by a regex (every DNAT rule of a node has one: ipaddress is slow)."""
    if IPV4.fullmatch(host):
        return True
    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def check_count(option: str, value: str) -> None:
    if not (value.isascii() and value.isdigit() and int(value) <= MAX_U32):
        raise bad(option, value, "not a whole number")


def check_protocol(option: str, value: str) -> None:
    if value.isdigit():
        if not (value.isascii() and int(value) <= 255):
            raise bad(option, value, "protocol numbers go from 0 to 255")
    elif not (value.replace("-", "").isalnum() and value.isascii()):
        raise bad(option, value, "not a protocol")


_MATCH_CHECKS = {
    ("", "-s"): check_cidr, ("", "-d"): check_cidr, ("", "-p"): check_protocol,
    ("tcp", "--dport"): check_port, ("tcp", "--sport"): check_port,
    ("udp", "--dport"): check_port, ("udp", "--sport"): check_port,
    ("sctp", "--dport"): check_port, ("sctp", "--sport"): check_port,
    ("tcp", "--destination-port"): check_port, ("tcp", "--source-port"): check_port,
    ("udp", "--destination-port"): check_port, ("udp", "--source-port"): check_port,
    ("multiport", "--dports"): check_ports, ("multiport", "--sports"): check_ports,
    ("multiport", "--ports"): check_ports, ("multiport", "--destination-ports"): check_ports,
    ("multiport", "--source-ports"): check_ports,
    ("statistic", "--probability"): check_probability,
    ("statistic", "--every"): check_count, ("statistic", "--packet"): check_count,
    ("mark", "--mark"): check_u32,
    ("recent", "--seconds"): check_count, ("recent", "--hitcount"): check_count,
    ("conntrack", "--ctorigdst"): check_cidr, ("conntrack", "--ctorigsrc"): check_cidr,
    ("conntrack", "--ctorigdstport"): check_port, ("conntrack", "--ctorigsrcport"): check_port,
}
_TARGET_CHECKS = {
    "--to-destination": check_nat_to, "--to-source": check_nat_to,
    "--set-xmark": check_u32, "--set-mark": check_u32, "--or-mark": check_u32,
    "--and-mark": check_u32, "--xor-mark": check_u32, "--to-ports": check_port,
}


_TARGET_NEEDS = {"DNAT": "--to-destination", "SNAT": "--to-source"}


def check_rule(matches, target_options, target: str | None = None) -> None:
    """Raise ClusterIPError for the first value the walker could not use."""
    needed = _TARGET_NEEDS.get(target or "")
    if needed and not any(o.name == needed for o in target_options):
        raise ClusterIPError(f"{target} without {needed} (iptables requires one)")
    for m in matches:
        for o in m.options:
            if o.name == "--tcp-flags":
                check_tcp_flags(o.name, o.values)
                continue
            check = _MATCH_CHECKS.get((m.module, o.name))
            if check is not None:
                if not o.values:
                    raise ClusterIPError(f"{o.name} without a value")
                check(o.name, o.value)
    for o in target_options:
        check = _TARGET_CHECKS.get(o.name)
        if check is not None:
            if not o.values:
                raise ClusterIPError(f"{o.name} without a value")
            check(o.name, o.value.replace("-", ":", 1) if o.name == "--to-ports" else o.value)
