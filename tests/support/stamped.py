"""A WebSocket client that notes when the kernel received each frame, not when the test read it.

A latency measured in the test process includes how long that process took to get around to
reading (on a busy machine, many milliseconds). `StampedReceiver` asks the kernel for each
packet's arrival time (SO_TIMESTAMPNS) and reads frame by frame, so each frame carries the
arrival time of the packet that completed it: the moment the server's write reached this
machine's client socket, whatever the test's scheduling.

It reads in its own thread with a blocking socket: `StampedReceiver.connect(port, target)`,
then `start()`; `frames` fills with (arrival time, frame JSON); `close()` ends it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import threading
from typing import Any

from tests.support.timing import seconds

# <asm-generic/socket.h>; Python's socket module does not name it. Its control message has
# the same number and carries a struct timespec (two 64-bit integers on 64-bit Linux).
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("qq")


class StampedReceiver:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def connect(cls, port: int, target: str) -> StampedReceiver:
        """Upgrade `GET target` on 127.0.0.1:`port`; fails unless the answer is 101."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=seconds(10))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                (
                    f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = b""
            while not head.endswith(b"\r\n\r\n"):  # byte by byte: no frame byte is taken
                byte = sock.recv(1)
                if not byte:
                    raise ConnectionError(f"closed during the upgrade: {head!r}")
                head += byte
            assert head.startswith(b"HTTP/1.1 101"), head.decode("latin-1")
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def start(self) -> StampedReceiver:
        self._thread.start()
        return self

    def messages(self) -> dict[str, float]:
        """Message id -> when its frame arrived (seconds since the epoch, the kernel's clock)."""
        return {f["id"]: at for at, f in list(self.frames) if f.get("type") == "message"}

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already closed by the server
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=seconds(10))
        self.sock.close()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        self.sock.settimeout(None)  # the reads end when `close` shuts the socket down
        try:
            while True:
                header, _ = self._exactly(2)
                if header is None:
                    return
                opcode, length = header[0] & 0x0F, header[1] & 0x7F
                if length >= 126:
                    size = 2 if length == 126 else 8
                    extended, _ = self._exactly(size)
                    if extended is None:
                        return
                    length = int.from_bytes(extended, "big")
                payload, arrived = self._exactly(length)
                if payload is None or opcode == 0x8:  # end of stream, or a close frame
                    return
                if opcode == 0x1:
                    self.frames.append((arrived, json.loads(payload)))
        except BaseException as exc:  # reported by close()
            self.error = exc

    def _exactly(self, size: int) -> tuple[bytes | None, float]:
        """`size` bytes and the arrival time of the packet that held the last of them."""
        data = b""
        arrived = 0.0
        while len(data) < size:
            chunk, ancillary, _, _ = self.sock.recvmsg(size - len(data), socket.CMSG_SPACE(16))
            if not chunk:
                return None, arrived
            data += chunk
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = TIMESPEC.unpack(value[: TIMESPEC.size])
                    arrived = sec + nsec / 1e9
        return data, arrived
