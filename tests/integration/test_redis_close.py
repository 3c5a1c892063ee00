"""RedisBroker.close() ends, even when it comes just as Redis is back.

The hang it had: a Redis restart makes the broker ready again, which wakes the presence
refresh loop; a close in that moment cancelled the loop once, Python 3.11's asyncio.wait_for
swallowed the cancel (its awaitable had just completed) and the loop ran on, so close(),
awaiting it, never returned. Reproduced here with a real redis-server restarted under a live
broker; redis_loops.stop_loops now cancels again until every loop has ended.
"""

from __future__ import annotations

import asyncio

from tests.contract.test_redis_broker import Recorder
from tests.support.redis import RedisServer
from tests.support.timing import poll, seconds
from webchat.broker.redis import RedisBroker
from webchat.config import Config


async def test_close_just_as_redis_is_back_ends(redis_server: RedisServer):
    broker = RedisBroker(Config(redis_url=redis_server.url), "n1")
    await broker.start(Recorder())
    closed = False
    try:
        assert broker.ready
        redis_server.kill()
        await poll(lambda: not broker.ready, 10, "the broker to see Redis gone")
        await asyncio.to_thread(redis_server.restart)
        async with asyncio.timeout(seconds(10)):
            # Polled every turn of the event loop, to close in the very turn it becomes ready.
            while not broker.ready:  # noqa: ASYNC110
                await asyncio.sleep(0)
        tasks = list(broker._tasks)
        async with asyncio.timeout(seconds(3)):  # it hung for good before the fix
            await broker.close()
        closed = True
        assert all(task.done() for task in tasks), [t.get_name() for t in tasks if not t.done()]
    finally:
        if not closed:
            for task in broker._tasks:  # what close() could not stop: not left to the next test
                task.cancel()
