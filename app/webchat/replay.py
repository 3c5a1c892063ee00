"""A new connection's first frames (welcome, `gap`, replayed messages), written together.

In a reconnect storm every client of a room resumes after the same message, and the broker
reads its replay once for all of them (redis_reads.py): `MessageFrames` encodes each replayed
message once, not once per client. `ReplayWriter` puts the welcome, the replay and the live
frames held meanwhile (connection.go_live) in as few writes as the send buffer allows: one
send per resume where there was one per frame.
"""

from __future__ import annotations

import asyncio
from typing import Final

from webchat.broker.base import Message
from webchat.connection import Connection
from webchat.protocol import encode_message, ws_text_frame

# Frames kept by MessageFrames; past this it starts again (a storm's replays are recent ones).
FRAMES_KEPT: Final = 4096


class MessageFrames:
    """The WebSocket frame of a message, encoded once per process while it is being replayed.

    Keyed by room and id; a hit is used only for the same message (the very object, as the
    clients of a shared read have it, or an equal one), so an id seen again with other
    content (a room's stream expired and restarted behind a clock step) is encoded anew.
    """

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: dict[tuple[str, str], tuple[Message, bytes]] = {}

    def __call__(self, message: Message) -> bytes:
        key = (message.room, message.id)
        known = self._frames.get(key)
        if known is not None and (known[0] is message or known[0] == message):
            return known[1]
        if len(self._frames) >= FRAMES_KEPT:
            self._frames.clear()
        frame = ws_text_frame(encode_message(message))
        self._frames[key] = (message, frame)
        return frame


class ReplayWriter:
    """Frames for one connection, written in pieces of at most `chunk` bytes, each once the
    send buffer has room for it (Connection.write_paced); the last piece goes out with the
    held live frames (`finish`)."""

    __slots__ = ("_chunk", "_conn", "_frames", "_size")

    def __init__(self, conn: Connection, chunk: int) -> None:
        self._conn = conn
        self._chunk = chunk
        self._frames: list[bytes] = []
        self._size = 0

    def add(self, frame: bytes) -> None:
        """Queue a frame (the welcome, a `gap`); written with the next piece."""
        self._frames.append(frame)
        self._size += len(frame)

    async def add_paced(self, frame: bytes) -> bool:
        """Queue a replayed frame, writing the piece before it if this one would not fit in
        it. False once the connection is closing: stop replaying."""
        if self._frames and self._size + len(frame) > self._chunk and not await self.flush():
            return False
        self.add(frame)
        return True

    async def flush(self) -> bool:
        """Write what is queued, paced; yields to others once written. False if closing."""
        if not self._frames:
            await asyncio.sleep(0)  # a page read without waiting (memory broker): others' turn
            return not self._conn.closing
        data = b"".join(self._frames)
        self._frames, self._size = [], 0
        return await self._conn.write_paced(data)

    async def finish(self, watermark: str | None) -> None:
        """Write the rest and go live: one write with the held frames, unless the send buffer
        has no room for the rest now (a long replay to a slow reader): then paced first."""
        conn = self._conn
        rest = b"".join(self._frames)
        self._frames, self._size = [], 0
        if rest and not conn.has_room(len(rest)):
            if not await conn.write_paced(rest):
                return
            rest = b""
        conn.go_live(watermark, rest)
