"""What an ended connection leaves to the cyclic garbage collector, on the app run in this process.

The server collects its oldest generation rarely (cli.serve), so a connection whose objects form
a cycle keeps its memory until then: the soak's RSS grew with the churn (docs/storms.md). Here
real clients connect and end in every way a connection ends; with `gc.DEBUG_SAVEALL` set, what
a collection finds unreachable is kept in `gc.garbage` for the test to look at.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from websockets.protocol import Protocol

from tests.support.rawws import RawWebSocket
from tests.support.servers import free_port
from tests.support.timing import poll, seconds
from webchat.cli import connection_limits
from webchat.collector import collect_garbage
from webchat.config import load_config
from webchat.connection import Connection
from webchat.listener import Gate, Runner
from webchat.session import Session
from webchat.web import NODE, make_app
from webchat.websocket import ServerSocket, parsers

# The app's objects of one connection (and websockets' protocol it owns).
CONNECTION_TYPES = (Connection, Session, ServerSocket, Protocol)  # Session: its TokenBucket too
PER_ENDING = 6  # connections per way of ending
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class App:
    port: int
    gate: Gate
    runner: web.AppRunner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ws"


@pytest.fixture
def saved_garbage() -> Iterator[None]:
    """Collections (automatic ones included) keep what they find in gc.garbage, and only the
    test collects: so nothing is freed behind its back, and on main the cycles stay found."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    yield
    gc.set_debug(0)
    gc.garbage.clear()
    gc.enable()


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def served(broker: str, request: pytest.FixtureRequest) -> AsyncIterator[App]:
    """The whole webchat app in this process, set up as cli.serve sets it up, on each broker."""
    argv = ["--rate", "5", "--burst", "2", "--max-frame", "1024", "--presence-grace", "0"]
    if broker == "redis":
        argv += ["--redis-url", request.getfixturevalue("redis_server").url]
    config = load_config(argv, {})
    limits = connection_limits(config)
    gate = Gate(limits, config.header_timeout)
    runner = Runner(make_app(config, limits), gate, access_log=None, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield App(port, gate, runner)
    await runner.cleanup()


@pytest.fixture
def app(saved_garbage: None, served: App) -> App:
    """The app, with what the collector finds kept for the test to look at."""
    return served


async def _end_in_every_way(app: App, session: aiohttp.ClientSession) -> None:
    """Connect and end PER_ENDING clients in each way: the client closes, the client's socket
    is dropped, the server closes for a frame too big (1009), the server drops a ping flood
    (1008, without reading on)."""
    url = app.url + "?room=garbage"
    timeout = seconds(10)

    async def connected() -> aiohttp.ClientWebSocketResponse:
        ws = await session.ws_connect(url, autoping=False)
        welcome = await ws.receive_json(timeout=timeout)
        assert welcome["type"] == "welcome", welcome
        return ws

    async def closed_by_server(ws: aiohttp.ClientWebSocketResponse) -> int | None:
        async with asyncio.timeout(timeout):
            while not (await ws.receive()).type.name.startswith("CLOS"):
                pass
        await ws.close()
        return ws.close_code

    for _ in range(PER_ENDING):
        ws = await connected()
        await ws.close()
        assert ws.close_code == 1000
    for _ in range(PER_ENDING):
        raw = await RawWebSocket.connect("127.0.0.1", app.port, "/ws?room=garbage")
        assert (await raw.next_frame()).json()["type"] == "welcome"
        raw.abort()
    for _ in range(PER_ENDING):
        ws = await connected()
        await ws.send_str("x" * 2000)
        assert await closed_by_server(ws) == 1009
    for _ in range(PER_ENDING):
        ws = await connected()
        for _ in range(20):
            await ws.ping()
        assert await closed_by_server(ws) == 1008
    # Every socket is gone on the server's side, and the node has forgotten its clients.
    await poll(lambda: app.gate.open == 0, 10, "all sockets closed")
    node = app.runner.app[NODE]
    await poll(lambda: node.hub.connection_count == 0, 10, "the hub emptied")


async def test_an_ended_connection_leaves_none_of_its_objects_to_the_cyclic_collector(app: App):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await _end_in_every_way(app, session)
    spare = parsers(1024).spare  # no connection's: lent to any socket for a read (websocket.py)
    alive = [
        type(o).__name__
        for o in gc.get_objects()
        if isinstance(o, CONNECTION_TYPES) and not any(o is ws for ws in spare)
    ]
    gc.collect()
    left = [type(o).__name__ for o in gc.garbage if isinstance(o, CONNECTION_TYPES)]
    assert left == [], f"{len(left)} objects of ended connections were cyclic garbage"
    assert alive == [], "reference counting freed them when their connections ended"


async def test_the_collector_frees_the_transports_of_closed_sockets(app: App):
    """What the app cannot free itself (asyncio's transport is a cycle) is collected once
    enough sockets have closed; the collector runs as cli.serve runs it."""
    collector = asyncio.create_task(collect_garbage(app.gate, after=4 * PER_ENDING))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await _end_in_every_way(app, session)

        def servers_transports() -> int:
            found = 0
            for o in gc.garbage:
                if isinstance(o, asyncio.Transport):
                    sockname = o.get_extra_info("sockname")
                    found += sockname is not None and sockname[1] == app.port
            return found

        # One collection, without the test's: every server-side socket found unreachable.
        count = await poll(servers_transports, 10, "the collector's collection")
        assert count >= 4 * PER_ENDING
    finally:
        collector.cancel()


# What the collector goes through per idle connection (gc.get_objects(), docs/performance.md,
# "Garbage"): 14.5 on both brokers, 11 of them asyncio's transport and its registration with
# the selector; 24 when every socket kept a websockets Protocol and its token bucket apart.
TRACKED_PER_IDLE_CONNECTION = 16.5
IDLE = 300


def _tracked_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


async def _idle_clients(app: App, count: int) -> asyncio.subprocess.Process:
    """`count` welcomed clients held by another process (tests/support/idle_clients.py)."""
    clients = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.idle_clients",
        str(app.port),
        "/ws?room=idle",
        str(count),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert clients.stdout is not None
    try:
        async with asyncio.timeout(seconds(30)):
            line = await clients.stdout.readline()
        assert line == b"ready\n", f"the clients did not all get their welcome: {line!r}"
    except BaseException:
        clients.kill()
        await clients.wait()
        raise
    return clients


async def _stop(clients: asyncio.subprocess.Process) -> None:
    assert clients.stdin is not None
    clients.stdin.close()
    async with asyncio.timeout(seconds(10)):
        assert await clients.wait() == 0


async def test_an_idle_connection_keeps_few_objects_for_the_collector_to_go_through(served: App):
    """A full collection's pause is in proportion to the objects it goes through: 10,000 idle
    connections at 24 each paused the event loop 150-380 ms (collector.py)."""
    node = served.runner.app[NODE]
    warm = await _idle_clients(served, 20)  # what the first clients create once (caches)
    try:
        before = _tracked_objects()
        clients = await _idle_clients(served, IDLE)
        try:
            assert node.hub.connection_count == 20 + IDLE
            per_connection = (_tracked_objects() - before) / IDLE
        finally:
            await _stop(clients)
    finally:
        await _stop(warm)
    assert per_connection < TRACKED_PER_IDLE_CONNECTION, (
        f"{per_connection:.2f} objects tracked by the garbage collector per idle connection"
    )
