"""In-process broker: the embedded default when no Redis URL is configured.

Choose it for a single process (`make run`, development, a small deployment): history and
presence live in this process's memory and are lost when it exits, and other processes cannot
see them. It follows the same contract as the Redis broker, including delivery through the
event handler (never directly to sockets), so one process and many behave alike; like Redis
keys, a room's history and nonces are forgotten `room_ttl` after its last message or member.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence

from webchat.broker.base import (
    Draft,
    EventHandler,
    History,
    Message,
    NameTaken,
    PresenceEvent,
    Published,
    RoomInfo,
    dedupe_seconds,
    rank_rooms,
)
from webchat.protocol import parse_id

log = logging.getLogger(__name__)


def select_history(messages: Sequence[Message], since: str | None, limit: int) -> History:
    """PROTOCOL.md's history rule over one room's messages, oldest first."""
    if since is None:
        return History(list(messages[-limit:]) if messages else [], gap=False)
    key = parse_id(since)
    if not messages or key < parse_id(messages[0].id):
        return History(list(messages[:limit]), gap=True)
    low = _bisect(messages, key, strictly_after=True)
    return History(list(messages[low : low + limit]), gap=False)


def select_before(messages: Sequence[Message], before: str, limit: int) -> History:
    """The newest `limit` messages older than `before`, oldest first (a page of scroll-back)."""
    end = _bisect(messages, parse_id(before, "before"), strictly_after=False)
    return History(list(messages[max(0, end - limit) : end]), gap=False)


def _bisect(messages: Sequence[Message], key: tuple[int, int], *, strictly_after: bool) -> int:
    """The index of the first message after `key` (strictly_after) or at or after it."""
    low, high = 0, len(messages)
    while low < high:
        mid = (low + high) // 2
        mid_key = parse_id(messages[mid].id)
        if mid_key < key or (strictly_after and mid_key == key):
            low = mid + 1
        else:
            high = mid
    return low


class IdClock:
    """Stream ids `<ms>-<seq>` that only grow, as Redis assigns them."""

    def __init__(self) -> None:
        self._ms = 0
        self._seq = 0

    def next(self, now_ms: int) -> tuple[str, int]:
        if now_ms > self._ms:
            self._ms, self._seq = now_ms, 0
        else:
            self._seq += 1
        return f"{self._ms}-{self._seq}", self._ms


class MemoryPresence:
    """Room membership counted per name; one process is the whole world here."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._rooms: dict[str, Counter[str]] = {}
        self._holders: dict[str, dict[str, str]] = {}  # room -> name -> holder, while present

    async def join(self, room: str, name: str, holder: str = "") -> None:
        holders = self._holders.setdefault(room, {})
        if holders.setdefault(name, holder) != holder:
            raise NameTaken(f"{name!r} is held by another key in {room}")
        names = self._rooms.get(room)
        if names is None:
            names = self._rooms[room] = Counter()
            self._broker.occupied(room)
        names[name] += 1
        if names[name] == 1:
            self._broker.announce(PresenceEvent(room, "join", name, len(names)))

    async def holder(self, room: str, name: str) -> str | None:
        return self._holders.get(room, {}).get(name)

    def has_members(self, room: str) -> bool:
        return room in self._rooms

    def counts(self) -> dict[str, int]:
        """Names present per room."""
        return {room: len(names) for room, names in self._rooms.items()}

    async def leave(self, room: str, name: str) -> None:
        names = self._rooms.get(room)
        if not names or names[name] <= 0:
            return
        names[name] -= 1
        if names[name] == 0:
            del names[name]
            holders = self._holders.get(room, {})
            holders.pop(name, None)
            self._broker.announce(PresenceEvent(room, "leave", name, len(names)))
            if not names:
                del self._rooms[room]
                self._holders.pop(room, None)
                self._broker.vacated(room)

    async def members(self, room: str, limit: int, include: str) -> tuple[list[str], int]:
        names = self._rooms.get(room, Counter())
        listed = [include] if include in names else []
        for name in names:
            if len(listed) >= limit:
                break
            if name != include:
                listed.append(name)
        return listed, len(names)


class MemoryBroker:
    """Messages, history and presence in this process; see the module docstring."""

    def __init__(self, history_size: int = 1000, room_ttl: float = 7 * 24 * 3600.0) -> None:
        self._history_size = history_size
        self._room_ttl = room_ttl
        self._dedupe = dedupe_seconds(room_ttl)
        self._rooms: dict[str, deque[Message]] = {}
        # Rooms with history and no member, by when they are forgotten (soonest first).
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None
        self._seen: OrderedDict[tuple[str, str, str], tuple[float, Message]] = OrderedDict()
        self._clock = IdClock()
        self._subscribed: set[str] = set()
        self._pending: dict[str, list[Message]] = {}
        self._handler: EventHandler | None = None
        self._presence = MemoryPresence(self)

    @property
    def presence(self) -> MemoryPresence:
        return self._presence

    @property
    def ready(self) -> bool:
        return self._handler is not None

    async def start(self, handler: EventHandler) -> None:
        self._handler = handler
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def close(self) -> None:
        self._handler = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)

    async def publish(self, room: str, draft: Draft) -> Published:
        now_ns = time.time_ns()
        now = now_ns / 1e9
        self._sweep(now)
        key = (room, draft.sender, draft.nonce) if draft.nonce is not None else None
        if key is not None:
            seen = self._seen.get(key)
            if seen is not None:
                await self._delivered()
                return Published(seen[1], duplicate=True)
        message_id, ts = self._clock.next(int(now * 1000))
        message = Message(
            message_id,
            room,
            draft.name,
            draft.text,
            ts,
            draft.nonce,
            draft.trace,
            accepted_us=now_ns // 1000,
            user=draft.user,
        )
        history = self._rooms.get(room)
        if history is None:
            history = self._rooms[room] = deque(maxlen=self._history_size)
        history.append(message)
        if not self._presence.has_members(room):
            self._touch(room, now)
        if key is not None:
            self._seen[key] = (now + self._dedupe, message)
        self._deliver(room, message)
        return Published(message, duplicate=False)

    async def history(self, room: str, since: str | None, limit: int) -> History:
        self._sweep(time.time())
        messages = self._rooms.get(room)
        return select_history(list(messages) if messages else [], since, limit)

    async def history_before(self, room: str, before: str, limit: int) -> History:
        self._sweep(time.time())
        messages = self._rooms.get(room)
        return select_before(list(messages) if messages else [], before, limit)

    async def rooms(self, limit: int) -> list[RoomInfo]:
        # One pass over every room this process knows: the node caches the answer, and one
        # process holds few enough rooms for that.
        self._sweep(time.time())
        counts = self._presence.counts()
        infos = [
            RoomInfo(room, counts.get(room, 0), messages[-1].ts if messages else None)
            for room, messages in self._rooms.items()
        ]
        infos += [RoomInfo(room, n, None) for room, n in counts.items() if room not in self._rooms]
        return rank_rooms(infos, int(time.time() * 1000), limit)

    async def _delivered(self) -> None:
        """Returns once the messages accepted so far are delivered: the flush scheduled for
        them runs first (call_soon keeps order)."""
        if self._pending:
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            loop.call_soon(done.set_result, None)
            await done

    def announce(self, event: PresenceEvent) -> None:
        if self._handler is not None and event.room in self._subscribed:
            self._handler.on_presence(event)

    def _deliver(self, room: str, message: Message) -> None:
        # Messages accepted in one loop iteration reach the hub as one batch, so it can write
        # them to each socket with one call, as a Redis reader draining its buffer would.
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.setdefault(room, []).append(message)

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        if self._handler is None:
            return
        for room, messages in pending.items():
            if room in self._subscribed:
                try:
                    self._handler.on_messages(room, messages)
                except Exception:  # one room's failure must not cost other rooms their messages
                    log.exception("delivering %d messages failed", len(messages))

    # --- forgetting idle rooms ------------------------------------------------------------

    def occupied(self, room: str) -> None:
        """The room has a member now: it is kept until after the last one leaves."""
        self._expiry.pop(room, None)

    def vacated(self, room: str) -> None:
        """The room's last member left: it is forgotten `room_ttl` from now, unless used."""
        self._touch(room, time.time())

    def _touch(self, room: str, now: float) -> None:
        if room in self._rooms:
            self._expiry[room] = now + self._room_ttl
            self._expiry.move_to_end(room)

    def _sweep(self, now: float) -> None:
        """Forget the rooms whose time is up (their history), and nonces older than the
        dedupe window (never longer than the room TTL, so a forgotten room's go too)."""
        expiry = self._expiry
        while expiry:
            room, when = next(iter(expiry.items()))
            if when > now:
                break
            del expiry[room]
            self._rooms.pop(room, None)
        seen = self._seen
        while seen:
            key, (expires, _) = next(iter(seen.items()))
            if expires > now:
                break
            del seen[key]

    async def _sweep_loop(self) -> None:
        """Forget idle rooms also while nobody publishes or reads, so memory comes back."""
        while True:
            await asyncio.sleep(min(self._room_ttl / 2, 60.0))
            self._sweep(time.time())
