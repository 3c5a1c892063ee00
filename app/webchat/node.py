"""One running instance: wires hub, broker, metrics and tracing, serves sockets, drains."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import WebSocketError, WSMsgType, web

from webchat.broker import create_broker
from webchat.broker.base import Broker, BrokerUnavailable, Draft
from webchat.config import Config
from webchat.connection import CLOSE_POLICY, CLOSE_RESTART, CLOSE_TRY_AGAIN, Connection
from webchat.heartbeat import run_heartbeat
from webchat.hub import Hub
from webchat.metrics import Metrics
from webchat.monitor import LoopLag, run_monitor
from webchat.protocol import (
    GAP,
    ConnectParams,
    ProtocolError,
    encode_error,
    encode_message,
    encode_welcome,
    parse_client_frame,
    ws_text_frame,
)
from webchat.ratelimit import TokenBucket

if TYPE_CHECKING:
    from webchat.tracing import Tracing

log = logging.getLogger(__name__)

# How long a close handshake may take before the socket is dropped, when draining.
DRAIN_CLOSE_GRACE = 2.0


class Node:
    """The service as one process sees it. Create it in a cleanup_ctx: `start`, then `close`."""

    def __init__(self, config: Config, broker: Broker | None = None) -> None:
        self.config = config
        self.id = uuid.uuid4().hex[:12]
        self.metrics = Metrics()
        # Imported only when switched on: with tracing off no OpenTelemetry code is loaded.
        self.tracing: Tracing | None = None
        if config.tracing:
            from webchat.tracing import Tracing

            system = "memory" if config.memory_broker else "redis"
            self.tracing = Tracing(self.id, system)
        self.broker = broker or create_broker(config, self.id, self.metrics, self.tracing)
        self.hub = Hub(
            self.broker, config.presence_grace, config.presence_limit, self.metrics, self.tracing
        )
        self.draining = False
        self._all_closed = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.loop_lag = LoopLag(0.0)
        self._limits: dict[str, Any] = {
            "max_text": config.max_text,
            "rate_per_s": int(config.rate) if config.rate.is_integer() else config.rate,
            "burst": config.burst,
        }

    @property
    def ready(self) -> bool:
        return self.broker.ready and not self.draining

    async def start(self) -> None:
        self.metrics.count_logged_errors()
        await self.broker.start(self.hub)
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.create_task(
            run_heartbeat(
                lambda: self.hub.connections,
                self.config.heartbeat,
                self.metrics.send_buffer_bytes.set,
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
        for task in (self._heartbeat, self._monitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.hub.close()
        await self.broker.close()
        if self.tracing is not None:
            await self.tracing.close()
        self.metrics.stop_counting()

    # --- one client ---------------------------------------------------------------------

    async def serve(self, request: web.Request, params: ConnectParams) -> web.WebSocketResponse:
        """Run one WebSocket session: welcome, replay, then the client's frames until it ends."""
        cfg = self.config
        ws = web.WebSocketResponse(
            compress=False,  # permessage-deflate costs ~100 KiB per client; PROTOCOL.md needs none
            max_msg_size=cfg.max_frame + 1,  # aiohttp refuses len >= max_msg_size
            autoping=False,  # pings and pongs are handled below and by heartbeat.py
            timeout=DRAIN_CLOSE_GRACE,
        )
        await ws.prepare(request)
        transport = request.transport
        if transport is None:  # the client went away during the handshake
            return ws
        conn = Connection(
            ws,
            transport,
            params.room,
            params.name,
            cfg.send_buffer,
            heartbeat=cfg.heartbeat,
            on_ended=self.metrics.disconnected,
        )
        self.metrics.upgrade("accepted")
        self.metrics.connected_users.inc()
        try:
            try:
                await self.hub.attach(conn)
                await self._welcome(ws, conn, params)
            except BrokerUnavailable:
                conn.mark_ended("error")
                await ws.close(code=CLOSE_TRY_AGAIN, message=b"broker unavailable")
                return ws
            except ConnectionResetError:  # the client left during its welcome or replay
                return ws
            await self._receive(ws, conn)
        finally:
            self.hub.detach(conn)
            conn.closed()
            self.metrics.connected_users.dec()
            conn.mark_ended("client")  # unless the server ended it first
            if self.draining and self.hub.connection_count == 0:
                self._all_closed.set()
        return ws

    async def _welcome(
        self, ws: web.WebSocketResponse, conn: Connection, params: ConnectParams
    ) -> None:
        conn.forget_held_presence()
        members, count = await self.broker.presence.members(
            params.room, self.config.presence_limit, params.name
        )
        welcome = encode_welcome(params.room, params.name, members, count, self._limits)
        await ws.send_frame(welcome, WSMsgType.TEXT)
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
                await ws.send_frame(frame, WSMsgType.TEXT)
            if history.messages:
                watermark = history.messages[-1].id
            elif newest.messages:
                watermark = newest.messages[-1].id
        conn.go_live(watermark)

    async def _receive(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(cfg.rate, cfg.burst, loop.time())
        tracing = self.tracing
        async for msg in ws:
            received = conn.last_seen = loop.time()
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
                continue
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                if msg.type is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                    conn.mark_ended("error")  # a protocol error, a frame too big (1009)
                continue  # a pong: last_seen is all it is for; errors end the loop
            if not bucket.take(loop.time()):
                self._error(conn, "rate_limited", f"more than {cfg.rate:g} frames/s; slow down")
                if bucket.rejected_in_a_row >= 3 * cfg.burst:
                    conn.mark_ended("rate_limit_abuse")
                    conn.closing = True
                    await ws.close(code=CLOSE_POLICY, message=b"rate limit abuse")
                    break
                continue
            if msg.type is WSMsgType.BINARY:
                self._error(conn, "bad_type", "binary frames are not accepted; send JSON text")
                continue
            try:
                request = parse_client_frame(msg.data, cfg.max_text)
            except ProtocolError as exc:
                self._error(conn, exc.code, exc.message)
                continue
            draft = Draft(conn.name, request.text, request.nonce)
            try:
                if tracing is None:
                    published = await self.broker.publish(conn.room, draft)
                else:
                    published = await tracing.publish(self.broker, conn.room, draft)
            except BrokerUnavailable:
                self._error(conn, "unavailable", "the message broker is unreachable; retry later")
                continue
            bucket.accepted()
            if published.duplicate:
                conn.send(ws_text_frame(encode_message(published.message)))
            else:
                self.metrics.messages.inc()
                self.metrics.message_latency.observe(loop.time() - received)

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
