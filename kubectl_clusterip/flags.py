"""Address flags (--to, --source-ip, --node-ip, --dns-server): parsed once, strictly.

Python's int() and str.isdigit() take any Unicode digit ("８０", "٣", "²"), so a port
typed with full-width digits would be traced as port 80 or crash int(); these parsers
accept ASCII digits only, ports 1-65535, and plain IP addresses (no zone index).
"""

from __future__ import annotations

import ipaddress
import re

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.reads import cut

_PORT = re.compile(r"[0-9]{1,5}")


def parse_ip(flag: str, value: str, given: str | None = None) -> str:
    """An IPv4 or IPv6 address in its normal form, or a one-line error naming the flag
    and the value `given` (the whole IP:PORT when the address is a part of it)."""
    try:
        if not value.isascii() or "%" in value:
            raise ValueError
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ClusterIPError(f"{flag} {cut(given or value)}: expected an IP address, e.g. "
                             "10.244.1.5 "
                             "or fd00:10:244::5") from None


def parse_port(flag: str, value: str, port: str) -> int:
    number = int(port) if _PORT.fullmatch(port) else 0
    if not 0 < number < 65536:
        raise ClusterIPError(f"{flag} {cut(value)}: expected a port from 1 to 65535, not "
                             f"{cut(port, 20)}")
    return number


def parse_host_port(flag: str, value: str, default_port: int | None = None) -> tuple[str, int]:
    """`IP:PORT` or `[IPv6]:PORT` (the port optional when there is a default)."""
    example = "IP:PORT, e.g. 10.96.0.10:53" if default_port is None else "IP[:PORT]"
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ClusterIPError(f"{flag} {cut(value)}: expected {example}")
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    elif ":" in value and default_port is not None:
        host, port = value, None  # a bare IPv6 address
    elif ":" in value:
        raise ClusterIPError(f"{flag} {cut(value)}: write IPv6 as [ADDRESS]:PORT")
    else:
        host, port = value, None
    if port is None and default_port is None:
        raise ClusterIPError(f"{flag} {cut(value)}: expected {example}")
    ip = parse_ip(flag, host, value)
    return ip, default_port if port is None else parse_port(flag, value, port)  # type: ignore
