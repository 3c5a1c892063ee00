"""Tools of the hostile tests: clients that never read, a room full of the largest messages,
and readings of the server process from /proc (RSS, descriptors) and of its log.

A client that "never reads" is a plain socket with a small receive buffer (so the TCP window
stays small) on which the test calls no recv: the kernel buffers fill and the server's writes
back up. `closed_by_server` (the socket's TCP state) and `status_line` (a peek) look at it
without consuming anything the server sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import Callable

import aiohttp

from tests.support.servers import WebchatProcess
from tests.support.timing import seconds

# The largest message PROTOCOL.md allows by default: 2,000 code points, here emoji (4 bytes of
# UTF-8 each); "\x01" is the largest once encoded (JSON escapes it as 6 bytes: \u0001).
EMOJI = "\U0001f600"
CONTROL = "\x01"


def max_text(n: int, char: str = EMOJI) -> str:
    """Message number `n`, exactly 2,000 code points long."""
    prefix = f"{n:04d} "
    return prefix + char * (2000 - len(prefix))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Peak:
    """The largest value of `read()`, sampled every 20 ms in the background until `stop()`."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self.value = read()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.value = max(self.value, self._read())
            await asyncio.sleep(0.02)  # a sampling period, not a wait for an event

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.value = max(self.value, self._read())
        return self.value


async def fill_room(
    session: aiohttp.ClientSession, server: WebchatProcess, room: str, texts: list[str]
) -> None:
    """Publish `texts` in `room` (sent as UTF-8: emoji stay under --max-frame) and wait for
    every echo. The server must allow the rate (--rate/--burst)."""
    async with session.ws_connect(f"{server.ws_url}?room={room}&name=filler") as ws:
        assert (await ws.receive_json(timeout=seconds(10)))["type"] == "welcome"
        # In rounds small enough for the echoes to fit the send buffer (256 KiB).
        for start in range(0, len(texts), 10):
            batch = texts[start : start + 10]
            for text in batch:
                await ws.send_str(json.dumps({"type": "message", "text": text}, ensure_ascii=False))
            for _ in batch:
                while True:
                    frame = await ws.receive_json(timeout=seconds(30))
                    assert frame["type"] in ("message", "presence"), frame
                    if frame["type"] == "message":
                        break


def upgrade_request(target: str, host: str = "127.0.0.1") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def non_reader(port: int, request: bytes = b"", rcvbuf: int = 4096) -> socket.socket:
    """A socket that sent `request` (maybe nothing) and will not read."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        # Before connect: the window scale is fixed in the SYN, so the window stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        async with asyncio.timeout(seconds(10)):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if request:
                await loop.sock_sendall(sock, request)
    except BaseException:
        sock.close()
        raise
    return sock


def status_line(sock: socket.socket) -> str | None:
    """The status line the server has begun to answer with, without reading it; None if it
    has sent nothing yet."""
    try:
        head = sock.recv(256, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    if b"\r\n" not in head:
        return None
    return head.split(b"\r\n", 1)[0].decode("latin-1")


# tcp_info.tcpi_state (linux/tcp.h); after a FIN it is CLOSE_WAIT, after a RST CLOSE.
TCP_ESTABLISHED = 1


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed (FIN) or dropped (RST) this connection, read from the
    socket's TCP state: nothing it sent is consumed, so the client still reads nothing."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return state != TCP_ESTABLISHED


async def read_answer(sock: socket.socket, limit: int = 1 << 16) -> tuple[int, dict, bytes]:
    """Read a small HTTP answer to its end (Content-Length): status, headers, body."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(seconds(10)):
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(sock, limit)
            if not chunk:
                raise AssertionError(f"connection closed mid-answer: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = await loop.sock_recv(sock, limit)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body


def assert_quiet_log(server: WebchatProcess, max_lines: int = 50) -> str:
    """The server's log: no traceback, no ERROR line, and at most `max_lines` lines."""
    text = server.log()
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert not errors, errors[:5]
    assert len(text.splitlines()) <= max_lines, text[-3000:]
    return text


async def http_get(port: int, target: str) -> tuple[int, dict, bytes]:
    """One request on its own connection (`Connection: close`), read to the server's close:
    once this returns, the server holds no socket for it (it closes before the client sees
    the end)."""
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    sock = await non_reader(port, request.encode(), rcvbuf=65536)
    try:
        answer = await read_answer(sock)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds(10)):
            while await loop.sock_recv(sock, 65536):
                pass
    finally:
        sock.close()
    return answer
