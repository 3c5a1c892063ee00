"""The WebSocket client side of the load tests, without I/O: upgrade, frame cutting, markers.

Pure (no socket, no gevent, no locust), so tests/loadtest/ unit-tests it. `_gws.py` puts it on
gevent sockets. Frames are cut straight out of the received bytes, as fanout.py's asyncio client
does: `FrameReader.feed(data, now)` calls `on_text(data, start, end, now)` with the payload in
place (no copy), so a receiver pays a few `bytes.find` calls per message and nothing more.

Every load-test message text starts with the marker `LT:<seq>:<sent_ns>:`: `seq` numbers the
messages of one room (assigned by the one process that holds all of the room's senders and
receivers), `sent_ns` is the sender's `time.monotonic_ns()`, so a receiver in that process
measures delivery latency on the same clock.
"""

from __future__ import annotations

import base64
import hashlib
import os
from urllib.parse import urlencode, urlsplit

from _wsclient import client_frame

__all__ = [
    "FrameReader",
    "UpgradeError",
    "check_upgrade",
    "client_frame",
    "marker_text",
    "parse_id",
    "upgrade_request",
    "ws_path",
]

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MESSAGE_PREFIX = b'{"type":"message"'
MARK = b"LT:"
ID_KEY = b'"id":"'
# A message id `<ms>-<seq>` packs into one int64 (the ledger's array) as ms << 20 | seq: 43 bits
# of milliseconds last until the year 2248, and 2^20 messages within one millisecond of one room
# is far beyond any broker.
ID_SEQ_BITS = 20
ID_SEQ_MASK = (1 << ID_SEQ_BITS) - 1


class UpgradeError(Exception):
    """The server did not switch protocols; the message says what it answered."""


def ws_path(room: str, name: str, since: str | None = None) -> str:
    params = {"room": room, "name": name}
    if since is not None:
        params["since"] = since
    return "/ws?" + urlencode(params)


def upgrade_request(host_header: str, path: str) -> tuple[bytes, bytes]:
    """The HTTP/1.1 upgrade request and the Sec-WebSocket-Key it carries."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
        b"User-Agent: webchat-locust\r\n\r\n" % (path.encode(), host_header.encode(), key)
    )
    return request, key


def check_upgrade(head: bytes, key: bytes, body: bytes = b"") -> None:
    """Raise UpgradeError unless `head` (the answer up to the blank line) accepts `key`.

    `body`, what followed the blank line, only goes into the error message of a refusal.
    """
    status_line, _, rest = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"101":
        status = parts[1].decode(errors="replace") if len(parts) > 1 else "?"
        text = body[:160].decode(errors="replace").strip()
        raise UpgradeError(f"upgrade refused: HTTP {status} {text}".rstrip())
    headers = {}
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    if headers.get(b"sec-websocket-accept") != accept:
        raise UpgradeError("upgrade answer has a wrong Sec-WebSocket-Accept")
    if headers.get(b"sec-websocket-extensions"):
        raise UpgradeError("server negotiated an extension that was not offered")


def split_target(url: str) -> tuple[str, str, int, bool, str]:
    """`http(s)://host[:port]` or `ws(s)://...` to (scheme, host, port, tls, Host header)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"{url!r}: the scheme must be http, https, ws or wss")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: no host name")
    tls = parts.scheme in ("https", "wss")
    port = parts.port or (443 if tls else 80)
    return parts.scheme, host, port, tls, parts.netloc


def marker_text(seq: int, sent_ns: int, size: int) -> str:
    """A message text of at least `size` characters that starts with the marker."""
    text = f"LT:{seq}:{sent_ns}:"
    return text + "." * (size - len(text)) if len(text) < size else text


def parse_id(raw: bytes | str) -> int:
    """A message id `<ms>-<seq>` as one integer that orders like the id (see ID_SEQ_BITS)."""
    if isinstance(raw, str):
        raw = raw.encode()
    ms, _, seq = raw.partition(b"-")
    return (int(ms) << ID_SEQ_BITS) | int(seq)


class FrameReader:
    """Cuts a server's WebSocket frames (unmasked, RFC 6455 5.2) out of a byte stream.

    Subclasses override `on_text(data, start, end, now)` (the payload is `data[start:end]`),
    `on_ping(payload)`, `on_close(code)` and `on_protocol_error(why)`. Continuation frames
    (fragmented messages) are not expected from webchat and are reported as protocol errors.
    """

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, data: bytes, now: int) -> None:
        if self.tail:
            data = self.tail + data
            self.tail = b""
        pos = 0
        n = len(data)
        on_text = self.on_text
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1]
            if length & 0x80:
                self.on_protocol_error("server frame is masked")
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
            if opcode == 0x1 and b0 & 0x80:
                on_text(data, start, end, now)
            elif opcode == 0x9:
                self.on_ping(data[start:end])
            elif opcode == 0x8:
                self.on_close(
                    int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1005
                )
                return
            elif opcode != 0xA:  # a pong needs nothing
                self.on_protocol_error(f"unexpected frame: opcode {opcode}, fin {b0 >> 7}")
                return
            pos = end
        if pos < n:
            self.tail = data[pos:]

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        raise NotImplementedError

    def on_ping(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_close(self, code: int) -> None:
        raise NotImplementedError

    def on_protocol_error(self, why: str) -> None:
        raise NotImplementedError


def pong_frame(payload: bytes) -> bytes:
    return client_frame(payload, 0xA)


def close_frame(code: int = 1000) -> bytes:
    return client_frame(code.to_bytes(2, "big"), 0x8)


def text_frame(payload: bytes) -> bytes:
    return client_frame(payload, 0x1)
