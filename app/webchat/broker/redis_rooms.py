"""Per-room subscription state of the Redis subscriber, and its reconnect backoff. No I/O."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from enum import Enum
from typing import Final, Generic, NamedTuple, TypeVar

from webchat.broker.base import Message, PresenceEvent
from webchat.broker.redis_codec import Announced, Committed, Pending, id_key

BACKOFF_BASE: Final = 0.1
BACKOFF_CAP: Final = 2.0


class State(Enum):
    """PENDING: SUBSCRIBE sent. BACKFILL: confirmed, reading the streams after the cursors
    while live events are buffered. LIVE: live events are delivered as they come."""

    PENDING = 0
    BACKFILL = 1
    LIVE = 2


class Cursor:
    """The last id delivered from one of a room's streams (messages or presence)."""

    __slots__ = ("key", "last")

    def __init__(self, last: str) -> None:
        self.last = last
        self.key = id_key(last)

    def advance(self, event_id: str) -> bool:
        """Move to `event_id` if it is newer; False means it was delivered already."""
        key = id_key(event_id)
        if key <= self.key:
            return False
        self.last, self.key = event_id, key
        return True

    def behind(self, newest: str | None) -> bool:
        """The stream's newest id is older than what was delivered: Redis lost its data."""
        return self.key != (0, 0) and (newest is None or id_key(newest) < self.key)

    def reset(self) -> None:
        self.last, self.key = "0-0", (0, 0)


E = TypeVar("E", Message, Announced)


class Read(NamedTuple, Generic[E]):
    """One read of a stream after its cursor."""

    newest: str | None  # the stream's newest id at the time of the read
    oldest: str | None  # the stream's oldest id at the time of the read
    events: list[E]
    complete: bool  # fewer entries than asked: the read reached the stream's end


class Backfill(NamedTuple):
    messages: list[Message]  # to deliver, in order
    presence: list[PresenceEvent]  # to deliver, in order
    again: bool  # read the streams again after these
    reset: bool  # a stream went back behind its cursor: Redis lost its data
    gap: bool  # history was trimmed past the message cursor: some messages were never seen


Live = Message | Pending | Announced | Committed


class RoomSub:
    """One subscribed room: its state and what was delivered from its two streams.

    Messages published with `--redis-replicas-ack` (Pending) are held, with every message
    after them so the order stays history's, until a commit covers them or a WAIT of this
    subscriber confirms them (`confirmed`): the echo is the acknowledgement, so no client may
    see a message before the replicas have it.
    """

    __slots__ = (
        "buffer",
        "committed",
        "generation",
        "held",
        "messages",
        "presence",
        "state",
        "waiters",
    )

    def __init__(self, last_message: str, last_presence: str) -> None:
        self.messages = Cursor(last_message)
        self.presence = Cursor(last_presence)
        self.state = State.PENDING
        self.buffer: list[Live] = []  # live events received while backfilling
        self.generation = 0  # confirmations seen; a backfill completes only for the newest
        self.waiters: list[asyncio.Future[None]] = []
        # Live messages held for their confirmation: the message, the replicas it waits for (0:
        # none, it only follows one that does) and when it was received (loop time).
        self.held: deque[tuple[Message, int, float]] = deque()
        self.committed = (0, 0)  # the newest commit seen on this connection

    def lost(self) -> None:
        """The connection is gone: SUBSCRIBE again, backfill from the cursors."""
        self.state, self.buffer = State.PENDING, []
        self.held.clear()
        self.committed = (0, 0)

    def live(self, event: Message | Pending | Committed, now: float) -> list[Message]:
        """A live message or commit; returns the messages to deliver now, in order."""
        if isinstance(event, Committed):
            self.committed = max(self.committed, id_key(event.id))
            return self._release(0)
        message, replicas = (
            (event.message, event.replicas) if isinstance(event, Pending) else (event, 0)
        )
        if id_key(message.id) <= self.messages.key:
            return []  # delivered already (by a backfill)
        if not self.held and not replicas:
            self.messages.advance(message.id)
            return [message]
        self.held.append((message, replicas, now))
        return self._release(0)

    def confirmed(self, count: int) -> list[Message]:
        """The first `count` held messages are on their replicas (a WAIT after they arrived)."""
        return self._release(count)

    @property
    def held_since(self) -> float | None:
        """When the oldest message still held was received, if any is."""
        return self.held[0][2] if self.held else None

    @property
    def held_replicas(self) -> int:
        """The most replicas any held message waits for."""
        return max((replicas for _, replicas, _ in self.held), default=0)

    def _release(self, confirmed: int) -> list[Message]:
        out: list[Message] = []
        while self.held:
            message, replicas, _ = self.held[0]
            if confirmed <= 0 and replicas and id_key(message.id) > self.committed:
                break
            self.held.popleft()
            confirmed -= 1
            if self.messages.advance(message.id):
                out.append(message)
        return out

    def backfilled(
        self,
        generation: int,
        messages: Read[Message],
        presence: Read[Announced],
        now: float = 0.0,
    ) -> Backfill:
        """Apply reads of both streams after their cursors.

        Their entries continue the cursors and are delivered even from a read older than the
        current confirmation; only a complete read newer than it (same `generation`) hands
        over to the buffered live events, which then continue it without a gap.
        """
        reset = False
        for events, newest, cursor in (
            (messages.events, messages.newest, self.messages),
            (presence.events, presence.newest, self.presence),
        ):
            if not events and cursor.behind(newest):
                cursor.reset()  # new ids may be lower than the lost ones: start over
                reset = True
        if reset:
            return Backfill([], [], again=True, reset=True, gap=False)
        # Trimming drops the oldest entries first: while the last delivered message is still
        # held, nothing after it was dropped. Once it is gone, something after it may be.
        gap = (
            self.messages.key != (0, 0)
            and messages.oldest is not None
            and id_key(messages.oldest) > self.messages.key
        )
        out_messages = [m for m in messages.events if self.messages.advance(m.id)]
        out_presence = [a.event for a in presence.events if self.presence.advance(a.id)]
        if not (messages.complete and presence.complete):
            return Backfill(out_messages, out_presence, again=True, reset=False, gap=gap)
        if self.state is State.BACKFILL and self.generation == generation:
            for item in self.buffer:
                if isinstance(item, Announced):
                    if self.presence.advance(item.id):
                        out_presence.append(item.event)
                else:
                    out_messages += self.live(item, now)
            self.state, self.buffer = State.LIVE, []
        return Backfill(out_messages, out_presence, again=False, reset=False, gap=gap)


def backoff_delay(attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 16)))
