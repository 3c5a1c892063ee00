"""The Redis broker's receiving side: one pub/sub connection per process, kept alive.

A reader task drains the connection and hands the node's event handler every batch of
consecutive messages of one room that arrived together, without awaiting anything else. Per
room it remembers the last id delivered and drops anything at or below it.

When the connection dies (Redis restarted, `CLIENT KILL`, output buffer limit) or goes silent
(the self-ping published on the command connection does not come back within PONG_TIMEOUT,
and nothing else came either: a reader merely behind is not dead), the subscriber
reconnects with capped exponential backoff and full jitter, re-subscribes every room and, for
each, backfills from the room's streams (messages, and presence events) everything after the
last ids delivered before passing on live events again, so the node misses nothing that Redis
kept. Readiness is False from the moment the connection is lost until it is live again.

A room's subscription goes PENDING (SUBSCRIBE sent) -> BACKFILL (confirmed: live events are
buffered while the streams are read after the last ids) -> LIVE (see redis_rooms.py). A fresh
subscription starts from the streams' newest ids read before SUBSCRIBE, so it too delivers
everything published after `subscribe` was called, exactly once.

On a Redis Cluster one subscriber serves one shard (redis_shards.py owns them): its connection
goes to that shard's master, and its channels are shard channels (SSUBSCRIBE). A room whose slot
moved elsewhere (MOVED, or an SUNSUBSCRIBE from the server) makes it replace its connection and
ask for the slots to be relearnt; the room then moves, with its cursors, to the subscriber of
the shard that owns it now, and is backfilled there as after an outage.

With `--redis-replicas-ack` messages are held until their replicas have them (redis_rooms.py):
a commit from the publisher releases them, or, if none comes within HOLD_CHECK, a WAIT of the
subscriber's own; a backfill is confirmed by a WAIT before it is delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from webchat.broker.base import BrokerUnavailable, EventHandler, Message, PresenceEvent
from webchat.broker.redis_backfill import read_after
from webchat.broker.redis_codec import (
    Announced,
    channel,
    decode_event,
    describe,
    node_channel,
    presence_stream_key,
    room_of_channel,
    stream_key,
)
from webchat.broker.redis_connect import RedisClient
from webchat.broker.redis_loops import Loops
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_rooms import RoomSub, State, backoff_delay

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 2.0  # connect, authenticate and get the self-ping subscription confirmed
SEND_TIMEOUT: Final = 1.0
SUBSCRIBE_TIMEOUT: Final = 2.0
PONG_TIMEOUT: Final = 1.5  # a self-ping not back by then means the connection is dead
MAX_BATCH: Final = 1000  # replies handled before the handler is called, at most
BACKFILL_ROOMS: Final = 100  # rooms per backfill pipeline
SUBSCRIBE_CHUNK: Final = 1000  # channels per SUBSCRIBE command on reconnect
HOLD_CHECK: Final = 1.0  # a message held this long without a commit is confirmed by a WAIT

# What a connection is made of: its class and keyword arguments (a pool's, or a cluster node's).
ConnectionArgs = Callable[[], tuple[type[AbstractConnection], dict[str, Any]]]
# confirm(room, replicas): returns once `replicas` replicas have every write made before the
# call to the room's shard; raises BrokerUnavailable when they do not confirm in time.
Confirm = Callable[[str, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SubscriberSettings:
    """What every subscriber of a node is built with, plain or one per cluster shard: made
    once by RedisBroker, so a Subscriber and a ShardedSubscriber (and its per-shard
    Subscribers) cannot drift apart.

    `on_change` is told when readiness may have changed, `name` is the pub/sub connection's
    client name, `confirm` is the WAIT behind `--redis-replicas-ack` (this node's setting is
    `replicas`: backfills are confirmed with it), and a fresh subscription pushes back its
    room's history TTL by `keep_ms`.
    """

    node_id: str
    on_change: Callable[[], None]
    name: str
    ops: RedisOps
    on_reconnect: Callable[[], None]
    confirm: Confirm | None = None
    replicas: int = 0
    keep_ms: int | None = None


class Subscriber:
    """The pub/sub connection, the subscribed rooms and their backfill. Owned by RedisBroker
    (or, one per shard of a cluster, by ShardedSubscriber), which runs its `loops()`.

    `settings` are the node's (SubscriberSettings), `connection_args` makes its connection
    (default: like the client's pooled ones), `sharded` uses shard channels (SSUBSCRIBE),
    `ping_channel` is its self-ping's channel (default `wc:node:<id>`), and `on_moved` is told
    when a room turns out to live on another shard.
    """

    def __init__(
        self,
        client: RedisClient,
        settings: SubscriberSettings,
        *,
        connection_args: ConnectionArgs | None = None,
        sharded: bool = False,
        ping_channel: str | None = None,
        on_moved: Callable[[], None] | None = None,
        control: RedisClient | None = None,
    ) -> None:
        self._client = client  # a subscribe's reads (requests)
        self._control = control or client  # backfill
        self._keep_ms = settings.keep_ms  # a fresh subscription pushes back its history's TTL
        self._connection_args = connection_args
        self._sharded = sharded
        self._sub_command, self._unsub_command = (
            ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        )
        self._message_kind, self._subscribe_kind = (
            (b"smessage", b"ssubscribe") if sharded else (b"message", b"subscribe")
        )
        self._confirm = settings.confirm
        self._replicas = settings.replicas
        self._on_moved = on_moved
        self._on_change = settings.on_change
        self._ops = settings.ops
        self._on_reconnect = settings.on_reconnect
        self._client_name = settings.name
        self.handler: EventHandler | None = None
        self.rooms: dict[str, RoomSub] = {}
        self.live = False
        self._conn: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._attempt = 0
        self._epoch = 0  # connections that went live
        self._ping_channel = (ping_channel or node_channel(settings.node_id)).encode()
        self._pong_seq = 0
        # The self-ping awaited: its seq, when it was published, replies read by then.
        self._ping_pending: tuple[int, float, int] | None = None
        self._replies = 0  # replies read from the connection, to tell "behind" from "dead"
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._barrier_seq = 0
        self._batch_room: str | None = None
        self._batch: list[Message] = []
        self._now = 0.0  # loop time of the replies being handled
        self._backfill_wanted = asyncio.Event()
        self._live_event = asyncio.Event()
        self.attempted = asyncio.Event()  # set once the first connection attempt has ended

    def loops(self) -> Loops:
        """The background loops to run, each in a task of its owner, until close."""
        return [
            ("subscriber", self.run),
            ("backfill", self.backfill_loop),
            ("held messages", self.confirm_loop),
        ]

    # --- subscriptions ------------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        """Subscribe to `room`'s channel; returns once Redis confirmed it and what the room's
        streams held beyond the cursors was read (timed as one call)."""
        await self._ops.call("subscribe", self._subscribe(room))

    async def _subscribe(self, room: str) -> None:
        conn = self._conn
        if not self.live or conn is None:
            raise BrokerUnavailable("not subscribed to Redis (reconnecting)")
        if room in self.rooms:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.xrevrange(stream_key(room), count=1)
            pipe.xrevrange(presence_stream_key(room), count=1)
            if self._keep_ms is not None:  # a member arrives: the room is alive (keepalive.py)
                pipe.pexpire(stream_key(room), self._keep_ms)
            newest: list[Any] = (await pipe.execute())[:2]
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot read the streams of {room}: {describe(exc)}") from exc
        sub = RoomSub(*(n[0][0].decode() if n else "0-0" for n in newest))
        if room in self.rooms:  # subscribed meanwhile by a concurrent call
            return
        self.rooms[room] = sub
        waiter = asyncio.get_running_loop().create_future()
        sub.waiters.append(waiter)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await self._send(conn, self._sub_command, channel(room))
                await waiter
        except BaseException as exc:
            if waiter in sub.waiters:  # nobody reads it now: unsubscribe must not fail it
                sub.waiters.remove(waiter)
            if self.rooms.get(room) is sub:
                if isinstance(exc, asyncio.CancelledError):
                    del self.rooms[room]  # its messages are dropped; no await while cancelled
                else:
                    await self.unsubscribe(room)
            if isinstance(exc, (TimeoutError, RedisError, OSError)):
                raise BrokerUnavailable(f"cannot subscribe to {room}: {describe(exc)}") from exc
            raise
        finally:
            if waiter in sub.waiters:
                sub.waiters.remove(waiter)

    async def unsubscribe(self, room: str) -> None:
        sub = self.rooms.pop(room, None)
        if sub is None:
            return
        for waiter in sub.waiters:
            if not waiter.done():
                waiter.set_exception(BrokerUnavailable(f"unsubscribed from {room}"))
        conn = self._conn
        if conn is None:
            return
        try:
            await self._ops.call(
                "unsubscribe", self._send(conn, self._unsub_command, channel(room))
            )
        except (TimeoutError, RedisError, OSError, BrokerUnavailable) as exc:
            # Its messages are dropped (the room is gone) until the connection is replaced.
            log.debug("UNSUBSCRIBE %s failed: %s", room, exc)

    async def adopt(self, room: str, sub: RoomSub) -> None:
        """Take over `room` from the subscriber of another shard, cursors and waiters included:
        it is subscribed here and backfilled from what was delivered, as after an outage."""
        sub.lost()
        self.rooms[room] = sub
        conn = self._conn
        if self.live and conn is not None:
            try:
                await self._send(conn, self._sub_command, channel(room))
            except (TimeoutError, RedisError, OSError, BrokerUnavailable) as exc:
                self.fail(f"cannot subscribe to {room}: {describe(exc)}")

    async def release(self, room: str) -> RoomSub | None:
        """Give `room` up for another shard's subscriber to `adopt`; its waiters go with it."""
        sub = self.rooms.pop(room, None)
        conn = self._conn
        if sub is not None and conn is not None and self.live:
            try:
                await self._send(conn, self._unsub_command, channel(room))
            except (TimeoutError, RedisError, OSError, BrokerUnavailable) as exc:
                log.debug("%s %s failed: %s", self._unsub_command, room, exc)
        return sub

    async def _send(self, conn: AbstractConnection, *args: Any) -> None:
        if self._conn is not conn or not conn.is_connected:
            # A stale connection would silently reconnect on send; the run loop owns that.
            raise BrokerUnavailable("the pub/sub connection was lost")
        async with asyncio.timeout(SEND_TIMEOUT):
            await conn.send_command(*args, check_health=False)

    async def _subscribe_all(self, conn: AbstractConnection, channels: list[str]) -> None:
        """SUBSCRIBE many channels per command; SSUBSCRIBE one per command (a command's shard
        channels must share a slot), sent together."""
        for start in range(0, len(channels), SUBSCRIBE_CHUNK):
            chunk = channels[start : start + SUBSCRIBE_CHUNK]
            if not self._sharded:
                await self._send(conn, self._sub_command, *chunk)
                continue
            if self._conn is not conn or not conn.is_connected:
                raise BrokerUnavailable("the pub/sub connection was lost")
            async with asyncio.timeout(SEND_TIMEOUT):
                commands = [(self._sub_command, name) for name in chunk]
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    # --- the connection -----------------------------------------------------------------

    async def run(self) -> None:
        """Keep a pub/sub connection up; the broker runs this as a task until close."""
        while True:
            conn: AbstractConnection | None = None
            reader: asyncio.Task[None] | None = None
            try:
                conn = self._new_connection()
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await conn.connect()  # type: ignore[no-untyped-call]  # redis-py lacks a hint
                    self._conn = conn
                    channels = [channel(room) for room in self.rooms]
                    for sub in self.rooms.values():
                        sub.lost()
                    await self._send(conn, self._sub_command, self._ping_channel)
                    await self._subscribe_all(conn, channels)
                    reader = self._reader = asyncio.create_task(self._read(conn))
                    live = asyncio.ensure_future(self._live_event.wait())
                    try:
                        await asyncio.wait({reader, live}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        live.cancel()
                await asyncio.wait({reader})
                if not reader.cancelled():
                    error = reader.exception()
                    if error is not None:
                        raise error
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisError, OSError, BrokerUnavailable) as exc:
                level = logging.WARNING if self._attempt == 0 else logging.DEBUG
                log.log(level, "Redis pub/sub connection failed (%s); reconnecting", describe(exc))
            except Exception:
                log.exception("Redis pub/sub reader failed; reconnecting")
            finally:
                self.attempted.set()
                await self._lost(conn, reader)
            await asyncio.sleep(backoff_delay(self._attempt))
            self._attempt += 1

    def _new_connection(self) -> AbstractConnection:
        if self._connection_args is not None:
            connection_class, kwargs = self._connection_args()
        else:
            assert isinstance(self._client, Redis), "a cluster's subscribers get connection_args"
            pool = self._client.connection_pool
            connection_class, kwargs = pool.connection_class, dict(pool.connection_kwargs)
        # Reads block until a message comes: liveness is the self-ping's job, not a timeout.
        # No retries: a failure goes to the run loop, which re-subscribes and backfills.
        # RESP2 even if the URL asks for RESP3: messages are plain arrays, no push handling.
        kwargs.update(
            protocol=2,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name=self._client_name,
        )
        return connection_class(**kwargs)

    async def _lost(
        self, conn: AbstractConnection | None, reader: asyncio.Task[None] | None
    ) -> None:
        was_live = self.live
        self.live = False
        self._live_event.clear()
        self._conn = None
        self._reader = None
        self._ping_pending = None
        self._flush()
        for sub in self.rooms.values():
            sub.lost()
        if was_live:
            self._on_change()
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if conn is not None:
            try:
                await conn.disconnect(nowait=True)
            except Exception as exc:  # closing a broken socket may fail; it is gone either way
                log.debug("disconnect failed: %s", describe(exc))

    def fail(self, reason: str) -> None:
        """Give up the current connection (it looks dead); the run loop replaces it."""
        reader = self._reader
        if reader is not None and not reader.done():
            log.warning("Redis pub/sub connection looks dead (%s); reconnecting", reason)
            self.live = False
            self._live_event.clear()
            self._on_change()
            reader.cancel()

    # --- self-ping ----------------------------------------------------------------------

    @property
    def links(self) -> list[Subscriber]:
        """The pub/sub connections to self-ping: this one."""
        return [self]

    @property
    def ping_channel(self) -> bytes:
        return self._ping_channel

    def ping_token(self) -> int | None:
        """Taken before publishing a self-ping: which connection it tests (None: none live)."""
        return self._epoch if self.live else None

    def ping_published(self, token: int | None, seq: int, receivers: int, now: float) -> None:
        """Self-ping `seq` was published, and Redis counted `receivers` subscribers.

        Only a ping sent while the current connection was already live tests it: an earlier
        one may have reached Redis before this connection subscribed.
        """
        if token is None or token != self._epoch or not self.live:
            return
        if receivers == 0:
            self.fail("Redis counts no subscriber on this node's channel")
        elif self._ping_pending is None:
            self._ping_pending = (seq, now, self._replies)

    def check_pong(self, now: float) -> None:
        """Fail the connection if the self-ping is late and nothing at all came meanwhile.

        A reader that is merely behind (a starved event loop, a burst of messages queued
        before the pong) is alive: replacing its connection would only add a backfill.
        """
        pending = self._ping_pending
        if self.live and pending is not None and now - pending[1] > PONG_TIMEOUT:
            if self._replies == pending[2]:
                self.fail(f"self-ping not back within {PONG_TIMEOUT}s")
            else:
                self._ping_pending = (pending[0], now, self._replies)

    def barrier(self) -> tuple[bytes, asyncio.Future[None]]:
        """A token to publish on this node's channel, and a future set once it is read back:
        by then everything published before it has been handed to the handler."""
        self._barrier_seq += 1
        token = b"b%d" % self._barrier_seq
        arrived = self._barriers[token] = asyncio.get_running_loop().create_future()
        return token, arrived

    def forget_barrier(self, token: bytes) -> None:
        self._barriers.pop(token, None)

    def _barrier_back(self, token: bytes) -> None:
        self._flush()  # what came before the token reaches the handler first
        arrived = self._barriers.pop(token, None)
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    def _pong(self, data: bytes) -> None:
        seq = int(data)
        self._pong_seq = max(self._pong_seq, seq)
        pending = self._ping_pending
        if pending is not None and self._pong_seq >= pending[0]:
            self._ping_pending = None

    # --- reading ------------------------------------------------------------------------

    async def _read(self, conn: AbstractConnection) -> None:
        read = conn.read_response
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._flush()
                reply = await read()
                self._now = loop.time()
                self._handle(reply)
                handled = 1
                while handled < MAX_BATCH and await conn.can_read():
                    self._handle(await read())
                    handled += 1
        except ResponseError as exc:
            # A (S)SUBSCRIBE refused: on a cluster, MOVED (its slot is served elsewhere). The
            # connection is replaced once the slots are relearnt; the rooms move meanwhile.
            if self._on_moved is not None:
                self._on_moved()
            raise BrokerUnavailable(f"Redis refused a subscription: {describe(exc)}") from exc

    def _handle(self, reply: Any) -> None:
        self._replies += 1
        if not isinstance(reply, list) or len(reply) != 3:
            return
        kind, name, data = reply
        if kind == self._message_kind:
            if name == self._ping_channel:
                if data.startswith(b"b"):
                    self._barrier_back(data)
                else:
                    self._pong(data)
            else:
                self._on_message(name, data)
        elif kind == self._subscribe_kind:
            if name == self._ping_channel:
                self._on_live()
            else:
                self._on_confirmed(name)
        elif kind == b"sunsubscribe":
            self._on_unsubscribed(name)

    def _on_message(self, name: bytes, data: bytes) -> None:
        room = room_of_channel(name)
        sub = self.rooms.get(room) if room is not None else None
        if room is None or sub is None or sub.state is State.PENDING:
            return  # not subscribed (any more), or left over from an earlier subscription
        try:
            event = decode_event(room, data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("dropping a malformed event on %r: %s", name, describe(exc))
            return
        if sub.state is State.BACKFILL:
            sub.buffer.append(event)
        elif isinstance(event, Announced):
            if sub.presence.advance(event.id):
                self._flush()
                self._announce(event.event)
        elif type(event) is Message and not sub.held:  # the common case, without holding
            if sub.messages.advance(event.id):
                self._batch_message(room, event)
        else:
            for message in sub.live(event, self._now):
                self._batch_message(room, message)

    def _batch_message(self, room: str, event: Message) -> None:
        if self._batch_room != room:
            self._flush()
            self._batch_room = room
        self._batch.append(event)

    def _flush(self) -> None:
        if self._batch_room is not None and self._batch:
            self._deliver(self._batch_room, self._batch)
        self._batch_room, self._batch = None, []

    def _announce(self, event: PresenceEvent) -> None:
        if self.handler is not None:
            try:
                self.handler.on_presence(event)
            except Exception:
                log.exception("presence handler failed")

    def _gap(self, room: str) -> None:
        if self.handler is not None:
            try:
                self.handler.on_gap(room)
            except Exception:
                log.exception("gap handler failed")

    def _deliver(self, room: str, messages: list[Message]) -> None:
        if messages and self.handler is not None:
            try:
                self.handler.on_messages(room, messages)
            except Exception:
                log.exception("message handler failed")

    def _on_live(self) -> None:
        if self.live:
            return
        self.live = True
        self._epoch += 1
        if self._epoch > 1:  # the first connection is not a reconnection
            self._on_reconnect()
        self._live_event.set()
        self.attempted.set()
        self._attempt = 0
        self._on_change()

    def _on_unsubscribed(self, name: bytes) -> None:
        """An SUNSUBSCRIBE this node did not ask for: the room's slot moved to another shard."""
        room = room_of_channel(name)
        sub = self.rooms.get(room) if room is not None else None
        if sub is None or sub.state is State.PENDING:
            return  # one this node asked for, or an answer to an earlier subscription
        if self._on_moved is not None:
            self._on_moved()
        self.fail(f"Redis unsubscribed {room}: its slot moved")

    def _on_confirmed(self, name: bytes) -> None:
        room = room_of_channel(name)
        sub = self.rooms.get(room) if room is not None else None
        if sub is None or sub.state is not State.PENDING:
            return
        sub.state = State.BACKFILL
        sub.generation += 1
        self._backfill_wanted.set()

    # --- backfill -----------------------------------------------------------------------

    async def backfill_loop(self) -> None:
        """Read what each confirmed room missed; the broker runs this as a task until close."""
        while True:
            await self._backfill_wanted.wait()
            self._backfill_wanted.clear()
            todo = [
                (room, sub, sub.generation)
                for room, sub in self.rooms.items()
                if sub.state is State.BACKFILL
            ]
            for start in range(0, len(todo), BACKFILL_ROOMS):
                chunk = todo[start : start + BACKFILL_ROOMS]
                try:
                    reads = await self._ops.call(
                        "backfill", read_after(self._control, [(r, s) for r, s, _ in chunk])
                    )
                    found = [
                        room for (room, _, _), (m, _) in zip(chunk, reads, strict=True) if m.events
                    ]
                    if found and self._replicas and self._confirm is not None:
                        # Delivered only once the replicas have what was read (a WAIT after).
                        await self._confirm(found[0], self._replicas)
                except BrokerUnavailable as exc:
                    log.info("backfill not confirmed yet (%s); retrying", exc)
                    asyncio.get_running_loop().call_later(HOLD_CHECK, self._backfill_wanted.set)
                    continue
                except (RedisError, OSError) as exc:
                    # Retried on the next connection, which re-confirms every room.
                    self.fail(f"backfill failed: {describe(exc)}")
                    break
                except Exception:
                    log.exception("backfill failed")
                    self.fail("backfill failed")
                    break
                for (room, sub, generation), (messages, presence) in zip(chunk, reads, strict=True):
                    if self.rooms.get(room) is not sub:
                        continue  # unsubscribed meanwhile
                    result = sub.backfilled(
                        generation, messages, presence, asyncio.get_running_loop().time()
                    )
                    if result.reset:
                        log.warning(
                            "the streams of %s went back behind what was delivered (lost, expired)",
                            room,
                        )
                    if result.again:
                        self._backfill_wanted.set()
                    if result.gap:  # first, so the clients resume from before the gap
                        log.warning("history of %s was trimmed past what was delivered", room)
                        self._gap(room)
                    self._deliver(room, result.messages)
                    for event in result.presence:
                        self._announce(event)
                    if sub.state is State.LIVE:
                        # `subscribe` returns only now: an event published after it returns
                        # (the caller's own join, say) is delivered as it arrives, not held
                        # in the buffer behind this backfill, where a client connecting
                        # meanwhile would get it after a welcome that already lists it.
                        for waiter in sub.waiters:
                            if not waiter.done():
                                waiter.set_result(None)

    # --- held messages (--redis-replicas-ack) -------------------------------------------

    async def confirm_loop(self) -> None:
        """Release messages held longer than HOLD_CHECK once a WAIT confirms them: their commit
        was lost (its publisher failed after WAIT) or never sent (its WAIT timed out, the
        sender was told `unavailable`, and the replicas caught up since)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HOLD_CHECK / 2)
            if self._confirm is None:
                continue
            now = loop.time()
            for room, sub in list(self.rooms.items()):
                since = sub.held_since
                if since is None or now - since < HOLD_CHECK or sub.state is not State.LIVE:
                    continue
                count, generation, epoch = len(sub.held), sub.generation, self._epoch
                try:
                    await self._confirm(room, sub.held_replicas)
                except (BrokerUnavailable, RedisError, OSError) as exc:
                    log.debug("held messages of %s not confirmed yet: %s", room, describe(exc))
                    continue
                if self.rooms.get(room) is sub and (sub.generation, self._epoch) == (
                    generation,
                    epoch,
                ):
                    self._deliver(room, sub.confirmed(count))
