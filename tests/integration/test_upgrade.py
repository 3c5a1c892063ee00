"""webchat/upgrade.py against a real aiohttp server in this process: after the 101 the socket
is served by another protocol, and aiohttp lets go of the connection (its server no longer lists
it and its request handler is freed), whether or not aiohttp cancels handlers on disconnect."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tests.support.rawws import RawWebSocket
from tests.support.servers import free_port
from tests.support.timing import poll
from webchat.limits import Budget
from webchat.listener import Gate, Runner
from webchat.upgrade import take_over
from webchat.websocket import ServerSocket


class Echo(asyncio.Protocol):
    """Sends back every byte it reads: proof that the socket is this protocol's now."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Server:
    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port
        self.outcomes: list[object] = []  # what the handler returned or raised, per request


@pytest.fixture(params=[True, False], ids=["handler_cancellation", "no_cancellation"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    holder: list[Server] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except BaseException as exc:
            holder[0].outcomes.append(exc)
            raise
        holder[0].outcomes.append(response.status)
        return response

    async def upgrade(request: web.Request) -> web.StreamResponse:
        return await take_over(request, Echo())

    app = web.Application(middlewares=[record])
    app.router.add_get("/ws", upgrade)
    runner = web.AppRunner(app, handler_cancellation=request.param)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    holder.append(Server(runner, port))
    yield holder[0]
    await runner.cleanup()


async def test_the_socket_changes_hands_and_aiohttp_lets_go(server: Server):
    early = b"sent with the request"
    raw = await RawWebSocket.connect("127.0.0.1", server.port, "/ws", early=early)
    assert await raw.read_bytes(len(early)) == early  # what came with the request, echoed
    aiohttp_server = server.runner.server
    assert aiohttp_server is not None
    await poll(lambda: not aiohttp_server.connections, 5, "aiohttp dropping the connection")
    await raw.send_bytes(b"ping?")
    assert await raw.read_bytes(5) == b"ping?"
    assert server.outcomes == [101], "the handler returned its 101, not a cancellation"
    gc.collect()
    held = [o for o in gc.get_objects() if isinstance(o, RequestHandler)]
    assert held == [], "aiohttp's request handler is freed while the socket lives on"
    raw.close()


async def test_an_upgraded_socket_keeps_its_place_under_the_socket_cap_until_it_closes():
    """listener.py counts sockets against the cap; after the hand-over the WebSocket (not
    aiohttp) holds that place, and gives it back when the client goes."""

    async def upgrade(request: web.Request) -> web.StreamResponse:
        return await take_over(request, ServerSocket(max_size=1024))

    app = web.Application()
    app.router.add_get("/ws", upgrade)
    gate = Gate(Budget(websockets=10, sockets=10), header_timeout=10)
    runner = Runner(app, gate, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        clients = [await RawWebSocket.connect("127.0.0.1", port, "/ws") for _ in range(3)]
        aiohttp_server = runner.server
        assert aiohttp_server is not None
        await poll(lambda: not aiohttp_server.connections, 5, "aiohttp letting go of them")
        assert gate.open == 3, "each WebSocket still counts once"
        for client in clients:
            client.close()
        await poll(lambda: gate.open == 0, 5, "the places given back as the clients go")
    finally:
        await runner.cleanup()
