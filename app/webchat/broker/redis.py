"""Redis broker: any number of webchat processes, on one host or many, behave as one service.

Choose it (`--redis-url redis://...`, or `rediss://` with TLS, password in the URL) whenever
more than one process serves the same rooms (`--workers N`, several hosts behind a load
balancer), or history must outlive a restart. A stream per room is the history, a pub/sub
channel per room carries live messages and presence; publishing is one atomic Lua script, so
every node delivers one order, the order of history. Each node subscribes to a room's
channel only while it has members there.

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
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
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
    start_after,
    stream_key,
)
from webchat.broker.redis_index import RoomIndex
from webchat.broker.redis_keepalive import RoomKeeper
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_presence import RedisPresence
from webchat.broker.redis_rooms import BACKOFF_CAP
from webchat.broker.redis_scripts import PUBLISH
from webchat.broker.redis_subscriber import Subscriber
from webchat.config import Config
from webchat.metrics import Metrics
from webchat.protocol import parse_id

if TYPE_CHECKING:
    from webchat.tracing import Tracing

log = logging.getLogger(__name__)

SOCKET_TIMEOUT: Final = 1.0  # every command; a slower Redis counts as unavailable
POOL_WAIT: Final = 5.0  # a request waits this long for a pooled connection, then is unavailable
CONTROL_POOL: Final = 8  # connections of the background loops: more than they ever use at once
CONTROL_WAIT: Final = 1.0
HEALTH_INTERVAL: Final = 0.5
HEALTH_TIMEOUT: Final = 1.0  # so readiness drops within 2 s of Redis becoming unreachable
PROBE_TTL_MS: Final = 10_000  # the write probe's key outlives a few probes, then goes
# After reconnecting, reaping waits until every live node has reconnected and refreshed.
REAP_GRACE: Final = BACKOFF_CAP + 2 * HEALTH_INTERVAL
START_WAIT: Final = 2.0  # start() waits this long for a first connection, then goes on


def refuses_writes(exc: BaseException) -> bool:
    """Redis answered but will not write: out of memory, a read-only replica, a failed save
    (MISCONF) or too few replicas (NOREPLICAS). Not an outage: it answers, it will not store."""
    if isinstance(exc, OutOfMemoryError | ReadOnlyError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(
        ("OOM", "READONLY", "MISCONF", "NOREPLICAS")
    )


def _safe_url(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


async def _owned(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a background loop until cancelled; a crash is logged and the loop restarted."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Redis broker %s loop crashed; restarting it", name)
        await asyncio.sleep(1.0)


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
        self._url = config.redis_url
        self._history_size = config.history_size
        self._dedupe_ms = int(dedupe_seconds(config.room_ttl) * 1000)
        self._node_id = node_id
        self._client = self._connect(config.redis_url, config.redis_pool, POOL_WAIT, "")
        self._control = self._connect(config.redis_url, CONTROL_POOL, CONTROL_WAIT, "-ctl")
        self._metrics = metrics or Metrics()
        self._ops = RedisOps(self._metrics, tracing, config.redis_url)
        self._publish = self._client.register_script(PUBLISH)
        self._keeper = RoomKeeper(self._control, self._ops, config.room_ttl)
        self._index = RoomIndex(
            self._client, self._control, config.presence_timeout, self._ops, config.room_ttl
        )
        self._presence = RedisPresence(
            self._client,
            node_id,
            config.presence_timeout,
            lambda: self._client_ok,
            self._ops,
            self._index.counted,
            control=self._control,
        )
        self._subscriber = Subscriber(
            self._client,
            node_id,
            self._readiness_changed,
            f"webchat-{node_id}-sub",
            self._ops,
            on_reconnect=self._metrics.broker_reconnects.inc,
            control=self._control,
            keep_ms=self._keeper.ttl_ms,
        )
        self._client_ok = False
        self._writable = True  # until Redis refuses a write: then until a probe succeeds
        self._closing = False
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _connect(self, url: str, size: int, wait: float, suffix: str) -> Redis:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=size,
            timeout=wait,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            # One immediate retry on a connection error, for a pooled connection that went
            # stale while Redis restarted. Never on a timeout: the script may have run.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=0,
            client_name=f"webchat-{self._node_id}{suffix}",
            # RESP2 works with every Redis and its replies do not change with redis-py's
            # default; a `?protocol=3` in the URL still wins.
            protocol=2,
        )
        return Redis.from_pool(pool)

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
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("subscriber", self._subscriber.run),
            ("backfill", self._subscriber.backfill_loop),
            ("health", self._health_loop),
            ("presence refresh", self._presence.refresh_loop),
            ("presence settle", self._presence.settle_loop),
            ("presence reaper", lambda: self._presence.reap_loop(lambda: self._subscriber.rooms)),
            ("room index", self._index.flush_loop),
            ("keep-alive", lambda: self._keeper.loop(lambda: self._subscriber.rooms)),
        ]
        self._tasks = [asyncio.create_task(_owned(name, loop)) for name, loop in loops]
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
                _safe_url(self._url),
            )

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._subscriber.handler = None
        await self._client.aclose()
        await self._control.aclose()

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
            duplicate, value = await self._ops.call("publish", self._publish(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            raise self._unavailable("publish", exc) from exc
        if duplicate:
            return Published(decode_message(room, value), duplicate=True)
        message_id = value.decode()
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
        """memory.select_history's rule, read from the room's stream in one round trip."""
        key = stream_key(room)
        try:
            if since is None:
                entries: Any = await self._ops.call(
                    "history", self._client.xrevrange(key, count=limit)
                )
                entries.reverse()
                return History(self._messages(room, entries), gap=False)
            after = parse_id(since)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xrange(key, count=1)
                start = start_after(after)
                if start is not None:
                    pipe.xrange(key, min=start, count=limit)
                results: list[Any] = await self._ops.call("history", pipe.execute())
        except (RedisError, OSError) as exc:
            raise self._unavailable("history", exc) from exc
        first = results[0]
        entries = results[1] if start is not None else []
        gap = not first or after < id_key(first[0][0].decode())
        return History(self._messages(room, entries), gap=gap)

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
                log.info("Redis broker ready (%s)", _safe_url(self._url))
                self._presence.reconnected(REAP_GRACE)
            self._ready.set()
        else:
            if self._ready.is_set() and not self._closing:
                log.warning("Redis broker not ready")
            self._ready.clear()

    async def _health_loop(self) -> None:
        """PING by self-ping: PUBLISH on this node's channel, which the subscriber listens to;
        then a write probe: a tiny SET with a TTL on this node's own key.

        The ping proves the command connection (readiness), and a ping that does not come back
        through pub/sub proves the subscriber dead even when its socket looks fine. PUBLISH is
        not a write: Redis accepts it out of memory, as a replica and after a failed save,
        when every message would be refused; the probe is what notices those.
        """
        loop = asyncio.get_running_loop()
        ping_channel = self._subscriber.ping_channel
        probe = probe_key(self._node_id)
        seq = 0
        while True:
            seq += 1
            token = self._subscriber.ping_token()
            try:
                receivers = await self._ops.call(
                    "ping",
                    asyncio.wait_for(self._control.publish(ping_channel, seq), HEALTH_TIMEOUT),
                )
                self._client_ok = True
                self._subscriber.ping_published(token, seq, int(receivers), loop.time())
                await self._probe_writes(probe, seq)
            except (TimeoutError, RedisError, OSError) as exc:
                if self._client_ok:
                    log.warning("Redis unreachable (health check: %s)", describe(exc))
                self._client_ok = False
            self._subscriber.check_pong(loop.time())
            self._readiness_changed()
            await asyncio.sleep(HEALTH_INTERVAL)

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
