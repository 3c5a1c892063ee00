"""Accept a WebSocket upgrade in an aiohttp handler, then take the socket away from aiohttp.

aiohttp's WebSocketResponse keeps, for the whole session, the parsed request and its headers,
the HTTP protocol and parser, a WebSocket reader, writer and queue, and two tasks: about 10 KiB
of each idle client (docs/performance.md). Here aiohttp still parses and routes the request,
web.py runs the checks before the upgrade (the handshake's: protocol.upgrade_problem) and
node.py the join; this module has aiohttp write the 101, gives the transport to another
asyncio.Protocol (websocket.py), and once the handler has returned, aiohttp forgets the
connection and frees everything it held for it.

The seams, all public names: `RequestHandler.set_parser` (aiohttp's own hand-over point after
an upgrade: it passes on the bytes read after the request), the protocol's `transport` attribute
(set to None, so aiohttp neither writes to nor closes the socket) and `connection_lost` (so its
server drops the connection), and asyncio's `Transport.set_protocol`.
tests/integration/test_upgrade.py checks that aiohttp lets go.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any, Final, cast

from aiohttp import web

from webchat.listener import GuardedHandler
from webchat.websocket import ServerSocket

# RFC 6455 section 1.3: the server proves it read the key by hashing it with this GUID.
WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept answer to a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


class _Tail:
    """Takes what aiohttp read after the upgrade request (a client may send frames at once)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        """aiohttp calls this when it lets the connection go; nothing to do."""


async def take_over(request: web.Request, protocol: asyncio.Protocol) -> web.StreamResponse:
    """Answer the upgrade with 101 and give the socket to `protocol`; return the 101 at once.

    The request must be a valid handshake (web.py: protocol.upgrade_problem found none). Then
    `protocol.connection_made(transport)` is called (unless the client is gone already: then
    never), and `data_received` with anything the client sent after its request. The handler
    should return the response at once: aiohttp holds the request and its objects until then.
    """
    response = web.StreamResponse(
        status=101,
        headers={
            "Upgrade": "websocket",
            "Connection": "upgrade",
            "Sec-WebSocket-Accept": accept_key(request.headers["Sec-WebSocket-Key"]),
        },
    )
    response.force_close()  # no HTTP request may follow on this connection
    try:
        await response.prepare(request)
    except ConnectionError:  # the client is gone (aiohttp answers nothing more, quietly)
        return response
    handler = request.protocol
    transport = request.transport
    if transport is None or transport.is_closing():
        return response
    tail = _Tail()
    if isinstance(handler, GuardedHandler) and isinstance(protocol, ServerSocket):
        gate = handler.hand_over()  # the socket keeps its place under the cap until it closes
        if gate is not None:
            protocol.hold(gate)
    handler.set_parser(cast(Any, tail))
    handler.transport = None
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if tail.data:
        protocol.data_received(tail.data)
    # Once the request's task is done (aiohttp has sent the 101 and finished the request), tell
    # aiohttp the connection is gone: its server drops it and everything it held is freed.
    # Any earlier, aiohttp would cancel the handler (handler_cancellation) before it returns.
    task = asyncio.current_task()
    assert task is not None, "take_over runs in aiohttp's request handler"
    task.add_done_callback(lambda _: handler.connection_lost(None))
    return response
