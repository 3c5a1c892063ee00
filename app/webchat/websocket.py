"""One client's WebSocket after the upgrade: an asyncio.Protocol around websockets' sans-I/O core.

No task and no reader, writer or queue objects per connection: the bytes the socket reads go
through websockets' `Protocol` (frame parsing, unmasking, the size limit -> 1009, control frames,
automatic pongs, the closing handshake), messages are put together from their fragments, text is
checked to be UTF-8 (else 1007), and each message is handed to a `Listener` by a plain call.
Server frames are written by the caller as pre-built bytes (connection.py); this module writes
only what websockets answers by itself (pongs, close frames).

An idle socket holds no websockets `Protocol`: between messages one is as good as a new one, so
a socket borrows one for each read (`Parsers`) and gives it back once it is between messages
again. Kept per socket, it was 8 of the ~24 objects the garbage collector tracks per idle
connection, and ~1.2 KiB of its memory (docs/performance.md, "Garbage").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from types import GeneratorType
from typing import Final, cast
from typing import Protocol as Interface

from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.streams import StreamReader

# websockets logs every connection it closes at INFO, which would be a line per client here.
_FRAMES_LOG: Final = logging.getLogger("webchat.websocket.frames")
_FRAMES_LOG.setLevel(logging.WARNING)

# Bytes a client may send before its welcome is written, read and kept; past this, reading waits.
EARLY_LIMIT: Final = 65536

_NORMAL_CLOSE: Final = Close(CloseCode.NORMAL_CLOSURE, "").serialize()

# The close codes with which websockets fails a connection the client broke (and 1011, a bug).
_FAILURES: Final = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.INVALID_DATA,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.INTERNAL_ERROR,
    }
)

# After websockets ends the connection (the client's close answered, or a protocol error), the
# client has this long to close its side before the socket is dropped; aiohttp waited as long.
CLOSE_TIMEOUT: Final = 2.0


def reset(transport: asyncio.Transport) -> None:
    """Drop a connection at once with a TCP reset.

    A plain close (asyncio's `abort` included) leaves what the kernel still holds unsent to
    be delivered before the FIN: to a client that does not read, megabytes kept for minutes.
    Lingering for 0 seconds makes the close a reset that discards them.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Gate(Interface):
    """The socket cap's count (listener.Gate)."""

    def left(self) -> None:
        """A socket it counted is closed."""


class _ServerProtocol(Protocol):
    """websockets' protocol, but pings are answered by ServerSocket, not automatically.

    PROTOCOL.md: every frame costs a rate-limit token, pings included, and a frame that finds
    the bucket empty gets `rate_limited` and nothing else, so no pong.
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PING:
            self.events.append(frame)  # all that Protocol does for a ping but the pong
            return
        if frame.opcode is Opcode.CLOSE and self.state is State.OPEN:
            # A client's close is answered 1000, as aiohttp answered it (websockets would echo
            # the client's code). The client's frame is checked first: a bad code or reason
            # still fails the connection (1002, 1007).
            Close.parse(frame.data)
            frame = Frame(Opcode.CLOSE, _NORMAL_CLOSE)
        super().recv_frame(frame)


# What websockets' parser waits in between two frames (Protocol.parse: `yield from at_eof()`).
_BETWEEN_FRAMES: Final = StreamReader.at_eof.__code__

# Idle protocols kept for the next read, per maximum size. One is in use at a time (a read is
# one call), a few more when a read makes another socket's read or close borrow one.
SPARES: Final = 4


class Parsers:
    """websockets protocols lent to the sockets of one maximum message size, a read at a time.

    A protocol that is open, between frames, with no fragmented message under way and nothing
    to hand over or send holds nothing of its connection's (its id is for logs, which are off
    here): a socket that got one back in that state gives it back, for any socket to use. One
    in any other state (a frame half read, a message in fragments, a close begun or failed)
    stays with its socket to the end.
    """

    __slots__ = ("_spare", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._spare: list[_ServerProtocol] = []

    @property
    def spare(self) -> tuple[Protocol, ...]:
        """The idle protocols kept now (no connection's)."""
        return tuple(self._spare)

    def take(self) -> _ServerProtocol:
        if self._spare:
            return self._spare.pop()
        return _ServerProtocol(
            Side.SERVER, state=State.OPEN, max_size=self.max_size, logger=_FRAMES_LOG
        )

    def give(self, ws: _ServerProtocol) -> bool:
        """Take `ws` back if it is as good as new (and there is room); whether it was."""
        waiting = cast("GeneratorType[None, None, None]", ws.parser).gi_yieldfrom
        if (
            ws.state is not State.OPEN
            or ws.current_size is not None
            or ws.events
            or ws.writes
            or getattr(waiting, "gi_code", None) is not _BETWEEN_FRAMES
        ):
            return False
        if len(self._spare) >= SPARES:
            ws.parser.close()  # its cycle (see connection_lost): freed now, not collected
        else:
            self._spare.append(ws)
        return True


@functools.cache
def parsers(max_size: int) -> Parsers:
    """The lender for sockets of `max_size` (one per size, shared by all of them)."""
    return Parsers(max_size)


class Listener(Interface):
    """What a socket tells its owner. Every method is called from the event loop, never awaited."""

    def on_activity(self) -> None:
        """The client sent something (any frame, pongs included)."""

    def on_message(self, data: str | bytes) -> None:
        """A whole message: `str` for a text message, `bytes` for a binary one."""

    def on_control(self, pong: bool) -> bool:
        """A ping (or a pong): whether the client may send it (a ping is then answered)."""

    def on_closing(self, failed: bool) -> None:
        """The closing handshake is over (or failed): write nothing more to the transport.

        `failed`: the client broke the protocol (websockets closed with 1002, 1007 or 1009).
        """

    def on_closed(self) -> None:
        """The TCP connection is gone. Called exactly once."""


class ServerSocket(asyncio.Protocol):
    """The server end of one WebSocket, from the 101 on (upgrade.py hands it the transport).

    Nothing is handled until `start`: the caller writes the welcome and replay first, and what
    the client sends meanwhile is kept (reading stops past EARLY_LIMIT bytes).
    """

    __slots__ = (
        "_close_timer",
        "_early",
        "_fragments",
        "_gate",
        "_listener",
        "_lost",
        "_opening",
        "_parsers",
        "_stopped",
        "_ws",
        "transport",
    )

    def __init__(self, max_size: int) -> None:
        self.transport: asyncio.Transport | None = None
        self._parsers = parsers(max_size)
        # websockets' protocol, while a read uses it or its state is the connection's own.
        self._ws: _ServerProtocol | None = None
        self._listener: Listener | None = None
        self._early = b""  # bytes that came before `start` (sent with the upgrade request)
        self._fragments: list[Frame] | None = None  # a message whose last frame is still due
        self._lost = False
        self._opening: asyncio.Task[None] | None = None
        self._stopped = False  # stop_reading: for good
        self._gate: Gate | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # --- the owner's side ---------------------------------------------------------------

    @property
    def lost(self) -> bool:
        """The TCP connection is gone."""
        return self._lost

    def opening(self, task: asyncio.Task[None]) -> None:
        """Cancel `task` (the welcome being written) if the client goes before `start`."""
        self._opening = task

    def start(self, listener: Listener) -> None:
        """Read from now on and hand everything to `listener` (even if the client is gone)."""
        self._opening = None
        if self._lost:
            listener.on_closed()  # and not kept: see connection_lost
            return
        self._listener = listener
        transport = self.transport
        assert transport is not None
        early, self._early = self._early, b""
        if transport.is_closing():  # dropped, or EOF before the welcome: connection_lost is due
            return
        if len(early) > EARLY_LIMIT:
            transport.resume_reading()
        self._send()  # a close queued before the upgrade
        if early:
            self.data_received(early)

    def pause_reading(self) -> None:
        """Stop reading the socket (the owner is busy with earlier messages)."""
        if self.transport is not None and not self._lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if (
            self.transport is not None
            and not self._lost
            and self._listener is not None
            and not self._stopped
        ):
            self.transport.resume_reading()

    def stop_reading(self) -> None:
        """Read nothing more, ever: a flooding client is closed without reading its reply."""
        self._stopped = True
        if self.transport is not None and not self._lost:
            self.transport.pause_reading()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake: a close frame after everything already buffered.

        The connection ends when the client answers (or closes); the caller bounds the wait.
        Before the upgrade, the close frame is the first thing written after the 101.
        """
        if self._lost:
            return
        ws = self._protocol()
        if ws.state is State.OPEN:
            ws.send_close(code, reason)
            self._send()

    def hold(self, gate: Gate) -> None:
        """Keep a place under the socket cap (listener.py) until the connection is gone."""
        self._gate = gate

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        listener = self._listener
        if listener is None:
            self._early += data
            if len(self._early) > EARLY_LIMIT:
                assert self.transport is not None
                self.transport.pause_reading()
            return
        listener.on_activity()
        ws = self._protocol()
        ws.receive_data(data)
        # Messages first, in order, then what websockets answers (a close answer and the end
        # of the stream come after the replies to the messages before the close).
        for event in ws.events_received():
            # Only frames: the handshake (Request/Response events) was aiohttp's.
            if not self._frame(cast(Frame, event), listener, ws):
                break
        self._send()
        if self._parsers.give(ws):
            self._ws = None

    def eof_received(self) -> bool:
        if self._listener is None:
            return False  # gone before its welcome was written
        self._protocol().receive_eof()
        self._send(peer_gone=True)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._gate is not None:
            self._gate.left()
            self._gate = None
        # websockets' protocol is in two cycles of its own: its parser is a generator that
        # holds it, and the exception that stopped a parser (a client gone without a close)
        # holds the parser's frame. Broken here, reference counting frees the protocol when
        # the connection ends instead of the cyclic collector (docs/performance.md, "Garbage").
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.parser.close()
            ws.parser_exc = None
        listener, self._listener = self._listener, None
        if listener is not None:
            # Dropped first: the listener (Session) holds the Connection, which holds this
            # socket; once the socket is gone nothing must keep that cycle.
            listener.on_closed()
        elif self._opening is not None:
            self._opening.cancel()  # its end calls `start`, which reports the close

    # --- internals -----------------------------------------------------------------------

    def _protocol(self) -> _ServerProtocol:
        """websockets' protocol of this connection: its own, or one borrowed now."""
        ws = self._ws
        if ws is None:
            ws = self._ws = self._parsers.take()
        return ws

    def _frame(self, frame: Frame, listener: Listener, ws: _ServerProtocol) -> bool:
        """Pass on a finished message; False once the connection has failed (bad UTF-8)."""
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [frame]
                return True
            data = bytes(frame.data)
        elif opcode is Opcode.CONT:
            # websockets refuses a continuation frame without a first frame (1002).
            assert self._fragments is not None
            self._fragments.append(frame)
            if not frame.fin:
                return True
            fragments, self._fragments = self._fragments, None
            opcode = fragments[0].opcode
            data = b"".join(f.data for f in fragments)
        elif opcode is Opcode.PING or opcode is Opcode.PONG:
            allowed = listener.on_control(opcode is Opcode.PONG)
            if allowed and opcode is Opcode.PING and ws.state is State.OPEN:
                ws.send_pong(frame.data)
            return True
        else:
            return True  # close: websockets answers it
        if opcode is Opcode.BINARY:
            listener.on_message(data)
            return True
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            ws.fail(CloseCode.INVALID_DATA, f"text is not UTF-8 at byte {exc.start}")
            return False
        listener.on_message(text)
        return True

    def _send(self, *, peer_gone: bool = False) -> None:
        """Write what websockets wants sent; its end of stream means: half-close, then wait
        for the client to close its side (unless it has: then the transport closes now)."""
        transport, ws = self.transport, self._ws
        if transport is None or ws is None:
            return  # not upgraded yet (`start` sends it), or nothing to send
        for data in ws.data_to_send():
            if transport.is_closing():
                continue
            if data:
                transport.write(data)
                continue
            if self._listener is not None:
                close = ws.close_sent
                self._listener.on_closing(close is not None and close.code in _FAILURES)
            if peer_gone:
                continue
            if transport.can_write_eof():
                # Not close(): unread bytes (the rest of an oversized frame) would make the
                # kernel answer with a reset, which can destroy the close frame in flight.
                transport.write_eof()
            else:
                transport.close()
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT, reset, transport)
