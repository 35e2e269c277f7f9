"""Read rule dumps from files and recognise their format from the content, not the name."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

from kubectl_clusterip.iptables.dataplane import IptablesDataplane
from kubectl_clusterip.iptables.parse import looks_like_iptables
from kubectl_clusterip.model import ClusterIPError, Node, Packet, ServicePort, Trace


class Dataplane(Protocol):
    """What every proxy mode offers the CLI: its services, and one request's trace."""

    mode: str

    @property
    def family(self) -> int: ...

    @property
    def source(self) -> str: ...

    def services(self) -> list[ServicePort]: ...

    def trace(self, packet: Packet, node: Node | None = None) -> Trace: ...

    def cluster_cidrs(self) -> list[str]: ...


MAX_DUMP_BYTES = 512 * 1024 * 1024


def read_text(path: str) -> str:
    """A dump's text; `-` is stdin. Binary or unreadable input is a one-line error."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise ClusterIPError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ClusterIPError(f"{path}: is a directory (use --snapshot for a snapshot)") from None
    except OSError as e:
        raise ClusterIPError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_DUMP_BYTES:
        raise ClusterIPError(f"{path}: larger than {MAX_DUMP_BYTES >> 20} MiB")
    if b"\0" in data[:65536]:
        raise ClusterIPError(f"{path}: binary data, not a rule dump")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ClusterIPError(f"{path}: not UTF-8 text, not a rule dump") from None
    if not text.strip():
        raise ClusterIPError(f"{path}: empty file")
    return text


def parse_dump(text: str, source: str) -> Dataplane:
    if looks_like_iptables(text):
        return IptablesDataplane.from_text(text, source)
    raise ClusterIPError(f"{source}: not a recognised rule dump (expected iptables-save output)")
