"""A minimal WebSocket client for load generation: the upgrade by hand, frames cut from the stream.

A general client costs several microseconds per frame before a benchmark sees it; this one is an
`asyncio.Protocol` whose `on_text(data, start, end, now)` sees each text payload in place, without
a copy. It answers pings and close frames, masks what it sends (RFC 6455 5.3), and checks the
upgrade answer (status 101, Sec-WebSocket-Accept, no extension). `Target` accepts loopback URLs
only. Standard library only; the leading underscore keeps Locust from loading it as a locustfile.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ERROR_PREFIX = b'{"type":"error"'
WELCOME_PREFIX = b'{"type":"welcome"'


def now_us() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock wsbench's markers use too."""
    return time.monotonic_ns() // 1000


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked client frame (RFC 6455 5.2/5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    mask = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + body


class HandshakeFailed(Exception):
    pass


class WsClient(asyncio.Protocol):
    """One WebSocket connection: upgrade by hand, then cut frames from the byte stream.

    Subclasses override `on_text(data, start, end, now)`, which sees the text payload as
    `data[start:end]` without a copy. Pings are answered; a close is answered and recorded.
    """

    def __init__(self, host: str, path: str) -> None:
        self.host = host
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.close_code: int | None = None
        self.lost = False
        self.welcome: dict[str, Any] | None = None
        self.errors: Counter[str] = Counter()
        self._key = base64.b64encode(os.urandom(16))
        self._tail = b""

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"User-Agent: webchat-loadtest\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self._key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        self.lost = True
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(f"closed during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = now_us()
        if self._tail:
            data = self._tail + data
            self._tail = b""
        if not self.is_open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    self._fail("upgrade response too long")
                else:
                    self._tail = data
                return
            self._handshake(data[:end])
            if not self.is_open:
                return
            data = data[end + 4 :]
        pos = 0
        n = len(data)
        on_text = self.on_text
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1]
            if length & 0x80:
                self._fail("server frame is masked")
                return
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1:
                on_text(data, start, end, now)
            elif opcode == 0x9:  # ping: answer at once, or the server's heartbeat closes us
                self.send_raw(client_frame(data[start:end], 0xA))
            elif opcode == 0x8:
                self.close_code = (
                    int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1005
                )
                self.close()
                return
            pos = end
        if pos < n:
            self._tail = data[pos:]

    # helpers

    def _handshake(self, head: bytes) -> None:
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"101":
            self._fail(f"upgrade refused: {status_line.decode(errors='replace')}")
            return
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest())
        headers = {}
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != accept:
            self._fail("bad Sec-WebSocket-Accept")
            return
        if headers.get(b"sec-websocket-extensions"):
            self._fail("server negotiated an extension we did not offer")
            return
        self.is_open = True
        if not self.opened.done():
            self.opened.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(why))
        if self.transport is not None:
            self.transport.abort()

    def send_raw(self, frame: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(frame)
        return True

    def send_text(self, payload: bytes) -> bool:
        return self.is_open and self.send_raw(client_frame(payload))

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.is_open:
                self.transport.write(client_frame(code.to_bytes(2, "big"), 0x8))
            self.transport.close()
        self.is_open = False

    def abort(self) -> None:
        self.is_open = False
        if self.transport is not None:
            self.transport.abort()

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        """A text frame outside the benchmark's messages: welcome, presence, error."""
        if data.startswith(ERROR_PREFIX, start):
            try:
                self.errors[json.loads(data[start:end]).get("code", "?")] += 1
            except ValueError:
                self.errors["unparsable"] += 1
        elif self.welcome is None and data.startswith(WELCOME_PREFIX, start):
            self.welcome = json.loads(data[start:end])


# --- opening connections ---------------------------------------------------------------------


class Target:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise SystemExit(f"fanout: --url must be ws://127.0.0.1:PORT/...; got {url!r}")
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SystemExit(f"fanout: only loopback targets are allowed, got host {host!r}")
        self.url = url
        self.ip = "127.0.0.1" if host == "localhost" else host
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def ws_path(target: Target, room: str, name: str, since: str | None = None) -> str:
    """The target's path with the chat's query: room, name and (to resume) since."""
    base = target.path.split("?", 1)[0]
    query = f"room={quote(room)}&name={quote(name)}"
    if since is not None:
        query += f"&since={quote(since)}"
    return f"{base}?{query}"


async def open_one(target: Target, client: WsClient, timeout: float) -> str | None:
    """Connect and upgrade; None on success, else why not."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: client, target.ip, target.port)
            await client.opened
    except (OSError, HandshakeFailed, TimeoutError) as exc:
        client.abort()
        return str(exc)[:80] if isinstance(exc, HandshakeFailed) else type(exc).__name__
    return None


async def open_many(
    target: Target,
    count: int,
    concurrency: int,
    factory: Callable[[], WsClient],
    timeout: float,
) -> dict[str, Any]:
    """Open `count` connections with at most `concurrency` handshakes in flight."""
    clients: list[WsClient] = []
    errors: Counter[str] = Counter()
    next_index = 0
    t0 = time.monotonic()
    t_last = t0

    async def one() -> None:
        nonlocal t_last
        client = factory()
        why = await open_one(target, client, timeout)
        if why is not None:
            errors[why] += 1
            return
        clients.append(client)
        t_last = time.monotonic()

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            next_index += 1
            await one()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    secs = t_last - t0
    return {
        "clients": clients,
        "ok": len(clients),
        "fail": count - len(clients),
        "errors": dict(errors),
        "secs": round(secs, 3),
        "rate": round(len(clients) / secs) if secs > 0 else None,
    }


def close_all(clients: Sequence[WsClient]) -> None:
    for client in clients:
        client.abort()
