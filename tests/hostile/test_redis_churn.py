"""Connections churning rooms: no Redis pool errors, no ghost members, no readiness drop.

Issue 12: 64-200 connections joining and leaving rooms exhausted the Redis connection pool
("No connection available": joins refused with 503, leaves lost), left ghost members for 30 s
and took the instance out of the balancer once (the health check and the backfill queued
behind the requests). Here 150 clients churn for a few seconds on a pool of 16 connections:
each joins a room (a fresh one, or one of a few shared ones), sends a message every third
time and leaves; every fifth gives up in the middle of its upgrade, which cancels its join
half-way. Nothing may fail, and within a second or two of the last leave no name is present
anywhere (not after the 30 s presence timeout that would clean up ghosts).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.client import ChatClient
from tests.support.redis import RedisServer
from tests.support.redis_traffic import FAST
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

USERS = 150
CHURN_SECONDS = 8
SHARED_ROOMS = 5
# A pool far smaller than the clients (the default is 64): requests must queue for it.
POOL = ("--redis-pool", "16")
# No admission on loop lag: on a loaded test machine it could refuse upgrades, and this test
# is about Redis, not the event loop (tests/hostile/test_overload.py tests admission).
NO_ADMISSION = ("--max-loop-lag", "0")
ARGS = (*FAST, *POOL, *NO_ADMISSION)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


async def abandon_upgrade(server: WebchatProcess, room: str, name: str) -> None:
    """Send an upgrade request and reset the connection while the server joins the room."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"GET /ws?room={room}&name={name} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    await writer.drain()
    await asyncio.sleep(random.uniform(0, 0.02))  # the attack's timing, not synchronisation
    writer.transport.abort()
    del reader


async def churn(
    session: aiohttp.ClientSession, server: WebchatProcess, user: int, stop: asyncio.Event
) -> Counter[str]:
    seen: Counter[str] = Counter()
    turn = 0
    # Five turns at least (each user abandons an upgrade and sends), however slow the machine.
    while turn < 5 or not stop.is_set():
        turn += 1
        shared = turn % 2 == 0
        room = f"s{random.randrange(SHARED_ROOMS)}" if shared else f"c{user}-{turn}"
        name = f"u{user}"
        if turn % 5 == 0:
            await abandon_upgrade(server, room, name)
            seen["abandoned"] += 1
            continue
        try:
            client = await asyncio.wait_for(
                ChatClient.connect(session, server.ws_url, room=room, name=name), seconds(20)
            )
        except aiohttp.WSServerHandshakeError as exc:
            seen[f"refused {exc.status}"] += 1
            continue
        seen["joined"] += 1
        if turn % 3 == 0:
            await client.send("hi", nonce=f"{user}-{turn}")
            while True:
                frame = await client.recv(timeout=20)
                if frame["type"] == "error":
                    seen[f"error {frame['code']}"] += 1
                    break
                if frame["type"] == "message" and frame.get("nonce") == f"{user}-{turn}":
                    seen["sent"] += 1
                    break
        await client.close()
    return seen


async def test_churning_rooms(redis_server: RedisServer):
    with (
        WebchatProcess("--redis-url", redis_server.url, *ARGS) as server,
        redis_server.client() as redis,
    ):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            ready: Counter[int | None] = Counter()
            stop = asyncio.Event()

            async def watch_readiness() -> None:
                while not stop.is_set():
                    try:
                        timeout = aiohttp.ClientTimeout(total=seconds(5))
                        async with session.get(server.url + "/readyz", timeout=timeout) as r:
                            ready[r.status] += 1
                    except (aiohttp.ClientError, TimeoutError):
                        ready[None] += 1
                    await asyncio.sleep(0.05)  # the polling interval

            watcher = asyncio.ensure_future(watch_readiness())
            users = [asyncio.ensure_future(churn(session, server, i, stop)) for i in range(USERS)]
            await asyncio.sleep(CHURN_SECONDS)  # how long the attack lasts
            stop.set()
            outcomes = sum((await asyncio.gather(*users)), Counter())
            await watcher
            print(f"churn: {dict(outcomes)}; /readyz answers: {dict(ready)}")
            assert set(outcomes) <= {"joined", "sent", "abandoned"}, outcomes
            assert outcomes["joined"] > USERS and outcomes["abandoned"] > 0, outcomes
            assert set(ready) == {200}, f"readiness dropped: {dict(ready)}"

            # No ghost: every name leaves after the grace, long before the presence timeout.
            left: dict[str, object] = {}

            def nobody_present() -> bool:
                present = [k for k in redis.scan_iter("wc:{*}:[pek]", count=1000)]
                members = redis.zrangebyscore("wc:{#index}:members", 1, "+inf", withscores=True)
                left.update(keys=present, members=members)
                left.update(holders=[redis.zrange(k, 0, -1) for k in present if k.endswith(b":e")])
                return not present and not members

            try:
                await poll(nobody_present, 5, "every name to leave")
            except TimeoutError as exc:
                raise AssertionError(f"ghosts: {left}") from exc
            for room in [f"s{n}" for n in range(SHARED_ROOMS)]:
                observer = await ChatClient.connect(session, server.ws_url, room=room, name="o")
                assert observer.welcome is not None
                assert observer.welcome["members"] == ["o"], observer.welcome
                await observer.close()
    log = server.log()
    for bad in ("No connection available", "Traceback", "ERROR", "not ready"):
        assert bad not in log, log
