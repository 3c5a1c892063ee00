"""A WebSocket client on a plain socket that reads only when the test says so.

aiohttp's client reads every socket into memory in the background, so it can never be a slow
consumer. `RawWebSocket` does the upgrade by hand on a non-blocking socket with a small receive
buffer (set before connect, so the TCP window stays small) and calls `recv` only inside
`read_frames`: between calls the kernel buffers fill and the server's writes back up, as with
a phone on a bad network. Every read is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from tests.support.timing import seconds

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, head: str, body: bytes) -> None:
        super().__init__(f"upgrade refused with {status}: {head!r} {body[:200]!r}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])

    def json(self) -> dict[str, Any]:
        assert self.opcode == OP_TEXT, f"not a text frame: {self}"
        value: dict[str, Any] = json.loads(self.payload)
        return value


def encode_client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True
) -> bytes:
    """A client frame (RFC 6455 section 5.2): masked and final unless told otherwise."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        head.append(mask_bit | length)
    elif length < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", length)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", length)
    if not masked:
        return bytes(head) + payload
    mask = os.urandom(4)
    masked_payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + mask + masked_payload


class RawWebSocket:
    """One hand-made WebSocket connection. Use `connect`, then `read_frames`/`close`."""

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self._buffer = bytearray(buffered)
        self.eof = False  # the server closed or reset the TCP connection
        self.reset = False  # ... with a reset (ECONNRESET)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        target: str,
        *,
        rcvbuf: int = 4096,
        mss: int = 0,
        timeout: float = 5,
        early: bytes = b"",
    ) -> RawWebSocket:
        """Upgrade `GET target`; raise HandshakeError unless the answer is 101.

        `early` is sent right behind the request, in the same write, before the 101 is read.
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Before connect: the window scale is fixed in the SYN, so the window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            sock.setblocking(False)
            async with asyncio.timeout(seconds(timeout)):
                await loop.sock_connect(sock, (host, port))
                key = base64.b64encode(os.urandom(16)).decode()
                request = (
                    f"GET {target} HTTP/1.1\r\n"
                    f"Host: {host}:{port}\r\n"
                    "Upgrade: websocket\r\n"
                    "Connection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n"
                    "\r\n"
                )
                await loop.sock_sendall(sock, request.encode() + early)
                data = bytearray()
                while b"\r\n\r\n" not in data:
                    chunk = await loop.sock_recv(sock, 65536)
                    if not chunk:
                        raise ConnectionError(f"server closed during the upgrade: {data!r}")
                    data += chunk
                head, _, rest = bytes(data).partition(b"\r\n\r\n")
                text = head.decode("latin-1")
                status = int(text.split(" ", 2)[1])
                if status != 101:
                    raise HandshakeError(status, text, await _read_body(loop, sock, text, rest))
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in text.split("\r\n")[1:])
                }
                assert headers.get("sec-websocket-accept") == accept.decode(), text
        except BaseException:
            sock.close()
            raise
        return cls(sock, rest)

    def rcvbuf(self) -> int:
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def server_socket_inode(self) -> int:
        """The inode of the server's end of this connection (Linux), for `process_has_socket`."""
        inode = socket_inode(self.sock.getpeername(), self.sock.getsockname())
        assert inode, "the server's end of this connection belongs to no process"
        return inode

    def _take_frame(self) -> Frame | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        assert second & 0x80 == 0, "server frames must not be masked"
        assert first & 0x80, "the server does not fragment frames"
        length, offset = second & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, offset = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, offset = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < offset + length:
            return None
        frame = Frame(first & 0x0F, bytes(buf[offset : offset + length]))
        del buf[: offset + length]
        return frame

    async def read_frames(self, *, until_close: bool = True, timeout: float = 10) -> list[Frame]:
        """Read frames until a close frame (included) or EOF; fail after `timeout` seconds.

        With `until_close=False`, return what has arrived once the socket has been idle
        briefly instead (still bounded by `timeout`).
        """
        loop = asyncio.get_running_loop()
        frames: list[Frame] = []
        deadline = loop.time() + seconds(timeout)
        while True:
            while (frame := self._take_frame()) is not None:
                frames.append(frame)
                if frame.opcode == OP_CLOSE:
                    return frames
            if self.eof:
                return frames
            left = deadline - loop.time()
            if left <= 0:
                if until_close:
                    raise TimeoutError(f"no close frame or EOF within {timeout}s")
                return frames
            wait = left if until_close else min(left, seconds(0.3))
            try:
                async with asyncio.timeout(wait):
                    chunk = await loop.sock_recv(self.sock, 65536)
            except TimeoutError:
                if until_close:
                    continue
                return frames
            except ConnectionResetError:
                self.eof = self.reset = True
                continue
            if not chunk:
                self.eof = True
            self._buffer += chunk

    async def read_bytes(self, count: int, timeout: float = 5) -> bytes:
        """Exactly `count` raw bytes (what was read with the 101 first), for non-WebSocket peers."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds(timeout)):
            while len(self._buffer) < count:
                chunk = await loop.sock_recv(self.sock, 65536)
                assert chunk, f"EOF after {bytes(self._buffer)!r}"
                self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def next_frame(self, timeout: float = 10) -> Frame:
        """The next frame from the server; fail after `timeout` seconds or at EOF."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds(timeout)):
            while (frame := self._take_frame()) is None:
                assert not self.eof, f"the server closed the connection; unread: {self._buffer!r}"
                try:
                    chunk = await loop.sock_recv(self.sock, 65536)
                except ConnectionResetError:
                    self.eof = self.reset = True
                    continue
                if not chunk:
                    self.eof = True
                self._buffer += chunk
        return frame

    async def send_frame(
        self, opcode: int, payload: bytes, timeout: float = 5, *, fin: bool = True
    ) -> None:
        await self.send_bytes(encode_client_frame(opcode, payload, fin=fin), timeout)

    async def send_bytes(self, data: bytes, timeout: float = 5) -> None:
        """Send raw bytes: several frames at once, or a frame made by hand."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds(timeout)):
            await loop.sock_sendall(self.sock, data)

    async def send_close(self, code: int = 1000) -> None:
        await self.send_frame(OP_CLOSE, struct.pack("!H", code))

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a crashed client or a middlebox would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def _read_body(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, head: str, rest: bytes
) -> bytes:
    """The body of a refused upgrade, as far as Content-Length says (bounded by the caller)."""
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = bytearray(rest)
    while len(body) < length:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _proc_net_tcp_address(address: tuple[str, int]) -> str:
    """`host:port` as /proc/net/tcp spells it: the IPv4 address as a native-endian integer."""
    host, port = address
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}:{port:04X}"


def socket_inode(local: tuple[str, int], remote: tuple[str, int], attempts: int = 20) -> int:
    """The inode of the TCP socket `local` -> `remote` (Linux), 0 once no process holds it.

    /proc/net/tcp is read in page-sized chunks, and the kernel may skip an entry while other
    sockets come and go between two chunks, so an entry not found is looked for again.
    """
    wanted = (_proc_net_tcp_address(local), _proc_net_tcp_address(remote))
    for _ in range(attempts):
        with open("/proc/net/tcp") as table:
            for line in table:
                fields = line.split()
                if (fields[1], fields[2]) == wanted:
                    return int(fields[9])
    raise AssertionError(f"no TCP socket {local} -> {remote} in /proc/net/tcp")


def process_has_socket(pid: int, inode: int) -> bool:
    """Whether process `pid` has a file descriptor for the socket with this inode (Linux)."""
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:  # the process is gone
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except FileNotFoundError:  # closed while we looked
            continue
    return False
