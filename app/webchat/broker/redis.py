"""Redis broker: any number of webchat processes, on one host or many, behave as one service.

Choose it (`--redis-url redis://...`, or `rediss://` with TLS, password in the URL) whenever
more than one process serves the same rooms (`--workers N`, several hosts behind a load
balancer), or history must outlive a restart. `redis+sentinel://` follows a master that
Sentinel fails over to a replica; `redis+cluster://` spreads rooms over the shards of a Redis
Cluster (redis_connect.py), with sharded pub/sub (redis_shards.py); `--redis-replicas-ack N`
acknowledges a message only once N replicas have it (redis_acks.py).

A stream per room is the history, a pub/sub channel per room carries live messages and
presence; publishing is one atomic Lua script, so every node delivers one order, the order of
history. Each node subscribes to a room's channel only while it has members there.

The broker tolerates Redis being down: the process starts anyway and reports not ready,
publishes and history reads fail fast with BrokerUnavailable, and after Redis is back the
subscriber reconnects, re-subscribes and backfills every room from its stream (see
redis_subscriber.py). The command connections use short timeouts so nothing hangs. A Redis
that answers but refuses writes (out of memory at `maxmemory`, a read-only replica, `MISCONF`
after a failed save) makes the broker not ready too, until a write succeeds again.

Requests (publish, joins, history reads) share a pool of `--redis-pool` connections per
process; when all are busy a request waits for one, up to POOL_WAIT, instead of failing. The
background loops that keep the node healthy (health check, backfill, presence refresh and
reaping, the room index, TTLs) have a small pool of their own, so a burst of requests never
delays them into a false "not ready".
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from webchat.broker.base import (
    BrokerUnavailable,
    Draft,
    EventHandler,
    History,
    Message,
    Published,
    RoomInfo,
    dedupe_seconds,
)
from webchat.broker.redis_acks import NotConfirmed, ReplicaAcks
from webchat.broker.redis_codec import (
    channel,
    decode_message,
    dedupe_key,
    describe,
    encode_trace,
    end_before,
    id_key,
    message_from_entry,
    probe_key,
    stream_key,
)
from webchat.broker.redis_connect import ShardedCluster, close_client, command_client
from webchat.broker.redis_index import RoomIndex
from webchat.broker.redis_keepalive import RoomKeeper
from webchat.broker.redis_loops import Loops, start_loops, stop_loops
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_presence import RedisPresence
from webchat.broker.redis_reads import HistoryReads
from webchat.broker.redis_rooms import BACKOFF_CAP
from webchat.broker.redis_scripts import PUBLISH, awaiting_replicas
from webchat.broker.redis_shards import ShardedSubscriber
from webchat.broker.redis_subscriber import Subscriber, SubscriberSettings
from webchat.config import Config
from webchat.metrics import Metrics
from webchat.protocol import parse_id
from webchat.redis_url import parse_redis_url

if TYPE_CHECKING:
    from webchat.tracing import Tracing

log = logging.getLogger(__name__)

POOL_WAIT: Final = 5.0  # a request waits this long for a pooled connection, then is unavailable
CONTROL_POOL: Final = 8  # connections of the background loops: more than they ever use at once
CONTROL_WAIT: Final = 1.0
HEALTH_INTERVAL: Final = 0.5
HEALTH_TIMEOUT: Final = 1.0  # so readiness drops within 2 s of Redis becoming unreachable
PROBE_TTL_MS: Final = 10_000  # the write probe's key outlives a few probes, then goes
# After reconnecting, reaping waits until every live node has reconnected and refreshed.
REAP_GRACE: Final = BACKOFF_CAP + 2 * HEALTH_INTERVAL
START_WAIT: Final = 2.0  # start() waits this long for a first connection, then goes on
BARRIER_TIMEOUT: Final = 1.0  # a duplicate's wait for the original's delivery, at most
CLOSE_WAIT: Final = 5.0  # closing a client's connections, at most


def refuses_writes(exc: BaseException) -> bool:
    """Redis answered but will not write: out of memory, a read-only replica, a failed save
    (MISCONF) or too few replicas (NOREPLICAS). Not an outage: it answers, it will not store."""
    if isinstance(exc, OutOfMemoryError | ReadOnlyError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(
        ("OOM", "READONLY", "MISCONF", "NOREPLICAS")
    )


class RedisBroker:
    """The Broker protocol on Redis: history, live fan-out and presence shared by every node.

    Choose it whenever more than one process serves the same rooms (`--workers N`, several
    hosts behind a load balancer) or history must outlive a restart; a single process with
    nothing to share is served more cheaply by MemoryBroker. Create it with the node's id,
    `start` it with the node's event handler (it returns even while Redis is down: watch
    `ready`), and `close` it after the hub has left its rooms.

    Every Redis call is timed and counted by kind (`webchat_redis_*` in `metrics`, a fresh
    set when none is given) and traced as a CLIENT span inside a sampled trace (`tracing`).
    """

    def __init__(
        self,
        config: Config,
        node_id: str,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        target = parse_redis_url(config.redis_url)
        self._where = target.describe()
        self._history_size = config.history_size
        self._dedupe_ms = int(dedupe_seconds(config.room_ttl) * 1000)
        self._node_id = node_id
        self._client = command_client(target, config.redis_pool, POOL_WAIT, f"webchat-{node_id}")
        self._control = command_client(target, CONTROL_POOL, CONTROL_WAIT, f"webchat-{node_id}-ctl")
        self._metrics = metrics or Metrics()
        self._ops = RedisOps(self._metrics, tracing, target)
        self._replicas = config.redis_replicas_ack
        self._acks = ReplicaAcks(self._client)
        self._publish = self._client.register_script(
            awaiting_replicas(PUBLISH, self._replicas) if self._replicas else PUBLISH
        )
        self._keeper = RoomKeeper(self._control, self._ops, config.room_ttl)
        self._index = RoomIndex(
            self._client, self._control, config.presence_timeout, self._ops, config.room_ttl
        )
        self._reads = HistoryReads(self._client, self._ops)
        self._presence = RedisPresence(
            self._client,
            node_id,
            config.presence_timeout,
            lambda: self._client_ok,
            self._ops,
            self._index.counted,
            config.presence_limit,
            control=self._control,
        )
        settings = SubscriberSettings(
            node_id=node_id,
            on_change=self._readiness_changed,
            name=f"webchat-{node_id}-sub",
            ops=self._ops,
            on_reconnect=self._metrics.broker_reconnects.inc,
            confirm=self._confirm,
            replicas=self._replicas,
            keep_ms=self._keeper.ttl_ms,
        )
        self._subscriber: Subscriber | ShardedSubscriber
        if isinstance(self._client, ShardedCluster):
            assert isinstance(self._control, ShardedCluster)  # one target, one kind of client
            self._subscriber = ShardedSubscriber(self._client, settings, control=self._control)
        else:
            self._subscriber = Subscriber(self._client, settings, control=self._control)
        self._client_ok = False
        self._writable = True  # until Redis refuses a write: then until a probe succeeds
        self._closing = False
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- the Broker protocol ----------------------------------------------------------

    @property
    def presence(self) -> RedisPresence:
        return self._presence

    @property
    def ready(self) -> bool:
        return self._client_ok and self._writable and self._subscriber.live

    async def start(self, handler: EventHandler) -> None:
        """Start connecting; returns once connected or the first attempt failed, ready or not.

        A Redis that is down does not stop the process: it runs not ready while the subscriber
        keeps reconnecting in the background.
        """
        self._subscriber.handler = handler
        loops: Loops = [
            *self._subscriber.loops(),
            ("health", self._health_loop),
            ("history reads", self._reads.run),
            ("presence batches", self._presence.batch_loop),
            ("presence refresh", self._presence.refresh_loop),
            ("presence settle", self._presence.settle_loop),
            ("presence reaper", lambda: self._presence.reap_loop(lambda: self._subscriber.rooms)),
            ("room index", self._index.flush_loop),
            ("keep-alive", lambda: self._keeper.loop(lambda: self._subscriber.rooms)),
        ]
        self._tasks = start_loops(loops)
        try:
            async with asyncio.timeout(START_WAIT):
                await self._subscriber.attempted.wait()
                if self._subscriber.live:
                    await self._ready.wait()
        except TimeoutError:
            pass
        if not self.ready:
            log.warning(
                "Redis at %s is not reachable yet; not ready, retrying in the background",
                self._where,
            )

    async def close(self) -> None:
        """Stop the loops and close the clients; ends within a bounded time, whatever Redis
        does (a loop that will not end, or a connection that will not close, is logged)."""
        self._closing = True
        await stop_loops(self._tasks)
        self._tasks = []
        self._subscriber.handler = None
        for client in (self._client, self._control):
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    await close_client(client)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("closing a Redis client of %s failed: %s", self._where, describe(exc))

    async def subscribe(self, room: str) -> None:
        await self._subscriber.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        await self._subscriber.unsubscribe(room)

    async def publish(self, room: str, draft: Draft) -> Published:
        keys = [stream_key(room)]
        args: list[str | int] = [
            channel(room),
            self._history_size,
            self._dedupe_ms,
            self._keeper.ttl_ms,
            draft.name,
            draft.text,
            encode_trace(draft.trace),
            draft.user or "",
        ]
        if draft.nonce is not None:
            keys.append(dedupe_key(room, draft.sender, draft.nonce))
            args.append(draft.nonce)
        try:
            if self._replicas:
                duplicate, value = await self._ops.call("publish", self._acked(room, keys, args))
            else:
                duplicate, value = await self._ops.call(
                    "publish", self._publish(keys=keys, args=args)
                )
        except NotConfirmed as exc:
            log.debug("publish in %s not confirmed: %s", room, exc)
            raise
        except (RedisError, OSError) as exc:
            raise self._unavailable("publish", exc) from exc
        if duplicate:
            original = decode_message(room, value)
            if self._replicas:
                await self._commit(room, original.id)
            await self._delivered()
            return Published(original, duplicate=True)
        message_id = value.decode()
        if self._replicas:
            await self._commit(room, message_id)
        self._index.published(room, id_key(message_id)[0])
        message = Message(
            message_id,
            room,
            draft.name,
            draft.text,
            id_key(message_id)[0],
            draft.nonce,
            draft.trace,
            user=draft.user,
        )
        return Published(message, duplicate=False)

    async def history(self, room: str, since: str | None, limit: int) -> History:
        """memory.select_history's rule, read with the next batch of reads (redis_reads.py);
        with replica acks, only once the replicas have what was read (`_confirmed`)."""
        try:
            read = await self._reads.read(room, since, limit)
        except (RedisError, OSError) as exc:
            raise self._unavailable("history", exc) from exc
        return await self._confirmed(room, read)

    async def history_before(self, room: str, before: str, limit: int) -> History:
        """memory.select_before's rule: one XREVRANGE with an exclusive end."""
        end = end_before(parse_id(before, "before"))
        if end is None:
            return History([], gap=False)
        try:
            entries: Any = await self._ops.call(
                "history", self._client.xrevrange(stream_key(room), max=end, count=limit)
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable("history", exc) from exc
        entries.reverse()
        return History(self._messages(room, entries), gap=False)

    async def rooms(self, limit: int) -> list[RoomInfo]:
        return await self._index.rooms(limit)

    # --- internals ----------------------------------------------------------------------

    async def _acked(self, room: str, keys: list[str], args: list[Any]) -> tuple[int, Any]:
        """The publish script and WAIT on one connection. A duplicate's original may not be on
        the replicas yet (its WAIT timed out): it is confirmed again before it is answered."""
        (duplicate, value), acked = await self._acks.script(
            self._publish, keys, args, self._replicas
        )
        if duplicate:
            await self._acks.confirm(room, self._replicas)
        elif acked < self._replicas:
            raise NotConfirmed(
                f"{acked} of {self._replicas} replicas confirmed the message within the timeout"
            )
        return int(duplicate), value

    async def _commit(self, room: str, message_id: str) -> None:
        """Release the message to every subscriber: it is on the replicas. A lost commit only
        delays it: subscribers confirm what they hold for long with a WAIT of their own."""
        try:
            await self._ops.call("commit", self._acks.commit(room, message_id))
        except (RedisError, OSError) as exc:
            log.debug("commit of %s in %s failed: %s", message_id, room, describe(exc))

    async def _confirm(self, room: str, replicas: int) -> None:
        """Return once `replicas` replicas have every write made to `room`'s shard so far."""
        try:
            await self._ops.call("confirm", self._acks.confirm(room, replicas))
        except (RedisError, OSError) as exc:
            raise self._unavailable("confirm", exc) from exc

    async def _confirmed(self, room: str, history: History) -> History:
        """`history`, once (with replica acks) the replicas have it: a client must not see a
        message that a failover could take back."""
        if self._replicas and history.messages:
            await self._confirm(room, self._replicas)
        return history

    async def _delivered(self) -> None:
        """Returns once the subscriber has handed on all Redis had published before the call
        (a token published on this node's channel came back behind it); at most
        BARRIER_TIMEOUT, and at once without a live subscriber: a best effort, for ordering."""
        subscriber = self._subscriber
        if not isinstance(subscriber, Subscriber) or not subscriber.live:
            return  # not built for shard subscribers (a cluster): the duplicate is answered at once
        token, arrived = subscriber.barrier()
        try:
            await self._ops.call("ping", self._client.publish(subscriber.ping_channel, token))
            await asyncio.wait_for(arrived, BARRIER_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            log.debug("delivery barrier: %s", describe(exc))
        finally:
            subscriber.forget_barrier(token)

    @staticmethod
    def _messages(room: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Message]:
        return [message_from_entry(room, entry_id, fields) for entry_id, fields in entries]

    def _unavailable(self, what: str, exc: BaseException) -> BrokerUnavailable:
        # Readiness is left to the health check and the subscriber: one failed command (a
        # pool exhausted under load, say) must not take the instance out of the balancer.
        # A refused write is the exception: Redis said so, and the probe says when it is over.
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | TimeoutError | OSError):
            log.debug("Redis unreachable (%s: %s)", what, describe(exc))
        elif refuses_writes(exc):
            self._writes_refused(exc)
        else:
            log.warning("Redis refused %s: %s", what, describe(exc))
        return BrokerUnavailable(f"Redis {what} failed: {describe(exc)}")

    def _writes_refused(self, exc: BaseException) -> None:
        if self._writable:
            log.warning("Redis refuses writes (%s); not ready until it accepts them", describe(exc))
        self._writable = False
        self._readiness_changed()

    def _readiness_changed(self) -> None:
        if self.ready:
            if not self._ready.is_set():
                log.info("Redis broker ready (%s)", self._where)
                self._presence.reconnected(REAP_GRACE)
            self._ready.set()
        else:
            if self._ready.is_set() and not self._closing:
                log.warning("Redis broker not ready")
            self._ready.clear()

    async def _health_loop(self) -> None:
        """PING by self-ping: PUBLISH on this node's channel, which the subscriber listens to
        (on a cluster, on each shard's, which that shard's connection listens to); then a write
        probe: a tiny SET with a TTL on this node's own key.

        The ping proves the command connection (readiness), and a ping that does not come back
        through pub/sub proves the subscriber dead even when its socket looks fine. PUBLISH is
        not a write: Redis accepts it out of memory, as a replica and after a failed save,
        when every message would be refused; the probe is what notices those.
        """
        loop = asyncio.get_running_loop()
        probe = probe_key(self._node_id)
        seq = 0
        while True:
            seq += 1
            links = self._subscriber.links
            try:
                for link in links:
                    token = link.ping_token()
                    receivers = await self._ops.call(
                        "ping",
                        asyncio.wait_for(
                            self._control.publish(link.ping_channel, seq), HEALTH_TIMEOUT
                        ),
                    )
                    link.ping_published(token, seq, int(receivers), loop.time())
                # Until a cluster's subscriber knows its shards there is nothing to ping.
                self._client_ok = bool(links)
                if links:
                    await self._probe_writes(probe, seq)
            except (TimeoutError, RedisError, OSError) as exc:
                if self._client_ok:
                    log.warning("Redis unreachable (health check: %s)", describe(exc))
                self._client_ok = False
            for link in links:
                link.check_pong(loop.time())
            self._readiness_changed()
            await asyncio.sleep(HEALTH_INTERVAL if links else HEALTH_INTERVAL / 10)

    async def _probe_writes(self, key: str, seq: int) -> None:
        """Whether Redis accepts writes now; raises what an unreachable Redis raises."""
        try:
            await self._ops.call(
                "write_probe",
                asyncio.wait_for(self._control.set(key, seq, px=PROBE_TTL_MS), HEALTH_TIMEOUT),
            )
        except RedisError as exc:
            if not refuses_writes(exc):
                raise
            self._writes_refused(exc)
            return
        if not self._writable:
            log.info("Redis accepts writes again")
        self._writable = True
