"""One client's messages, handled in the order they came, with no task while the client is idle.

The socket (websocket.py) calls `Session` for every message. What a message means is the
handler's business (node.py): it answers at once, or returns something to await (the publish).
Until that is done, later messages wait here and the socket is not read, so a client is served
one message at a time, as an `async for` loop over its socket would, without a task per client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from typing import Protocol as Interface

from webchat.connection import Connection
from webchat.ratelimit import TokenBucket
from webchat.websocket import ServerSocket

# Started only in the task that awaits it, so nothing is left un-awaited if that task is cancelled.
Pending = Callable[[], Awaitable[None]]


class Handler(Interface):
    def handle_message(
        self, conn: Connection, bucket: TokenBucket, data: str | bytes
    ) -> Pending | None:
        """Act on one message; return what must be awaited before the next one, if anything."""

    def handle_control(self, conn: Connection, bucket: TokenBucket, pong: bool) -> bool:
        """A ping or pong came: whether it is accepted (a ping is then answered)."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` in a task the handler owns (cancelled when it shuts down)."""

    def session_ended(self, conn: Connection) -> None:
        """The client's socket is gone."""


class Session(TokenBucket):
    """The websocket.Listener of one connection, and its rate limit: the bucket that the
    handler is given is the session itself (one object fewer per connection for the garbage
    collector to go through; docs/performance.md, "Garbage")."""

    __slots__ = ("_backlog", "_conn", "_handler", "_socket")

    def __init__(
        self,
        handler: Handler,
        conn: Connection,
        socket: ServerSocket,
        rate: float,
        burst: int,
        now: float,
    ) -> None:
        super().__init__(rate, burst, now)
        self._handler = handler
        self._conn = conn
        self._socket = socket
        self._backlog: deque[str | bytes] | None = None  # while a message is being awaited

    def on_activity(self) -> None:
        self._conn.last_seen = asyncio.get_running_loop().time()

    def on_message(self, data: str | bytes) -> None:
        if self._conn.closing:
            return
        if self._backlog is not None:
            self._backlog.append(data)
            return
        pending = self._handler.handle_message(self._conn, self, data)
        if pending is not None:
            self._backlog = deque()
            self._socket.pause_reading()
            self._handler.spawn(self._finish(pending))

    def on_control(self, pong: bool) -> bool:
        # Charged when it comes, also while earlier messages wait in the backlog: they were
        # read in the same chunk, and the count of tokens spent is the same either way.
        if self._conn.closing:
            return False  # nothing more is answered
        return self._handler.handle_control(self._conn, self, pong)

    async def _finish(self, pending: Pending) -> None:
        """Await `pending`, then handle the messages that came meanwhile, in order."""
        conn, backlog = self._conn, self._backlog
        assert backlog is not None
        try:
            await pending()
            while backlog and not conn.closing:
                then = self._handler.handle_message(conn, self, backlog.popleft())
                if then is not None:
                    await then()
        finally:
            self._backlog = None
            self._socket.resume_reading()

    def on_closing(self, failed: bool) -> None:
        if failed:
            self._conn.mark_ended("error")  # a protocol error, a frame too big (1009)
        self._conn.closing = True

    def on_closed(self) -> None:
        self._handler.session_ended(self._conn)
