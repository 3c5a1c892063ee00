"""One running instance: wires hub, broker and metrics, serves sockets, drains on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from webchat.broker import create_broker
from webchat.broker.base import Broker, BrokerUnavailable, Draft
from webchat.config import Config
from webchat.connection import CLOSE_POLICY, CLOSE_RESTART, CLOSE_TRY_AGAIN, Connection
from webchat.heartbeat import run_heartbeat
from webchat.hub import Hub
from webchat.metrics import Metrics
from webchat.protocol import (
    GAP,
    ConnectParams,
    ProtocolError,
    SendRequest,
    encode_error,
    encode_message,
    encode_welcome,
    parse_client_frame,
    ws_text_frame,
)
from webchat.ratelimit import TokenBucket
from webchat.session import Pending, Session
from webchat.upgrade import take_over
from webchat.websocket import ServerSocket

log = logging.getLogger(__name__)

# How long a close handshake may take before the socket is dropped, when draining.
DRAIN_CLOSE_GRACE = 2.0


class Node:
    """The service as one process sees it. Create it in a cleanup_ctx: `start`, then `close`."""

    def __init__(self, config: Config, broker: Broker | None = None) -> None:
        self.config = config
        self.id = uuid.uuid4().hex[:12]
        self.metrics = Metrics()
        self.broker = broker or create_broker(config, self.id)
        self.hub = Hub(self.broker, config.presence_grace, config.presence_limit)
        self.draining = False
        self._all_closed = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # sessions' openings and publishes
        # One callable for every connection (a lambda per connection costs 200 bytes each).
        self._count_slow_client = self.metrics.closes.labels("slow_client").inc
        self._limits: dict[str, Any] = {
            "max_text": config.max_text,
            "rate_per_s": int(config.rate) if config.rate.is_integer() else config.rate,
            "burst": config.burst,
        }

    @property
    def ready(self) -> bool:
        return self.broker.ready and not self.draining

    async def start(self) -> None:
        await self.broker.start(self.hub)
        self._heartbeat = asyncio.get_running_loop().create_task(
            run_heartbeat(lambda: self.hub.connections, self.config.heartbeat)
        )

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        # aiohttp no longer holds the sockets (upgrade.py): stop the sessions' tasks (openings,
        # publishes), drop the sockets still open after the drain, and let the sessions end
        # before the hub goes.
        self.draining = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.hub.connections:
            conn.drop()
        if self.hub.connection_count:
            try:
                async with asyncio.timeout(DRAIN_CLOSE_GRACE):
                    await self._all_closed.wait()
            except TimeoutError:
                log.warning("%d sessions did not end", self.hub.connection_count)
        await self.hub.close()
        await self.broker.close()

    # --- one client ---------------------------------------------------------------------

    async def serve(self, request: web.Request, params: ConnectParams) -> web.StreamResponse:
        """Upgrade to a WebSocket and return the 101; the session goes on without aiohttp.

        The welcome and replay are written by a task of the node's (`_open`); the client's
        messages then come by callback (session.py, `handle_message`), with no task left for an
        idle client; `session_ended` runs when its socket is gone.
        """
        cfg = self.config
        # Permessage-deflate is never negotiated: it costs ~100 KiB per client.
        socket = ServerSocket(max_size=cfg.max_frame)
        response = await take_over(request, socket)
        transport = socket.transport
        if transport is None:  # the client went away during the handshake
            return response
        conn = Connection(
            socket,
            transport,
            params.room,
            params.name,
            cfg.send_buffer,
            on_overflow=self._count_slow_client,
            heartbeat=cfg.heartbeat,
        )
        self.metrics.connected_users.inc()
        socket.opening(self.spawn(self._open(socket, conn, params)))
        return response

    async def _open(self, socket: ServerSocket, conn: Connection, params: ConnectParams) -> None:
        """Join, welcome and replay, then hand the client's messages to a Session."""
        cfg = self.config
        bucket = TokenBucket(cfg.rate, cfg.burst, asyncio.get_running_loop().time())
        try:
            await self.hub.attach(conn)
            await self._welcome(socket, conn, params)
        except BrokerUnavailable:
            conn.close(CLOSE_TRY_AGAIN, "broker unavailable", DRAIN_CLOSE_GRACE)
        except ConnectionResetError:  # the client left during its welcome or replay
            pass
        except asyncio.CancelledError:  # the client left, or the server is stopping
            conn.drop()
            raise
        except Exception:
            log.exception("opening a session failed")
            conn.drop()
        finally:
            socket.start(Session(self, conn, socket, bucket))

    def session_ended(self, conn: Connection) -> None:
        """The client's socket is gone (session.py calls this once per connection)."""
        self.hub.detach(conn)
        conn.closed()
        self.metrics.connected_users.dec()
        if self.draining and self.hub.connection_count == 0:
            self._all_closed.set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task for a session (its opening, a publish), cancelled by `close`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _welcome(self, socket: ServerSocket, conn: Connection, params: ConnectParams) -> None:
        conn.forget_held_presence()
        members, count = await self.broker.presence.members(
            params.room, self.config.presence_limit, params.name
        )
        welcome = encode_welcome(params.room, params.name, members, count, self._limits)
        conn.write_now(welcome)
        await socket.drain()
        watermark = None
        if params.since is not None:
            # The newest id before the replay read: if nothing is replayed, held live messages
            # newer than it are news even when `since` claims more (history lost, clock behind).
            newest = await self.broker.history(params.room, None, 1)
            history = await self.broker.history(params.room, params.since, self.config.history_size)
            frames = [encode_message(m) for m in history.messages]
            if history.gap:
                frames.insert(0, GAP)
            for frame in frames:
                conn.write_now(frame)
                await socket.drain()  # the replay waits for a slow reader
            if history.messages:
                watermark = history.messages[-1].id
            elif newest.messages:
                watermark = newest.messages[-1].id
        conn.go_live(watermark)

    def handle_message(
        self, conn: Connection, bucket: TokenBucket, data: str | bytes
    ) -> Pending | None:
        """One message of a client, in order (pings and pongs never get here: websocket.py)."""
        cfg = self.config
        if not bucket.take(asyncio.get_running_loop().time()):
            self._error(conn, "rate_limited", f"more than {cfg.rate:g} frames/s; slow down")
            if bucket.rejected_in_a_row >= 3 * cfg.burst:
                self.metrics.closes.labels("rate_limit_abuse").inc()
                conn.close(CLOSE_POLICY, "rate limit abuse", DRAIN_CLOSE_GRACE)
            return None
        if isinstance(data, bytes):
            self._error(conn, "bad_type", "binary frames are not accepted; send JSON text")
            return None
        try:
            request = parse_client_frame(data, cfg.max_text)
        except ProtocolError as exc:
            self._error(conn, exc.code, exc.message)
            return None
        return lambda: self._publish(conn, bucket, request)

    async def _publish(self, conn: Connection, bucket: TokenBucket, request: SendRequest) -> None:
        try:
            published = await self.broker.publish(
                conn.room, Draft(conn.name, request.text, request.nonce)
            )
        except BrokerUnavailable:
            self._error(conn, "unavailable", "the message broker is unreachable; retry later")
            return
        bucket.accepted()
        if published.duplicate:
            conn.send(ws_text_frame(encode_message(published.message)))
        else:
            self.metrics.messages.inc()

    def _error(self, conn: Connection, code: str, message: str) -> None:
        self.metrics.errors.labels(code).inc()
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
            loop.call_later(
                index * step, conn.close, CLOSE_RESTART, "server restart", DRAIN_CLOSE_GRACE
            )
        self.metrics.closes.labels("drain").inc(len(conns))
        if self.hub.connection_count:
            await self._all_closed.wait()
