"""This process's rooms and connections: subscription ref-counting, presence grace, fan-out.

The broker calls `on_messages`/`on_presence`; each message is encoded once and the same bytes
are written to every local member without awaiting any socket (see connection.py).

Each batch is measured once after its writes (metrics.delivered: latency per message, not per
recipient) and, for sampled messages, traced by a CONSUMER span around the writes.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from webchat.broker.base import Broker, BrokerUnavailable, Message, NameTaken, PresenceEvent
from webchat.cancelling import cancel_until_done
from webchat.connection import CLOSE_TRY_AGAIN, Batch, Connection
from webchat.metrics import Metrics
from webchat.protocol import encode_message, encode_presence, ws_text_frame

if TYPE_CHECKING:
    from webchat.tracing import Tracing

log = logging.getLogger(__name__)

# A room sends presence frames at most this often (s); what comes meanwhile waits and goes in
# one write per member. A lone join or leave goes out at once.
PRESENCE_INTERVAL = 0.5


class Room:
    __slots__ = (
        "clock",
        "conns",
        "grace",
        "holders",
        "joining",
        "lock",
        "names",
        "presence",
        "presence_next",
        "present",
        "subscribed",
    )

    def __init__(self) -> None:
        # Local connections, in the order they came, each with the room's clock then.
        self.conns: dict[Connection, int] = {}
        self.names: Counter[str] = Counter()  # local connections per name
        self.present: set[str] = set()  # names this node has joined in presence (until leave)
        self.grace: dict[str, asyncio.TimerHandle] = {}  # names whose last connection left
        self.holders: dict[str, str] = {}  # holder of each name connected or present here
        # A name's presence join in flight: other connections of the name wait for its
        # outcome (None, or the error) before their welcome.
        self.joining: dict[str, asyncio.Future[Exception | None]] = {}
        self.lock = asyncio.Lock()  # serialises subscribe/unsubscribe of this room
        self.subscribed = False
        # Presence frames waiting to go out together: (clock, name, frame); and when (loop
        # time) the room may send presence frames again. The clock counts attaches and
        # presence events, so a frame goes only to connections that were there before it.
        self.presence: list[tuple[int, str, bytes]] | None = None
        self.presence_next = 0.0
        self.clock = 0

    @property
    def idle(self) -> bool:
        return not self.conns and not self.grace and not self.subscribed

    def forget_holder(self, name: str) -> None:
        """Drop the name's holder once nothing here holds the name any more."""
        if name not in self.names and name not in self.present and name not in self.joining:
            self.holders.pop(name, None)


class Hub:
    """Rooms of this process. Presence frames go only to rooms of at most `presence_limit` names."""

    def __init__(
        self,
        broker: Broker,
        presence_grace: float,
        presence_limit: int,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self._broker = broker
        self._metrics = metrics
        self._tracing = tracing
        self._grace = presence_grace
        self._presence_limit = presence_limit
        self._rooms: dict[str, Room] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- membership ---------------------------------------------------------------------

    @property
    def connections(self) -> list[Connection]:
        return [conn for room in self._rooms.values() for conn in room.conns]

    @property
    def active_rooms(self) -> int:
        """Rooms with at least one local connection."""
        return sum(1 for room in self._rooms.values() if room.conns)

    @property
    def connection_count(self) -> int:
        return sum(len(room.conns) for room in self._rooms.values())

    async def holder(self, room_name: str, name: str) -> str | None:
        """Who holds `name` in the room now (here or on any node), or None: a read only."""
        room = self._rooms.get(room_name)
        if room is not None and name in room.holders:
            return room.holders[name]
        return await self._broker.presence.holder(room_name, name)

    async def attach(self, conn: Connection) -> None:
        """Add a connection (it holds deliveries until go_live); subscribe and join as needed.

        Raises NameTaken if the name is present under another holder (here or on any node),
        BrokerUnavailable if the room cannot be subscribed or joined; either way the
        connection is detached again.
        """
        room = self._rooms.get(conn.room)
        if room is None:
            room = self._rooms[conn.room] = Room()
        held_by = room.holders.get(conn.name)
        if held_by is not None and held_by != conn.holder:
            raise NameTaken(f"{conn.name!r} is held by another key in {conn.room}")
        room.holders[conn.name] = conn.holder
        room.clock += 1
        room.conns[conn] = room.clock
        room.names[conn.name] += 1
        timer = room.grace.pop(conn.name, None)
        if timer is not None:
            timer.cancel()  # back within the grace period: no leave, no join
        try:
            if not room.subscribed:
                async with room.lock:
                    if not room.subscribed and room.conns:
                        await self._broker.subscribe(conn.room)
                        room.subscribed = True
            await self._join(room, conn)
        except BaseException:
            self.detach(conn)
            raise

    async def _join(self, room: Room, conn: Connection) -> None:
        """Make sure the name is present, joining it if no connection here has."""
        name = conn.name
        if name in room.present:
            return
        pending = room.joining.get(name)
        if pending is not None:  # another connection of the name is joining it: its outcome
            failed = await asyncio.shield(pending)
            if isinstance(failed, NameTaken):
                raise NameTaken(str(failed))
            if failed is not None:
                raise BrokerUnavailable(f"joining {conn.room} failed: {failed}")
            return
        outcome = room.joining[name] = asyncio.get_running_loop().create_future()
        error: Exception | None = BrokerUnavailable("the joining connection went away")
        try:
            await self._broker.presence.join(conn.room, name, conn.holder)
            room.present.add(name)
            error = None
        except Exception as exc:
            error = exc
            raise
        finally:
            del room.joining[name]
            outcome.set_result(error)

    def detach(self, conn: Connection) -> None:
        """Remove a connection; its name leaves after the grace period if it was the last."""
        room = self._rooms.get(conn.room)
        if room is None or conn not in room.conns:
            return
        del room.conns[conn]
        room.names[conn.name] -= 1
        if room.names[conn.name] <= 0:
            del room.names[conn.name]
            if conn.name in room.present:
                loop = asyncio.get_running_loop()
                room.grace[conn.name] = loop.call_later(
                    self._grace, self._grace_over, conn.room, conn.name
                )
            else:
                room.forget_holder(conn.name)
        if not room.conns:
            self._spawn(self._release(conn.room))

    def _grace_over(self, room_name: str, name: str) -> None:
        room = self._rooms.get(room_name)
        if room is None or room.grace.pop(name, None) is None:
            return
        room.present.discard(name)
        room.forget_holder(name)
        self._spawn(self._broker.presence.leave(room_name, name))
        if room.idle:
            del self._rooms[room_name]

    async def _release(self, room_name: str) -> None:
        room = self._rooms.get(room_name)
        if room is None:
            return
        async with room.lock:
            if room.conns or not room.subscribed:
                return
            room.subscribed = False
            await self._broker.unsubscribe(room_name)
        if room.idle and self._rooms.get(room_name) is room:
            del self._rooms[room_name]

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]  # any awaitable from this module
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background room task failed")

    async def close(self) -> None:
        """Leave every room this process still holds, then stop background tasks.

        The leaves go together (a broker may batch them: one call per room, not per name).
        """
        leaves: list[tuple[str, str]] = []
        for room_name, room in list(self._rooms.items()):
            for name in list(room.present):
                timer = room.grace.pop(name, None)
                if timer is not None:
                    timer.cancel()
                leaves.append((room_name, name))
        left = await asyncio.gather(
            *(self._broker.presence.leave(room, name) for room, name in leaves),
            return_exceptions=True,
        )
        for (room_name, name), outcome in zip(leaves, left, strict=True):
            if isinstance(outcome, Exception):
                log.warning("could not announce leave of %s in %s", name, room_name)
        # Cancelled until they end: a leave inside a broker call can swallow one cancel.
        await cancel_until_done(list(self._tasks), "hub tasks")

    # --- events from the broker -------------------------------------------------------

    def on_messages(self, room_name: str, messages: Sequence[Message]) -> None:
        room = self._rooms.get(room_name)
        if room is None or not room.conns:
            return
        if room.presence:  # announced before these messages: sent before them
            self._send_presence(room_name, room)
        batch = Batch(messages, [ws_text_frame(encode_message(m)) for m in messages])
        recipients = len(room.conns)
        tracing = self._tracing
        spans = tracing.start_delivery(room_name, messages, recipients) if tracing else None
        for conn in room.conns:
            conn.deliver(batch)
        if spans:
            tracing.end_delivery(spans)  # type: ignore[union-attr]  # spans imply tracing
        self._metrics.delivered(messages, recipients)

    def on_gap(self, room_name: str) -> None:
        """Some messages will never arrive live: close the room's clients with 1013, so they
        resume with `since` and the replay tells them with a `gap` frame."""
        room = self._rooms.get(room_name)
        for conn in list(room.conns) if room is not None else []:
            conn.close(CLOSE_TRY_AGAIN, "messages were missed: reconnect with since", why="gap")

    def on_presence(self, event: PresenceEvent) -> None:
        """Queue the frame. A room sends its presence frames at once, then at most every
        PRESENCE_INTERVAL, all that came meanwhile in one write per member: in a storm of
        joins and leaves a write per event per member would cost more than the rest."""
        if event.count > self._presence_limit:
            return
        room = self._rooms.get(event.room)
        if room is None or len(room.names) > self._presence_limit:
            return  # more names here alone than the limit: the room is past it (PROTOCOL.md)
        frame = ws_text_frame(encode_presence(event.room, event.event, event.name))
        if room.presence is None:
            room.presence = []
            loop = asyncio.get_running_loop()
            delay = room.presence_next - loop.time()
            if delay > 0:
                loop.call_later(delay, self._send_presence, event.room, room)
            else:
                loop.call_soon(self._send_presence, event.room, room)
        room.clock += 1
        room.presence.append((room.clock, event.name, frame))

    def _send_presence(self, room_name: str, room: Room) -> None:
        pending, room.presence = room.presence, None
        if not pending or self._rooms.get(room_name) is not room:
            return
        if len(room.names) > self._presence_limit:
            # The room grew past the limit while these waited (an event's count is the
            # broker's when it happened; in a storm that is long before it reaches us).
            return
        room.presence_next = asyncio.get_running_loop().time() + PRESENCE_INTERVAL
        about = {name for _, name, _ in pending}
        joined: dict[int, bytes] = {}  # frames from the i-th on, joined
        for conn, attached in room.conns.items():
            # The frames of events after the connection came (its welcome has the others),
            # none about its own name.
            start = bisect.bisect_right(pending, attached, key=lambda item: item[0])
            if start == len(pending):
                continue
            if conn.name not in about:
                data = joined.get(start)
                if data is None:
                    data = joined[start] = b"".join(frame for _, _, frame in pending[start:])
            else:
                data = b"".join(f for _, name, f in pending[start:] if name != conn.name)
            if data:
                conn.send(data)
