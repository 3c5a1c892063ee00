"""One client's socket as the hub sees it: a bounded send buffer and the close rules.

Frames are written straight to the transport as pre-built bytes, never awaited: a client that
does not read fills its own buffer and is closed with 1013; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import random
import struct
import termios
from collections.abc import Callable, Sequence
from typing import Final

from webchat.broker.base import Message
from webchat.protocol import parse_id
from webchat.websocket import ServerSocket, reset

log = logging.getLogger(__name__)


def _unacknowledged(transport: asyncio.Transport) -> int:
    """Bytes not yet acknowledged by the peer: asyncio's buffer plus the kernel's send queue
    (Linux SIOCOUTQ); 0 once the socket is gone."""
    pending = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is None:
        return pending
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:  # closed meanwhile (fileno -1)
        return pending
    return pending + int(struct.unpack("i", queued)[0])


CLOSE_TRY_AGAIN: Final = 1013
CLOSE_RESTART: Final = 1012
CLOSE_POLICY: Final = 1008
CLOSE_TOKEN_EXPIRED: Final = 4001  # PROTOCOL.md 1.1: reconnect with a fresh token and since
SLOW_CLOSE_GRACE: Final = 5.0


class Batch:
    """Messages delivered together: their frames, and all of them as one buffer."""

    __slots__ = ("data", "frames", "messages")

    def __init__(self, messages: Sequence[Message], frames: list[bytes]) -> None:
        self.messages = messages
        self.frames = frames
        self.data = frames[0] if len(frames) == 1 else b"".join(frames)

    def after(self, watermark: tuple[int, int]) -> tuple[bytes, bool]:
        """The frames of messages newer than `watermark`, and whether there were any."""
        kept = [
            f for m, f in zip(self.messages, self.frames, strict=True) if parse_id(m.id) > watermark
        ]
        return b"".join(kept), bool(kept)


class Connection:
    """A joined client. Until `go_live`, deliveries are held so welcome and replay come first."""

    __slots__ = (
        "_abort_timer",
        "_held",
        "_held_bytes",
        "_limit",
        "_mark",
        "_on_ended",
        "_on_reset",
        "_transport",
        "_watermark",
        "_written",
        "closing",
        "ended_by",
        "expires",
        "holder",
        "last_seen",
        "name",
        "next_ping",
        "ping_pending",
        "room",
        "user",
        "ws",
    )

    def __init__(
        self,
        ws: ServerSocket,
        transport: asyncio.Transport,
        room: str,
        name: str,
        send_buffer: int,
        heartbeat: float,
        on_ended: Callable[[str], None],
        holder: str = "",
        on_reset: Callable[[], None] | None = None,
        user: str | None = None,
    ) -> None:
        self.ws = ws
        self.room = room
        # The presence member (protocol.member_key): the name, or in authenticated mode the
        # display name with the user's `sub`, so presence counts users, not display names.
        self.name = name
        self.holder = holder  # who may use `name`: see protocol.ConnectParams
        self.user = user  # the token's `sub` (authenticated mode), else None
        # Loop time at which its token is no longer accepted (heartbeat.py closes it 4001);
        # None in anonymous mode.
        self.expires: float | None = None
        self.closing = False
        # Why it ended (a metrics.DISCONNECT_REASONS value), set once by `mark_ended`.
        self.ended_by: str | None = None
        self._on_ended = on_ended
        # Called once the server drops the socket (what it held unsent is freed then).
        self._on_reset = on_reset
        self._transport = transport
        self._limit = send_buffer
        self._held: list[Batch | bytes] | None = []
        self._held_bytes = 0
        self._watermark: tuple[int, int] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._written = 0  # bytes handed to the transport, ever (for the age of unsent data)
        # (time, bytes written by then) when unsent data was last seen with older data sent.
        self._mark: tuple[float, int] | None = None
        now = asyncio.get_running_loop().time()
        self.last_seen = now  # when the client last sent any frame (pongs included)
        self.next_ping = now + random.uniform(0, heartbeat)  # a random phase spreads pings
        # The heartbeat pinged and no pong came yet: the pong answering it costs no token (a
        # client sending at its rate must not be limited for the server's keep-alive).
        self.ping_pending = False

    # --- writing ----------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Write one encoded server frame (already WebSocket-framed) if the buffer allows."""
        if self.closing:
            return
        if self._held is not None:
            self._hold(frame, len(frame))
        else:
            self._write(frame)

    def deliver(self, batch: Batch) -> None:
        """Write a batch of room messages; called by the hub's fan-out, never awaited."""
        if self.closing:
            return
        if self._held is not None:
            self._hold(batch, len(batch.data))
            return
        if self._watermark is None:  # the fan-out's common case, without a call
            self._write(batch.data)
            return
        data = self._live(batch)
        if data:
            self._write(data)

    def _live(self, batch: Batch) -> bytes:
        """What of `batch` goes to the client: past the replay's watermark, if any."""
        if self._watermark is None:
            return batch.data
        data, newer = batch.after(self._watermark)
        if newer:
            self._watermark = None
        return data

    @property
    def buffered(self) -> int:
        """Bytes held for this client: unsent in its socket buffer, or held before go_live."""
        return self._transport.get_write_buffer_size() + self._held_bytes

    async def write_paced(self, data: bytes) -> bool:
        """Write replay frames (history on connect) once the send buffer has room for them.

        A replay may be far larger than the send buffer; it goes out as fast as the client
        reads, never holding more than `send_buffer` unsent bytes. A client that does not read
        is closed by the send-buffer age check (`check_age`, from the heartbeat sweep) while
        this waits. Returns False once the connection is closing: stop replaying.
        """
        delay = 0.005
        transport = self._transport
        while not self.closing and not transport.is_closing():
            unsent = transport.get_write_buffer_size()
            if not unsent or unsent + len(data) <= self._limit:
                self._write(data)  # a frame larger than the whole buffer still overflows
                # Others' turn: a replay to a fast reader is many writes, none of them awaited.
                await asyncio.sleep(0)
                return not self.closing
            await asyncio.sleep(delay)  # polled: asyncio has no public drain event here
            delay = min(2 * delay, 0.1)
        return False

    def check_age(self, now: float, limit: float) -> None:
        """Close the connection (1013) if unsent data has waited longer than `limit` seconds.

        Called once per heartbeat sweep, not per write: it remembers when unsent data was seen
        and how many bytes had been written by then; once those bytes are sent the clock
        starts again. So a slow reader is found within `limit` plus a sweep, however quiet
        its room, and one that keeps reading is never closed.
        """
        if self.closing:
            return
        unsent = self._transport.get_write_buffer_size()
        if not unsent:
            self._mark = None
            return
        mark = self._mark
        if mark is None or self._written - unsent >= mark[1]:
            self._mark = (now, self._written)
        elif now - mark[0] > limit:
            self.close(CLOSE_TRY_AGAIN, "too slow: reconnect with since", why="slow_client")

    def forget_held_presence(self) -> None:
        """Drop held presence frames (and pings): the welcome about to be built includes them.

        In a burst of joins each newcomer would otherwise queue a frame for every join before
        its own welcome, N^2 frames in all.
        """
        if self._held:
            batches = [item for item in self._held if isinstance(item, Batch)]
            self._held = list(batches)
            self._held_bytes = sum(len(batch.data) for batch in batches)

    def has_room(self, size: int) -> bool:
        """Whether `size` more bytes fit in the send buffer now (else write_paced waits)."""
        unsent = self._transport.get_write_buffer_size()
        return not unsent or unsent + size <= self._limit

    def go_live(self, replayed_up_to: str | None, first: bytes = b"") -> None:
        """Welcome and replay are written (but `first`, their last frames): write `first`,
        then release held frames, dropping replayed messages, all in one write.

        Until a message newer than `replayed_up_to` arrives, deliveries are filtered, since the
        broker may still deliver messages that the replay already contained.
        """
        held, self._held, self._held_bytes = self._held or [], None, 0
        if replayed_up_to is not None:
            self._watermark = parse_id(replayed_up_to)
        if self.closing:
            return
        parts = [first]
        for item in held:
            parts.append(self._live(item) if isinstance(item, Batch) else item)
        data = b"".join(parts)
        if data:
            self._write(data)

    def _hold(self, item: Batch | bytes, size: int) -> None:
        assert self._held is not None
        self._held.append(item)
        self._held_bytes += size
        if self._held_bytes > self._limit:
            self.overflow()

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() + len(data) > self._limit:
            self.overflow()
            return
        self._written += len(data)
        transport.write(data)

    # --- closing ----------------------------------------------------------------------

    def overflow(self) -> None:
        """The client cannot keep up: stop sending, queue a 1013 close, drop it after 5 s."""
        if self.closing:
            return
        self.close(CLOSE_TRY_AGAIN, "too slow: reconnect with since", why="slow_client")

    def close(
        self, code: int, reason: str, grace: float = SLOW_CLOSE_GRACE, *, why: str = "error"
    ) -> None:
        """Queue a close frame; drop the socket if the handshake takes longer than `grace`.

        `why` is the disconnection reason the metrics count (metrics.DISCONNECT_REASONS).
        """
        if self.closing:
            return
        self.closing = True
        self.mark_ended(why)
        self._held = None
        loop = asyncio.get_running_loop()
        self._abort_timer = loop.call_later(grace, self._reset)
        self.ws.close(code, reason)

    def close_abuser(self, code: int, reason: str, *, why: str) -> None:
        """Close without reading on: stop reading the socket, write a close frame after what
        is queued, wait (in a task) until the client's TCP stack has acknowledged it all (at
        most the grace), then drop the socket.

        For a client that floods: waiting for its close reply, as `close` does, would read
        and parse its flood meanwhile. The acknowledgement matters because closing a socket
        with unread input sends a reset, which would discard a close frame not yet sent.
        Everything up to the close frame happens before this returns, so the frames the
        socket has already read and not yet handled get no answer.
        """
        if self.closing:
            return
        self.closing = True
        self.mark_ended(why)
        self._held = None
        if self._transport.is_closing():
            return
        self.ws.stop_reading()  # what it sends from now on is not even read
        self.ws.close(code, reason)  # tiny: past the buffer's bound is fine
        task = asyncio.get_running_loop().create_task(self._drop_when_acknowledged())
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)

    async def _drop_when_acknowledged(self) -> None:
        transport = self._transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SLOW_CLOSE_GRACE
        delay = 0.002
        while _unacknowledged(transport) and loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.1)
        # Dropped here, not after the closing handshake: waiting for the client's close
        # frame would read (and parse) the flood again.
        self._reset()

    def drop(self) -> None:
        """The client is gone without closing (no pong): free the socket now."""
        self.mark_ended("timeout")
        self.closing = True
        self._held = None
        self._reset()

    def _reset(self) -> None:
        reset(self._transport)
        if self._on_reset is not None:
            self._on_reset()

    def mark_ended(self, why: str) -> None:
        """Record why the connection ends, once: the first reason given wins.

        The server's reasons are recorded when it decides (a slow client's socket may take
        5 s more to go), the client's when the session ends (node.py records "client" last).
        """
        if self.ended_by is None:
            self.ended_by = why
            self._on_ended(why)

    def closed(self) -> None:
        """The socket is gone: cancel the abort timer, unless frames are still unsent.

        (With the socket gone its buffer is empty; the check keeps the timer if a caller ever
        ends the session while the transport still flushes, to drop it at the deadline.)
        """
        if self._abort_timer is not None and not self._transport.get_write_buffer_size():
            self._abort_timer.cancel()


_closing_tasks: set[asyncio.Task[None]] = set()  # abusers' closes, until their sockets drop
