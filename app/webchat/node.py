"""One running instance: wires hub, broker, metrics and tracing, serves sockets, drains."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from webchat.broker import create_broker
from webchat.broker.base import (
    ROOMS_LIMIT,
    Broker,
    BrokerUnavailable,
    Draft,
    History,
    Message,
    NameTaken,
    RoomInfo,
)
from webchat.cancelling import cancel_until_done
from webchat.config import Config
from webchat.connection import CLOSE_POLICY, CLOSE_RESTART, CLOSE_TRY_AGAIN, Connection
from webchat.heartbeat import run_heartbeat
from webchat.hub import Hub
from webchat.limits import Budget, budget, descriptor_limit
from webchat.metrics import Metrics
from webchat.monitor import LoopLag, run_monitor
from webchat.protocol import (
    GAP,
    ConnectParams,
    ProtocolError,
    RefreshRequest,
    SendRequest,
    encode_error,
    encode_message,
    encode_refreshed,
    encode_rooms,
    encode_welcome,
    error_body,
    member_name,
    parse_client_frame,
    ws_text_frame,
)
from webchat.ratelimit import TokenBucket
from webchat.replay import MessageFrames, ReplayWriter
from webchat.session import Pending, Session
from webchat.trim import Trimmer
from webchat.upgrade import take_over
from webchat.websocket import ServerSocket

if TYPE_CHECKING:
    from webchat.auth import Identity, Verifier
    from webchat.tracing import Tracing

log = logging.getLogger(__name__)

# How long a close handshake may take before the socket is dropped, when draining.
DRAIN_CLOSE_GRACE = 2.0
# GET /api/rooms is polled by every open page: one broker read per instance this often at most.
ROOMS_CACHE_SECONDS = 2.0
# A `since` replay is read from the broker this many messages at a time (history may be long).
REPLAY_PAGE = 100
# Replay frames are written in pieces of at most this many bytes (and of the send buffer).
REPLAY_CHUNK = 64 * 1024
# Retry-After (seconds) of a 503 for an overloaded instance, and for one at its connection cap.
RETRY_OVERLOADED = 2
RETRY_FULL = 5


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


class Node:
    """The service as one process sees it. Create it in a cleanup_ctx: `start`, then `close`."""

    def __init__(
        self, config: Config, broker: Broker | None = None, limits: Budget | None = None
    ) -> None:
        self.config = config
        # The CLI raises the descriptor limit and checks that --max-connections fits it before
        # it starts (limits.py); here, without `limits`, the caps follow the current limit.
        self.limits = limits or budget(
            config.max_connections,
            descriptor_limit(),
            0 if config.memory_broker else config.redis_pool,
        )
        self.sessions = 0  # WebSocket sessions in progress (upgrading or open)
        self.trimmer = Trimmer()  # memory back to the system after large answers and replays
        self.id = uuid.uuid4().hex[:12]
        self.metrics = Metrics()
        # Imported only when switched on: with tracing off no OpenTelemetry code is loaded.
        self.tracing: Tracing | None = None
        if config.tracing:
            from webchat.tracing import Tracing

            system = "memory" if config.memory_broker else "redis"
            self.tracing = Tracing(self.id, system)
        self.broker = broker or create_broker(config, self.id, self.metrics, self.tracing)
        # Authenticated mode only: PyJWT and cryptography are not loaded in anonymous mode.
        self.auth: Verifier | None = None
        if config.authenticated:
            from webchat.auth import Verifier

            self.auth = Verifier(config)
        self.hub = Hub(
            self.broker, config.presence_grace, config.presence_limit, self.metrics, self.tracing
        )
        self.draining = False
        self._all_closed = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # sessions' openings and publishes
        # One callable each for all connections (a bound method per connection costs 64 bytes).
        self._disconnected = self.metrics.disconnected
        self._trim_soon = self.trimmer.soon
        self._message_frames = MessageFrames()  # replayed messages' frames, shared
        self._monitor: asyncio.Task[None] | None = None
        self.loop_lag = LoopLag(0.0)
        self._rooms: tuple[float, list[RoomInfo], bytes] | None = None  # expiry, listing, JSON
        self._rooms_task: asyncio.Task[list[RoomInfo]] | None = None
        self._limits: dict[str, Any] = {
            "max_text": config.max_text,
            "rate_per_s": int(config.rate) if config.rate.is_integer() else config.rate,
            "burst": config.burst,
        }

    @property
    def ready(self) -> bool:
        return self.broker.ready and not self.draining

    @property
    def loop_lagging(self) -> float | None:
        """The event loop's lag if it is over --max-loop-lag now, else None.

        The latest probe (monitor.py, 10 a second) decides: overload makes every probe late,
        so new clients are refused for as long as it lasts; after a single pause (a long
        fan-out, the collector) only the requests queued during it are, until the next probe.
        """
        limit = self.config.max_loop_lag
        lag = self.loop_lag.latest
        return lag if limit and lag > limit else None

    @property
    def full(self) -> bool:
        return self.sessions >= self.limits.websockets

    def admission(self) -> tuple[str, int] | None:
        """Why a new upgrade must be refused now, and its Retry-After, or None to go on.

        Checked first, before the request is even parsed: an instance whose loop lags (a
        join storm, a long fan-out) or that holds all the sockets it may, takes no more.
        """
        lag = self.loop_lagging
        if lag is not None:
            return (
                f"overloaded (event loop {lag * 1000:.0f} ms late); retry later",
                RETRY_OVERLOADED,
            )
        if self.full:
            return f"at its limit of {self.limits.websockets} connections; retry later", RETRY_FULL
        return None

    async def start(self) -> None:
        self.metrics.count_logged_errors()
        if self.auth is not None:
            await self.auth.start()
        await self.broker.start(self.hub)
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.create_task(
            run_heartbeat(
                lambda: self.hub.connections,
                self.config.heartbeat,
                self.metrics.send_buffer_bytes.set,
                self.config.send_timeout,
            )
        )
        self.loop_lag = LoopLag(loop.time())
        self._sample()
        self._monitor = loop.create_task(run_monitor(self.loop_lag, self._on_probe, self._sample))

    def _on_probe(self, lag: float) -> None:
        self.metrics.loop_lag_hist.observe(lag)

    def _sample(self) -> None:
        """Once a second (monitor.py): gauges that are states, not events."""
        metrics = self.metrics
        metrics.loop_lag.set(self.loop_lag.recent)
        metrics.broker_ready.set(1 if self.broker.ready else 0)
        metrics.rooms_active.set(self.hub.active_rooms)
        metrics.flush()

    async def close(self) -> None:
        self.trimmer.cancel()
        if self._rooms_task is not None:
            self._rooms_task.cancel()
            with contextlib.suppress(BaseException):
                await self._rooms_task
        for task in (self._heartbeat, self._monitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # aiohttp no longer holds the sockets (upgrade.py): stop the sessions' tasks (openings,
        # publishes), drop the sockets still open after the drain, and let the sessions end
        # before the hub goes.
        self.draining = True
        await cancel_until_done(list(self._tasks), "session tasks")
        for conn in self.hub.connections:
            conn.mark_ended("drain")
            conn.drop()
        if self.hub.connection_count:
            try:
                async with asyncio.timeout(DRAIN_CLOSE_GRACE):
                    await self._all_closed.wait()
            except TimeoutError:
                log.warning("%d sessions did not end", self.hub.connection_count)
        await self.hub.close()
        await self.broker.close()
        if self.auth is not None:
            await self.auth.close()
        if self.tracing is not None:
            await self.tracing.close()
        self.metrics.stop_counting()

    # --- one client ---------------------------------------------------------------------

    async def serve(
        self, request: web.Request, params: ConnectParams, identity: Identity | None = None
    ) -> web.StreamResponse:
        """Join, upgrade to a WebSocket and return the 101; the session goes on without aiohttp.

        A name held by another key is refused (409) before the upgrade. The welcome and replay
        are written by a task of the node's (`_open`); the client's messages then come by
        callback (session.py, `handle_message`), with no task left for an idle client;
        `session_ended` runs when its socket is gone. The request must be a valid WebSocket
        handshake (web.py checks it: protocol.upgrade_problem).

        In authenticated mode `identity` is the verified token (web.py checked it and the
        room); the connection is closed with 4001 when the token expires unrefreshed.
        """
        cfg = self.config
        transport = request.transport
        if transport is None:  # the client went away already
            return web.Response(status=400)
        # Permessage-deflate is never negotiated: it costs ~100 KiB per client.
        socket = ServerSocket(max_size=cfg.max_frame)
        conn = Connection(
            socket,
            transport,  # the same transport before and after the upgrade (set_protocol)
            params.room,
            params.member,
            cfg.send_buffer,
            heartbeat=cfg.heartbeat,
            on_ended=self._disconnected,
            holder=params.holder,
            on_reset=self._trim_soon,  # its buffers are freed: give the memory back
            user=params.user,
        )
        if identity is not None:
            conn.expires = self.token_deadline(identity.exp)
        # Joining first (deliveries are held until the welcome) decides the name before the
        # upgrade, so a refusal is an HTTP answer the client can read. A session counts (for
        # --max-connections) from here until `session_ended`, or the refusal.
        self.sessions += 1
        try:
            await self.hub.attach(conn)
        except BaseException as exc:
            self.sessions -= 1
            if isinstance(exc, NameTaken):
                self.metrics.upgrade("name_taken")
                return self.name_taken(params)
            if isinstance(exc, BrokerUnavailable):
                self.metrics.upgrade("unavailable")
                return _json_error(
                    503, "unavailable", "message broker unreachable; retry with backoff"
                )
            raise
        self.metrics.upgrade("accepted")
        self.metrics.connected_users.inc()
        try:
            response = await take_over(request, socket)
        except BaseException:
            self.session_ended(conn)
            raise
        if socket.transport is None:  # the client went away during the join or the 101
            self.session_ended(conn)
            return response
        socket.opening(self.spawn(self._open(socket, conn, params)))
        return response

    async def _open(self, socket: ServerSocket, conn: Connection, params: ConnectParams) -> None:
        """Welcome and replay, then hand the client's messages to a Session."""
        cfg = self.config
        now = asyncio.get_running_loop().time()
        try:
            await self._welcome(conn, params)
        except BrokerUnavailable:
            conn.close(CLOSE_TRY_AGAIN, "broker unavailable", DRAIN_CLOSE_GRACE, why="error")
        except asyncio.CancelledError:  # the client left (else the server is stopping)
            conn.mark_ended("client" if socket.lost else "drain")
            conn.drop()
            raise
        except Exception:
            log.exception("opening a session failed")
            conn.mark_ended("error")
            conn.drop()
        finally:
            socket.start(Session(self, conn, socket, cfg.rate, cfg.burst, now))

    def session_ended(self, conn: Connection) -> None:
        """The client's socket is gone (session.py calls this once per connection)."""
        self.hub.detach(conn)
        conn.closed()
        self.metrics.connected_users.dec()
        self.sessions -= 1
        conn.mark_ended("client")  # unless the server ended it first
        if self.draining and self.hub.connection_count == 0:
            self._all_closed.set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task for a session (its opening, a publish), cancelled by `close`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _welcome(self, conn: Connection, params: ConnectParams) -> None:
        """Welcome, then the replay (`history=n` or `since`), then live messages.

        Every frame goes through the connection's send buffer like a live one, paced to the
        client's reading: a client that does not read is closed 1013 by the buffer's bounds
        (bytes, age) instead of the replay piling up in memory.
        """
        conn.forget_held_presence()
        # The member listing and the first history reads are asked for together: a broker
        # that batches them with other clients' (Redis) answers them in one wait, not three.
        room, read = params.room, self.broker.history
        listing = self.broker.presence.members(room, self.config.presence_limit, params.member)
        if params.since is not None:
            # `newest` is asked first, so it is read before the replay: if nothing is replayed,
            # held live messages newer than it are news even when `since` claims more (history
            # lost, clock behind).
            first = min(REPLAY_PAGE, self.config.history_size)
            # Two tasks and the listing awaited here: a storm's every resume comes this way,
            # and gather's three tasks cost twice as much.
            loop = asyncio.get_running_loop()
            reads = (
                loop.create_task(read(room, None, 1)),
                loop.create_task(read(room, params.since, first)),
            )
            try:
                members, count = await listing
                newest, page = await reads[0], await reads[1]
            finally:
                for task in reads:
                    if not task.done():
                        task.cancel()  # this one failed, or the client left
                    elif not task.cancelled():
                        task.exception()  # seen, whether it came before or after a failure
        elif params.history:
            (members, count), recent = await asyncio.gather(
                listing, read(room, None, params.history)
            )
        else:
            members, count = await listing
        welcome = encode_welcome(params.room, params.member, members, count, self._limits)
        # Welcome, replay and the live frames held meanwhile go out together where they fit.
        writer = ReplayWriter(conn, min(REPLAY_CHUNK, self.config.send_buffer))
        writer.add(ws_text_frame(welcome))
        watermark = None
        if params.since is None and params.history:
            # The newest n, then live ones newer than the last of them (held ones are dropped
            # up to it): a contiguous end of history, no gap, no duplicate. No gap frame.
            if not await self._replay(writer, recent.messages):
                return
            if recent.messages:
                watermark = recent.messages[-1].id
        elif params.since is not None:
            going, last = await self._replay_since(conn, writer, params.room, params.since, page)
            if not going:
                return
            if last is not None:
                watermark = last
            elif newest.messages:
                watermark = newest.messages[-1].id
        await writer.finish(watermark)

    async def _replay_since(
        self, conn: Connection, writer: ReplayWriter, room: str, since: str, page: History
    ) -> tuple[bool, str | None]:
        """Replay what history holds after `since`, a page at a time, starting with `page`
        (read with the welcome). Returns whether the connection is still going, and the id of
        the last message replayed (or None)."""
        left = self.config.history_size
        last: str | None = None
        first = True
        while left > 0:
            wanted = min(REPLAY_PAGE, left)
            if not first:
                # Written before waiting: a failed read must not leave the welcome unsent.
                if not await writer.flush():
                    return False, None
                page = await self.broker.history(room, last or since, wanted)
            if page.gap:
                if not first:
                    # History was trimmed past this replay while it ran: what it missed is
                    # gone. Resume into a `gap` frame, as after an outage (hub.on_gap).
                    conn.close(
                        CLOSE_TRY_AGAIN, "messages were missed: reconnect with since", why="gap"
                    )
                    return False, None
                writer.add(ws_text_frame(GAP))
            first = False
            if not await self._replay(writer, page.messages):
                return False, None
            if page.messages:
                last = page.messages[-1].id
                left -= len(page.messages)
            if len(page.messages) < wanted:
                break
        return True, last

    async def _replay(self, writer: ReplayWriter, messages: Sequence[Message]) -> bool:
        """Queue `messages` as frames, written in pieces paced to the client; False if it
        closed. Each frame is encoded once per process (a storm replays the same ones)."""
        if len(messages) >= REPLAY_PAGE:
            self.trimmer.soon()  # a page of frames is about to come and go
        frame = self._message_frames
        for message in messages:
            if not await writer.add_paced(frame(message)):
                return False
        return True

    def handle_message(
        self, conn: Connection, bucket: TokenBucket, data: str | bytes
    ) -> Pending | None:
        """One message of a client, in order (pings and pongs never get here: websocket.py)."""
        cfg = self.config
        received = asyncio.get_running_loop().time()
        if not bucket.take(received):
            self._rate_limited(conn, bucket)
            return None
        if isinstance(data, bytes):
            self._error(conn, "bad_type", "binary frames are not accepted; send JSON text")
            return None
        try:
            request = parse_client_frame(data, cfg.max_text)
        except ProtocolError as exc:
            self._error(conn, exc.code, exc.message)
            return None
        if isinstance(request, RefreshRequest):
            return functools.partial(self._refresh, conn, request.token)
        return functools.partial(self._publish, conn, bucket, request, received)

    def handle_control(self, conn: Connection, bucket: TokenBucket, pong: bool) -> bool:
        """A ping or a pong costs a token like any frame (PROTOCOL.md), so a ping flood ends
        like a message flood; a refused ping gets `rate_limited` and no pong. The pong that
        answers the heartbeat's ping is free."""
        if pong and conn.ping_pending:
            conn.ping_pending = False
            return True
        if bucket.take(asyncio.get_running_loop().time()):
            return True
        self._rate_limited(conn, bucket)
        return False

    def _rate_limited(self, conn: Connection, bucket: TokenBucket) -> None:
        cfg = self.config
        self._error(conn, "rate_limited", f"more than {cfg.rate:g} frames/s; slow down")
        if bucket.rejected_in_a_row >= 3 * cfg.burst:
            # Not waiting for its close reply: a flood would be parsed meanwhile.
            conn.close_abuser(CLOSE_POLICY, "rate limit abuse", why="rate_limit_abuse")

    async def _publish(
        self, conn: Connection, bucket: TokenBucket, request: SendRequest, received: float
    ) -> None:
        # The display name; conn.name is the presence member.
        draft = Draft(member_name(conn.name), request.text, request.nonce, user=conn.user)
        tracing = self.tracing
        try:
            if tracing is None:
                published = await self.broker.publish(conn.room, draft)
            else:
                published = await tracing.publish(self.broker, conn.room, draft)
        except BrokerUnavailable:
            self._error(conn, "unavailable", "the message broker is unreachable; retry later")
            return
        bucket.accepted()
        if published.duplicate:
            conn.send(ws_text_frame(encode_message(published.message)))
        else:
            self.metrics.messages.inc()
            self.metrics.message_latency.observe(asyncio.get_running_loop().time() - received)

    def token_deadline(self, exp: int) -> float:
        """The loop time at which a token expiring at `exp` (seconds since the epoch) stops
        being accepted: `exp` plus the leeway, the same rule as a new connection's."""
        loop = asyncio.get_running_loop()
        return loop.time() + (exp + self.config.auth_leeway - time.time())

    async def _refresh(self, conn: Connection, token: str) -> None:
        """A `refresh` frame: a valid token for the same user and room moves the connection's
        expiry; any other gets `unauthorized` and the connection keeps its current token."""
        from webchat.auth import AuthError, KeysUnavailable

        if self.auth is None:
            self._error(
                conn, "bad_type", "refresh is for authenticated mode; this service has none"
            )
            return
        keeps = "this connection keeps its current token"
        try:
            identity = await self.auth.verify(token)
        except AuthError as exc:
            self.metrics.auth_failure(exc.reason)
            self._error(conn, "unauthorized", f"{exc.message}; {keeps}")
            return
        except KeysUnavailable as exc:
            self._error(conn, "unavailable", f"{exc}; {keeps}")
            return
        if identity.sub != conn.user:
            self.metrics.auth_failure("other_user")
            self._error(conn, "unauthorized", f"the token is for another user (sub); {keeps}")
            return
        if not identity.allows(conn.room):
            self._error(conn, "unauthorized", f"the token does not allow room {conn.room}; {keeps}")
            return
        conn.expires = self.token_deadline(identity.exp)
        conn.send(ws_text_frame(encode_refreshed(identity.exp)))

    @staticmethod
    def name_taken(params: ConnectParams) -> web.Response:
        return _json_error(
            409,
            "name_taken",
            f"the name {params.name!r} is in use in {params.room} by someone else; pick another",
        )

    async def check(self, params: ConnectParams) -> web.Response:
        """What an upgrade with these parameters would get, without joining: for a client
        whose WebSocket failed to open and that cannot read the refusal (browsers cannot)."""
        try:
            holder = await self.hub.holder(params.room, params.member)
        except BrokerUnavailable:
            return _json_error(503, "unavailable", "message broker unreachable; retry with backoff")
        if holder is not None and holder != params.holder:
            return self.name_taken(params)
        return _json_error(426, "upgrade_required", "this would be accepted as a WebSocket upgrade")

    async def rooms(self) -> tuple[list[RoomInfo], bytes]:
        """GET /api/rooms, from a cache a few seconds old at most (every page polls it): the
        listing and its JSON body, encoded once. Concurrent requests share one broker read.

        Raises BrokerUnavailable.
        """
        loop = asyncio.get_running_loop()
        cached = self._rooms
        if cached is None or loop.time() >= cached[0]:
            task = self._rooms_task
            if task is None or task.done():
                task = self._rooms_task = loop.create_task(self.broker.rooms(ROOMS_LIMIT))
                task.add_done_callback(self._rooms_read)
            await asyncio.shield(task)
            cached = self._rooms
            assert cached is not None
        return cached[1], cached[2]

    def _rooms_read(self, task: asyncio.Task[list[RoomInfo]]) -> None:
        if not task.cancelled() and task.exception() is None:
            expiry = asyncio.get_running_loop().time() + ROOMS_CACHE_SECONDS
            listing = task.result()
            self._rooms = (expiry, listing, encode_rooms(listing))

    def _error(self, conn: Connection, code: str, message: str) -> None:
        self.metrics.error(code)
        conn.send(ws_text_frame(encode_error(code, message)))

    # --- shutdown -----------------------------------------------------------------------

    async def drain(self) -> None:
        """Refuse new clients now; after the drain delay close the rest with 1012, spread out."""
        self.draining = True
        await asyncio.sleep(self.config.drain_delay)
        conns = self.hub.connections
        if not conns:
            return
        loop = asyncio.get_running_loop()
        step = self.config.drain_spread / len(conns)
        for index, conn in enumerate(conns):
            close = functools.partial(
                conn.close, CLOSE_RESTART, "server restart", DRAIN_CLOSE_GRACE, why="drain"
            )
            loop.call_later(index * step, close)
        if self.hub.connection_count:
            await self._all_closed.wait()
