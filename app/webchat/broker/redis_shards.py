"""Sharded pub/sub on a Redis Cluster: a subscriber per master, each room on its slot's master.

A room's events are published with SPUBLISH (redis_connect.py), so they reach only the shard
that owns the room's slot. Each node therefore keeps one pub/sub connection to every master,
each a Subscriber in sharded mode with its own self-ping channel (a name whose slot that master
owns), and subscribes each room on the master of its slot. redis-py's cluster pub/sub is not
used: it does not say which rooms a lost connection dropped, and those are exactly the rooms
that must be backfilled.

The slots are relearnt (CLUSTER SLOTS) every REFRESH_INTERVAL, and at once when a shard's
connection is lost or Redis answers a subscription with MOVED: after a failover the promoted
replica serves the dead master's slots, after resharding another master does. A room whose
slot changed hands moves, with its cursors and its waiters, to the subscriber of its new
master, which subscribes it and backfills it from its streams as after an outage; a
subscriber whose node serves no slot any more is stopped. Readiness needs every shard live.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import replace
from typing import Final

from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from webchat.broker.base import BrokerUnavailable, EventHandler
from webchat.broker.redis_codec import channel, describe, node_channel
from webchat.broker.redis_connect import ShardedCluster
from webchat.broker.redis_loops import Loops, start_loops, stop_loops
from webchat.broker.redis_rooms import RoomSub, backoff_delay
from webchat.broker.redis_subscriber import Subscriber, SubscriberSettings

log = logging.getLogger(__name__)

REFRESH_INTERVAL: Final = 5.0  # the slots are relearnt this often when all is well
TROUBLE_INTERVAL: Final = 0.5  # ... and this often while a shard is not live
FIRST_ATTEMPTS: Final = 4.0  # start() learns within this long whether the shards answered


class _Shard:
    """One master's subscriber and the tasks that run it."""

    def __init__(self, node: ClusterNode, subscriber: Subscriber) -> None:
        self.node = node
        self.subscriber = subscriber
        self.tasks: list[asyncio.Task[None]] = []


class ShardedSubscriber:
    """The Subscriber interface over every master of a cluster. Owned by RedisBroker."""

    def __init__(
        self,
        client: ShardedCluster,
        settings: SubscriberSettings,
        *,
        control: ShardedCluster | None = None,
    ) -> None:
        self._client = client
        self._control = control
        self._node_id = settings.node_id
        self._on_change = settings.on_change
        self._ops = settings.ops
        # Each shard's subscriber tells this one of a change, which relearns the slots first.
        self._shard_settings = replace(settings, on_change=self._changed)
        self._shards: dict[str, _Shard] = {}
        self._handler: EventHandler | None = None
        self._relearn_now = asyncio.Event()
        self.attempted = asyncio.Event()  # set once every shard's first connection has ended

    # --- what the broker sees -------------------------------------------------------------

    @property
    def handler(self) -> EventHandler | None:
        return self._handler

    @handler.setter
    def handler(self, handler: EventHandler | None) -> None:
        self._handler = handler
        for shard in self._shards.values():
            shard.subscriber.handler = handler

    @property
    def live(self) -> bool:
        return bool(self._shards) and all(s.subscriber.live for s in self._shards.values())

    @property
    def rooms(self) -> dict[str, RoomSub]:
        return {
            room: sub
            for shard in self._shards.values()
            for room, sub in shard.subscriber.rooms.items()
        }

    @property
    def links(self) -> list[Subscriber]:
        """Every shard's pub/sub connection, for the health check to self-ping."""
        return [shard.subscriber for shard in self._shards.values()]

    def loops(self) -> Loops:
        return [("cluster subscriber", self.run)]

    async def subscribe(self, room: str) -> None:
        await self._shard_of(room).subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        for shard in list(self._shards.values()):
            if room in shard.subscriber.rooms:
                await shard.subscriber.unsubscribe(room)

    def _shard_of(self, room: str) -> Subscriber:
        owner = self._owner(channel(room))
        shard = self._shards.get(owner) if owner is not None else None
        if shard is None:
            raise BrokerUnavailable(f"no live shard serves {room} (the cluster is changing)")
        return shard.subscriber

    def _owner(self, name: str) -> str | None:
        nodes = self._client.nodes_manager.slots_cache.get(key_slot(name.encode()))
        return nodes[0].name if nodes else None

    # --- the shards -------------------------------------------------------------------------

    async def run(self) -> None:
        """Learn the slots, keep a subscriber per master, relearn on trouble; until close."""
        attempt = 0
        try:
            while True:
                try:
                    await self._ops.call("topology", self._relearn())
                    attempt = 0
                except (RedisError, OSError, RedisClusterException) as exc:
                    level = logging.WARNING if attempt == 0 else logging.DEBUG
                    log.log(level, "cannot learn the cluster's slots (%s); retrying", describe(exc))
                    attempt += 1
                if not self.attempted.is_set():
                    await self._first_attempts()
                healthy = self.live
                delay = (
                    REFRESH_INTERVAL if healthy else max(TROUBLE_INTERVAL, backoff_delay(attempt))
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._relearn_now.wait(), delay)
                self._relearn_now.clear()
        finally:
            for shard in list(self._shards.values()):
                await self._stop(shard)
            self._shards.clear()

    async def _first_attempts(self) -> None:
        waits = [shard.subscriber.attempted.wait() for shard in self._shards.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), FIRST_ATTEMPTS)
        self.attempted.set()

    async def _relearn(self) -> None:
        """Read the slots; start, retire and re-home subscribers to match."""
        client = self._client
        await client.initialize()  # the first time (redis-py learns the commands too)
        await client.nodes_manager.initialize()  # the slots as the cluster says now
        masters: dict[str, ClusterNode] = {}
        for nodes in client.nodes_manager.slots_cache.values():
            masters.setdefault(nodes[0].name, nodes[0])
        for name, node in masters.items():
            shard = self._shards.get(name)
            if shard is None:
                self._start(node)
            elif self._owner(shard.subscriber.ping_channel.decode()) != name:
                # Its self-ping channel's slot moved away: a fresh subscriber takes over.
                self._start(node)
                await self._retire(shard)
        for name, shard in list(self._shards.items()):
            for room in list(shard.subscriber.rooms):
                owner = self._owner(channel(room))
                if owner is not None and owner != name and owner in self._shards:
                    sub = await shard.subscriber.release(room)
                    if sub is not None:
                        log.info("%s moves from %s to %s", room, name, owner)
                        await self._shards[owner].subscriber.adopt(room, sub)
            if name not in masters:
                await self._retire(shard)
        self._on_change()

    def _start(self, node: ClusterNode) -> None:
        ping = self._ping_channel(node.name)
        subscriber = Subscriber(
            self._client,
            self._shard_settings,
            connection_args=lambda: (node.connection_class, dict(node.connection_kwargs)),
            sharded=True,
            ping_channel=ping,
            on_moved=self._relearn_now.set,
            control=self._control,
        )
        subscriber.handler = self._handler
        shard = self._shards[node.name] = _Shard(node, subscriber)
        shard.tasks = start_loops([(f"{w} of {node.name}", loop) for w, loop in subscriber.loops()])
        log.info("subscribing on cluster master %s", node.name)

    async def _retire(self, shard: _Shard) -> None:
        """Stop a shard's subscriber; its rooms go to their masters' subscribers (or, with no
        master known, wait in a new subscriber for the slots to be relearnt)."""
        name = shard.node.name
        if self._shards.get(name) is shard:
            del self._shards[name]
        await self._stop(shard)
        for room, sub in list(shard.subscriber.rooms.items()):
            owner = self._owner(channel(room))
            target = self._shards.get(owner) if owner is not None else None
            if target is None:
                log.warning("%s has no master to move to; it is dropped", room)
                for waiter in sub.waiters:
                    if not waiter.done():
                        waiter.set_exception(BrokerUnavailable(f"no shard serves {room}"))
                continue
            await target.subscriber.adopt(room, sub)
        log.info("stopped subscribing on %s", name)

    async def _stop(self, shard: _Shard) -> None:
        await stop_loops(shard.tasks)
        shard.tasks = []

    def _changed(self) -> None:
        if not self.live:
            self._relearn_now.set()
        self._on_change()

    def _ping_channel(self, node_name: str) -> str:
        """A self-ping channel of this node whose slot `node_name` owns."""
        base = node_channel(self._node_id)
        for k in itertools.count():
            name = f"{base}:{k}"
            if self._owner(name) == node_name:
                return name
            if k > 100_000:  # a master owns at least one slot; this is never reached
                raise RedisClusterException(f"no slot of {node_name} found")
        raise AssertionError("unreachable")
