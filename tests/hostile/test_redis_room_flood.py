"""Many one-message rooms cannot fill Redis: each costs a bounded amount, and all of it expires.

Issue 12: 68,679 rooms with one message each took Redis from 1 MB to 632 MB (222k keys, none
expiring; dedupe keys held the whole message). Now a one-message room whose members left
keeps exactly its history stream (the room TTL) and its nonce (5 minutes), holding the
message id, plus its entry in the room index: at most 1 KB more than the stream itself.
Scaled down to a few hundred rooms here (the bound is per room); `loadtest/redis_rooms.py`
runs the full attack. Two phases on one redis-server: rooms expire after a short --room-ttl;
then, with a long one, what a room costs while it is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis

from tests.support.client import ChatClient
from tests.support.redis import RedisServer
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

# No admission on loop lag (`--max-loop-lag 0`): a flood on a loaded test machine could be
# refused by it, and this test is about what Redis keeps, not the event loop.
FAST = ("--drain-delay", "0", "--drain-spread", "0", "--presence-grace", "0", "--max-loop-lag", "0")
ROOMS = 300
TEXT = "hi there"  # short text: the bound is for it
INDEX_ACTIVE = "wc:{#index}:active"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


async def one_message_room(
    session: aiohttp.ClientSession, server: WebchatProcess, room: str
) -> dict[str, Any]:
    """What the attacker did per room: join, one message with a nonce, leave."""
    client = await asyncio.wait_for(
        ChatClient.connect(session, server.ws_url, room=room, name="x"), seconds(20)
    )
    await client.send(TEXT, nonce="n")
    echo = await client.next_of("message", timeout=20)
    await client.close()
    return echo


async def flood(server: WebchatProcess, prefix: str, count: int) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(32)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> dict[str, Any]:
            async with gate:
                return await one_message_room(session, server, f"{prefix}{i}")

        return await asyncio.gather(*(one(i) for i in range(count)))


def room_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(f"wc:{{{prefix}*", count=1000))


async def test_rooms_expire_after_the_room_ttl(redis_server: RedisServer):
    args = ("--room-ttl", "3", "--presence-timeout", "1", *FAST)
    with (
        WebchatProcess("--redis-url", redis_server.url, *args) as server,
        redis_server.client() as client,
    ):
        await flood(server, "gone", 100)
        assert len(room_keys(client, "gone")) >= 200  # history and nonce of each
        await poll(lambda: not room_keys(client, "gone"), 15, "every key of the rooms to expire")

        def index_pruned() -> bool:  # the listing forgets them too
            return not any(m.startswith(b"gone") for m in client.zrange(INDEX_ACTIVE, 0, -1))

        await poll(index_pruned, 10, "the room index to forget the rooms")
    assert "Traceback" not in server.log(), server.log()


async def test_a_one_message_room_costs_at_most_1kb_besides_its_history(
    redis_server: RedisServer,
):
    args = ("--room-ttl", "600", *FAST)
    with (
        WebchatProcess("--redis-url", redis_server.url, *args) as server,
        redis_server.client() as client,
    ):

        async def settled(prefix: str, count: int) -> None:
            """The members left: presence keys go at once, the presence stream seconds later
            (a SCAN reclaims expired keys as it meets them), and the index lists every room."""

            def presence_gone() -> bool:
                keys = room_keys(client, prefix)
                return not any(not k.endswith(b":h") and b":n:" not in k for k in keys)

            def indexed() -> bool:
                members = client.zrange(INDEX_ACTIVE, 0, -1)
                return sum(m.startswith(prefix.encode()) for m in members) >= count

            await poll(presence_gone, 15, "the presence keys of the rooms to go")
            await poll(indexed, 10, "the room index entries")

        # A first wave pays what does not grow with the rooms (Redis connections, tables), as
        # an attack's first seconds would; the bound is on what each further room adds.
        await flood(server, "w", 64)
        await settled("w", 64)
        before = client.info("memory")["used_memory_dataset"]
        index_before = client.memory_usage(INDEX_ACTIVE, samples=0) or 0
        echoes = await flood(server, "r", ROOMS)
        await settled("r", ROOMS)
        after = client.info("memory")["used_memory_dataset"]
        index_share = ((client.memory_usage(INDEX_ACTIVE, samples=0) or 0) - index_before) / ROOMS

        history: list[int] = []
        nonces: list[int] = []
        for i, echo in enumerate(echoes):
            stream, nonce = f"wc:{{r{i}}}:h", f"wc:{{r{i}}}:n:1:xn"
            assert sorted(client.scan_iter(f"wc:{{r{i}}}:*", count=1000)) == sorted(
                [stream.encode(), nonce.encode()]
            ), f"the keys of room r{i}"
            assert client.get(nonce) == echo["id"].encode(), "the nonce holds the id only"
            assert 0 < client.pttl(stream) <= 600_000
            assert 0 < client.pttl(nonce) <= 300_000
            history.append(client.memory_usage(stream, samples=0))
            nonces.append(client.memory_usage(nonce, samples=0))
        per_room = (after - before) / ROOMS
        stream_size = max(history)
        print(
            f"per room: history stream {stream_size} B (MEMORY USAGE), nonce {max(nonces)} B, "
            f"index {index_share:.0f} B; the dataset grew {per_room:.0f} B per room"
        )
        assert max(nonces) + index_share <= 1024
        assert per_room <= stream_size + 1024
    assert "Traceback" not in server.log(), server.log()
