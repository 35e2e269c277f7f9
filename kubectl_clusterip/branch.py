"""One branch of a packet walk, shared by every mode's walker, and the address tests they use.

A walk splits wherever the rules choose at random (statistic, numgen, an IPVS scheduler);
each branch carries its probability and what happened to the packet on the way. It is a
NamedTuple because branches are copied at every rule that changes them.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import NamedTuple

from kubectl_clusterip.model import Packet, Path, Step


class Branch(NamedTuple):
    probability: float
    src: str
    dst: str
    sport: int
    dport: int
    mark: int = 0
    dnat: tuple[str, int] | None = None
    masquerade: bool = False
    random_fully: bool = False
    snat: str | None = None
    sticky: bool = False
    steps: tuple[Step, ...] = ()
    notes: tuple[str, ...] = ()  # assumptions made on the way
    undecided: tuple[str, ...] = ()  # matches that could not be decided and were skipped

    @classmethod
    def start(cls, packet: Packet) -> Branch:
        return cls(1.0, packet.src_ip, packet.dst_ip, packet.src_port, packet.dst_port)

    def note(self, *notes: str) -> Branch:
        new = tuple(n for n in notes if n not in self.notes)
        return self._replace(notes=self.notes + new) if new else self

    def to_path(self, verdict: str) -> Path:
        """`accept` at the end of the hooks means DNAT'd, or left alone (no-match)."""
        if verdict == "accept":
            verdict = "dnat" if self.dnat else "no-match"
        return Path(self.probability, verdict, list(self.steps), self.dnat, self.masquerade,
                    self.random_fully, self.sticky, list(self.notes), self.snat,
                    list(self.undecided))


@lru_cache(maxsize=65536)
def network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


@lru_cache(maxsize=65536)
def address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(ip)


def in_cidr(ip: str, cidr: str) -> bool:
    """ip (canonical text) inside cidr; host routes compare as text, the common case."""
    host, _, bits = cidr.partition("/")
    if bits in ("32", "128", ""):
        return host == ip
    net = network(cidr)
    addr = address(ip)
    return addr.version == net.version and addr in net


def canonical(packet: Packet) -> Packet:
    """Addresses as the dumps print them, so they can be compared as text."""
    return packet.__class__(str(address(packet.src_ip)), str(address(packet.dst_ip)),
                            packet.dst_port, packet.protocol, packet.src_port,
                            packet.from_host)
