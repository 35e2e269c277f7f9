"""The server side of RFC 6455, just enough for the Kubernetes client's exec and port-forward.

The fake API server (tests/fakeapi.py) hands an upgrade request here: `handshake` answers
101 with Sec-WebSocket-Accept and the subprotocol chosen from the client's offer, and
`ServerWebSocket` then reads the client's (masked) frames and writes unmasked ones. Data
frames on the Kubernetes channel protocols (v4/v5.channel.k8s.io) carry the channel number
in their first byte. Stdlib only; every read is bounded by the socket's timeout.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from typing import BinaryIO

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    """The client broke RFC 6455 (an unmasked frame, a bad opcode)."""


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip().encode() + GUID).digest()).decode()


def choose_protocol(offer: str | None, supported: tuple[str, ...]) -> str | None:
    """The first protocol the client offers that the server speaks."""
    offered = [p.strip() for p in (offer or "").split(",") if p.strip()]
    return next((p for p in offered if p in supported), None)


def handshake(wfile: BinaryIO, key: str, protocol: str) -> None:
    """101 Switching Protocols; after it the connection carries frames only."""
    wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
                 f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n").encode())
    wfile.flush()


def _unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


class ServerWebSocket:
    """One accepted connection: `recv` whole messages, `send` frames, `close` once."""

    def __init__(self, sock: socket.socket, rfile: BinaryIO, timeout: float = 10.0) -> None:
        self.sock, self.rfile = sock, rfile
        self.sock.settimeout(timeout)
        self._send_lock = threading.Lock()
        self.close_sent = False
        self.close_received = False

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise EOFError("the client went away mid-frame")
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = self._read(2)
        n = b2 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        if not b2 & 0x80:
            raise ProtocolError("client frames must be masked (RFC 6455 §5.1)")
        mask = self._read(4)
        return bool(b1 & 0x80), b1 & 0x0F, _unmask(self._read(n), mask)

    def recv(self) -> tuple[int, bytes]:
        """The next data message (fragments joined), pings answered; (OP_CLOSE, payload)
        when the client closes (the close is answered)."""
        opcode, parts = None, []
        while True:
            fin, op, data = self._frame()
            if op == OP_PING:
                self.send(OP_PONG, data)
            elif op == OP_PONG:
                continue
            elif op == OP_CLOSE:
                self.close_received = True
                self.close(int.from_bytes(data[:2], "big") if len(data) >= 2 else 1000)
                return OP_CLOSE, data
            elif op in (OP_TEXT, OP_BINARY, OP_CONT):
                if op != OP_CONT:
                    opcode = op
                parts.append(data)
                if fin:
                    if opcode is None:
                        raise ProtocolError("a continuation frame without a first frame")
                    return opcode, b"".join(parts)
            else:
                raise ProtocolError(f"unknown opcode {op:#x}")

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        with self._send_lock:
            if self.close_sent:
                return  # nothing may follow a close frame
            if opcode == OP_CLOSE:
                self.close_sent = True
            self.sock.sendall(head + payload)

    def send_channel(self, channel: int, data: bytes, chunk: int = 32 * 1024) -> None:
        """Data on one Kubernetes channel, in frames of at most `chunk` bytes as a kubelet
        streams it."""
        for i in range(0, max(len(data), 1), chunk):
            self.send(OP_BINARY, bytes([channel]) + data[i:i + chunk])

    def close(self, code: int = 1000) -> None:
        """Send the close frame (once); a client already gone is fine."""
        try:
            self.send(OP_CLOSE, struct.pack("!H", code))
        except OSError:
            pass

    def wait_closed(self) -> None:
        """After our close: read until the client's close arrives or the socket ends."""
        try:
            while not self.close_received:
                self.recv()
        except (OSError, EOFError, ProtocolError):
            pass
