"""Keeping the history of rooms with members from expiring, on Redis.

A room's stream expires `--room-ttl` after its last message (the publish script sets the TTL),
but a room with members must never expire, however long they stay silent. A node is
subscribed to a room exactly while it has members there, so each node pushes the TTL back for
its subscribed rooms: once when it subscribes, and then every tenth of the TTL (at most a
minute), one pipelined PEXPIRE per room. After the last member leaves, the history is kept
for the room TTL, give or take that interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Final

from redis.exceptions import RedisError

from webchat.broker.redis_codec import describe, stream_key
from webchat.broker.redis_connect import RedisClient
from webchat.broker.redis_ops import RedisOps

log = logging.getLogger(__name__)

MAX_INTERVAL: Final = 60.0
_CHUNK: Final = 500  # rooms per pipeline


class RoomKeeper:
    """Pushes back the TTL of the streams of subscribed rooms; the broker runs `loop`."""

    def __init__(self, client: RedisClient, ops: RedisOps, room_ttl: float) -> None:
        self._client = client
        self._ops = ops
        self.ttl_ms = max(1, int(room_ttl * 1000))
        self.interval = min(room_ttl / 10, MAX_INTERVAL)

    async def loop(self, rooms: Callable[[], Iterable[str]]) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.keep(list(rooms()))
            except (RedisError, OSError) as exc:
                log.debug("keeping room histories alive failed (retried): %s", describe(exc))

    async def keep(self, rooms: list[str]) -> None:
        for start in range(0, len(rooms), _CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for room in rooms[start : start + _CHUNK]:
                pipe.pexpire(stream_key(room), self.ttl_ms)
            await self._ops.call("keep_alive", pipe.execute())
