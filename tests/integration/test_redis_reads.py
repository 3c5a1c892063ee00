"""Batched history reads on a real redis-server: a welcome's two kinds of read in one pipeline."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio import Redis

from tests.conftest import broker_url
from tests.support.redis import RedisServer
from tests.support.timing import seconds
from webchat.broker.redis_batch import evalsha_pipelined
from webchat.broker.redis_codec import stream_key
from webchat.broker.redis_connect import close_client, command_client
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_reads import HistoryReads
from webchat.metrics import Metrics
from webchat.redis_url import parse_redis_url


async def test_commands_sent_first_run_once_when_the_scripts_are_loaded_again(
    redis_server: RedisServer,
) -> None:
    """Redis lost its scripts (a restart): the calls are sent again, the commands before them
    are not, and every reply comes back in its place."""
    client = Redis.from_url(redis_server.url)
    try:
        script = client.register_script("return ARGV[1] .. redis.call('GET', KEYS[1])")
        await client.set("k", "v")
        await client.script_flush()
        replies = await evalsha_pipelined(
            client,
            script,
            [(["k"], ["a:"]), (["k"], ["b:"])],
            first=[("INCR", "counter"), ("GET", "k")],
        )
        assert replies == [1, b"v", b"a:v", b"b:v"]
        assert await client.get("counter") == b"1"  # not sent again with the scripts
    finally:
        await client.aclose()


@pytest.mark.parametrize("broker", ["redis", "cluster"])
async def test_a_welcome_s_reads_come_back_from_one_flush(
    broker: str, request: pytest.FixtureRequest
) -> None:
    """The newest message and the replay after `since`, asked for together (as a welcome
    does), each get their own answer; a `since` before the oldest message held is a gap.
    On a cluster the pipeline goes to the room's shard (the scripts as EVAL)."""
    url = broker_url(broker, request)
    assert url is not None
    client = command_client(parse_redis_url(url), 4, 1.0, "test")
    reads = HistoryReads(client, RedisOps(Metrics(), None, url))
    runner = asyncio.create_task(reads.run())
    try:
        ids = [
            (await client.xadd(stream_key("r"), {"n": "amy", "t": f"m{i}"})).decode()
            for i in range(4)
        ]
        await client.xadd(stream_key("s"), {"n": "bo", "t": "s0"})
        if broker == "redis":
            await client.script_flush()  # HISTORY_AFTER is loaded again on the way
        async with asyncio.timeout(seconds(5)):
            # r's newest comes with its first read after `since` (one script), the other
            # newest reads by XREVRANGE; an empty room has none.
            newest, page, old, two, other, empty = await asyncio.gather(
                reads.read("r", None, 1),
                reads.read("r", ids[1], 100),
                reads.read("r", "1-0", 2),
                reads.read("r", None, 2),
                reads.read("s", None, 1),
                reads.read("t", None, 1),
            )
        assert [m.text for m in newest.messages] == ["m3"] and not newest.gap
        assert [m.id for m in page.messages] == ids[2:] and not page.gap
        assert [m.text for m in old.messages] == ["m0", "m1"] and old.gap
        assert [m.text for m in two.messages] == ["m2", "m3"] and not two.gap
        assert [m.text for m in other.messages] == ["s0"]
        assert empty.messages == [] and not empty.gap
        async with asyncio.timeout(seconds(5)):  # newest of a room with no message, folded
            none, after = await asyncio.gather(reads.read("t", None, 1), reads.read("t", "1-0", 10))
        assert none.messages == [] and after.messages == [] and after.gap
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await close_client(client)
