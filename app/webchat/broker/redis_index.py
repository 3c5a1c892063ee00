"""The room index behind GET /api/rooms on Redis: which rooms are busy, across every node.

Two sorted sets are kept up to date by the nodes, never by scanning the keyspace: the names
present per room (reported by the presence scripts after every join, leave, reap and refresh,
with when a live node last confirmed them) and the time of each room's newest message (for 24
hours, or the room TTL if that is shorter: an expired room is not listed). Nodes batch their
updates and write them once a second in one script, so neither a burst of joins nor a busy
room costs Redis more than one small call per node and second; an idle node still prunes old
entries now and then, so the index shrinks back after a burst of short-lived rooms.
A listing reads at most a few pages of the index; counts that no live node confirmed within
the presence timeout (their node died) are dropped as it goes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from redis.exceptions import RedisError

from webchat.broker.base import ROOM_ACTIVITY_SECONDS, BrokerUnavailable, RoomInfo, room_order
from webchat.broker.redis_codec import describe, id_key, index_keys, stream_key
from webchat.broker.redis_connect import RedisClient
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_scripts import INDEX, ROOMS

log = logging.getLogger(__name__)

FLUSH_INTERVAL: Final = 1.0  # seconds between index writes of one node
PRUNE_INTERVAL: Final = 60.0  # at most this long between writes, pruning old entries
_CHUNK: Final = 500  # rooms per index script call


class RoomIndex:
    """Pending index updates of this node, and the listing. The broker runs `flush_loop`."""

    def __init__(
        self,
        client: RedisClient,
        control: RedisClient,
        staleness: float,
        ops: RedisOps,
        room_ttl: float = ROOM_ACTIVITY_SECONDS,
    ) -> None:
        self._client = client  # listings (requests)
        self._control = control  # the flush loop
        self._ops = ops
        self._staleness_ms = int(staleness * 1000)
        window = min(ROOM_ACTIVITY_SECONDS, room_ttl)
        self._window_ms = int(window * 1000)
        self._prune_every = min(PRUNE_INTERVAL, window / 2)
        self._pruned = 0.0  # loop time of the last write
        self._counts: dict[str, int] = {}  # room -> names present, newest report
        self._active: dict[str, int] = {}  # room -> ts of the newest message published here
        self._update = client.register_script(INDEX)
        self._list = client.register_script(ROOMS)

    def counted(self, room: str, count: int) -> None:
        """Presence reported how many names `room` has now."""
        self._counts[room] = count

    def published(self, room: str, ts: int) -> None:
        """This node published a message to `room` at `ts` (ms)."""
        if ts > self._active.get(room, 0):
            self._active[room] = ts

    async def flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(FLUSH_INTERVAL, self._prune_every))
            try:
                if self._counts or self._active or loop.time() - self._pruned > self._prune_every:
                    await self.flush(prune=True)
                    self._pruned = loop.time()
            except (RedisError, OSError) as exc:
                log.debug("room index update failed (retried): %s", describe(exc))

    async def flush(self, prune: bool = False) -> None:
        """Write the pending updates; on failure they stay pending (newer reports win).

        With `prune`, the script runs even with nothing pending, dropping old entries."""
        counts, self._counts = self._counts, {}
        active, self._active = self._active, {}
        count_items, active_items = list(counts.items()), list(active.items())
        some_counts: list[tuple[str, int]] = []
        some_active: list[tuple[str, int]] = []
        try:
            while count_items or active_items or prune:
                prune = False
                some_counts, count_items = count_items[:_CHUNK], count_items[_CHUNK:]
                room_budget = _CHUNK - len(some_counts)
                some_active, active_items = active_items[:room_budget], active_items[room_budget:]
                args: list[str | int] = [len(some_counts)]
                for room, value in (*some_counts, *some_active):
                    args += [room, value]
                args.append(self._window_ms)
                await self._ops.call(
                    "room_index", self._update(keys=index_keys(), args=args, client=self._control)
                )
        except BaseException:
            for room, count in count_items + some_counts:
                self._counts.setdefault(room, count)
            for room, ts in active_items + some_active:
                self.published(room, ts)
            raise

    async def rooms(self, limit: int) -> list[RoomInfo]:
        try:
            flat: list[Any] = await self._ops.call(
                "rooms",
                self._list(keys=index_keys(), args=[limit, self._staleness_ms, self._window_ms]),
            )
            infos = [
                RoomInfo(
                    flat[i].decode(),
                    int(flat[i + 1]),
                    int(float(flat[i + 2])) if flat[i + 2] else None,
                )
                for i in range(0, len(flat), 3)
            ]
            infos = await self._fill_last_ts(infos)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"room listing failed: {describe(exc)}") from exc
        infos.sort(key=room_order)
        return infos

    async def _fill_last_ts(self, infos: list[RoomInfo]) -> list[RoomInfo]:
        """Rooms with members but no message in the window: their newest message, if any."""
        quiet = [i for i, info in enumerate(infos) if info.last_ts is None]
        if not quiet:
            return infos
        pipe = self._client.pipeline(transaction=False)
        for i in quiet:
            pipe.xrevrange(stream_key(infos[i].room), count=1)
        newest: list[Any] = await self._ops.call("rooms", pipe.execute())
        for i, entries in zip(quiet, newest, strict=True):
            if entries:
                ts = id_key(entries[0][0].decode())[0]
                infos[i] = RoomInfo(infos[i].room, infos[i].member_count, ts)
        return infos
