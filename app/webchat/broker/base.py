"""The broker seam: what the hub needs from a message broker, and the values that cross it.

A broker assigns ids, keeps each room's history, dedupes idempotent sends and delivers every
accepted message back to every subscribed node through one `EventHandler`, in history order.
The hub never learns which broker it talks to; the broker never sees a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEDUPE_SECONDS = 300.0
ROOM_ACTIVITY_SECONDS = 24 * 3600  # GET /api/rooms lists rooms with a message this recent
ROOMS_LIMIT = 200  # ... and at most this many


def dedupe_seconds(room_ttl: float) -> float:
    """How long a nonce is remembered: 5 minutes, or the room TTL if shorter (a room forgets
    its nonces when it forgets its history)."""
    return min(DEDUPE_SECONDS, room_ttl)


class BrokerUnavailable(Exception):
    """The broker cannot be reached; the caller answers `unavailable` and accepts nothing."""


class NameTaken(Exception):
    """The name is present in the room under another holder (another key); nothing joined."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A message as a client sent it, before the broker accepts it.

    `user` is the sender's `sub` in authenticated mode (None in anonymous mode); idempotent
    sends are keyed on it then, not on the display name (`sender`).
    """

    name: str
    text: str
    nonce: str | None
    trace: dict[str, str] | None = None
    user: str | None = None

    @property
    def sender(self) -> str:
        """Who a nonce belongs to: the name, or the user (a control character first, which
        no name holds, so a name and a `sub` never share a dedupe key)."""
        return self.name if self.user is None else f"\x1f{self.user}"


@dataclass(frozen=True, slots=True)
class Message:
    """An accepted message: `id` orders it within its room, `ts` is acceptance time (ms).

    `accepted_us` is the broker's acceptance time in microseconds since the epoch (its
    clock: Redis's `TIME`, or this process's), for delivery latency; it is not part of the
    wire frame, and None where the broker did not say (history and backfill reads). `user`
    is the sender's `sub` (authenticated mode), carried into history and the frame.
    """

    id: str
    room: str
    name: str
    text: str
    ts: int
    nonce: str | None
    trace: dict[str, str] | None = None
    accepted_us: int | None = field(default=None, compare=False)
    user: str | None = None  # the sender's `sub` in authenticated mode


@dataclass(frozen=True, slots=True)
class Published:
    """A publish's outcome; `duplicate`: the nonce was seen and `message` is the original."""

    message: Message
    duplicate: bool


@dataclass(frozen=True, slots=True)
class History:
    messages: Sequence[Message]
    gap: bool


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """A room as GET /api/rooms lists it; `last_ts` is its newest message's ts, if any."""

    room: str
    member_count: int
    last_ts: int | None


def rank_rooms(rooms: Iterable[RoomInfo], now_ms: int, limit: int) -> list[RoomInfo]:
    """PROTOCOL.md's room list: rooms with members or a message in the last 24 hours, most
    members first (then the most recently active, then by name), at most `limit`."""
    since = now_ms - ROOM_ACTIVITY_SECONDS * 1000
    listed = [
        r for r in rooms if r.member_count > 0 or (r.last_ts is not None and r.last_ts >= since)
    ]
    listed.sort(key=room_order)
    return listed[:limit]


def room_order(room: RoomInfo) -> tuple[int, int, str]:
    """Most members first, then the most recently active, then by name."""
    return (-room.member_count, -(room.last_ts or 0), room.room)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A name's first connection in a room (join) or the end of its last one (leave).

    `count` is how many names the room holds after the event, so large rooms can skip it.
    """

    room: str
    event: str
    name: str
    count: int


class EventHandler(Protocol):
    """What the node gives the broker to receive events for the rooms it subscribed to."""

    def on_messages(self, room: str, messages: Sequence[Message]) -> None:
        """Accepted messages of `room`, in history order; called without awaiting."""

    def on_presence(self, event: PresenceEvent) -> None:
        """A join or leave in a subscribed room, from any node."""

    def on_gap(self, room: str) -> None:
        """Messages of `room` may never reach this node's clients (history trimmed them while
        the node was not subscribed): its clients must resume with `since` to learn of it."""


class Presence(Protocol):
    """Which names are in which room, across every node, and who holds each name.

    `name` and `holder` are opaque to presence. A name is a member as protocol.member_key
    makes it: the name itself in anonymous mode, the display name with the user's `sub` in
    authenticated mode. `holder` is whoever may use the name (a hash of the client's key in
    anonymous mode, "" for no key; a hash of the `sub` in authenticated mode). A name keeps
    the holder of its first join until it leaves.
    """

    async def join(self, room: str, name: str, holder: str = "") -> None:
        """This node holds `name` in `room`; announces a join if no node held it before.

        Raises NameTaken, joining nothing, if the name is present under another holder: on
        any node, decided atomically, so of two first joins with different holders one wins.
        """

    async def holder(self, room: str, name: str) -> str | None:
        """Who holds `name` in `room` now, or None if it is free. A read, for diagnostics."""

    async def leave(self, room: str, name: str) -> None:
        """This node no longer holds `name`; announces a leave if no node holds it now."""

    async def members(self, room: str, limit: int, include: str) -> tuple[list[str], int]:
        """Up to `limit` names present (always `include`) and how many there are in all."""


class Broker(Protocol):
    @property
    def presence(self) -> Presence:
        """Room membership across every node."""

    @property
    def ready(self) -> bool:
        """True while the broker is reachable; readiness and new upgrades depend on it."""

    async def start(self, handler: EventHandler) -> None:
        """Connect (or keep retrying in the background) and deliver events to `handler`."""

    async def close(self) -> None: ...

    async def subscribe(self, room: str) -> None:
        """Start delivering `room`'s events; the hub calls it once per room, not per client."""

    async def unsubscribe(self, room: str) -> None: ...

    async def publish(self, room: str, draft: Draft) -> Published:
        """Accept a message: dedupe its nonce, store it in history, deliver it to subscribers.

        A duplicate returns once what this node had accepted before (the original among it)
        has reached the handler, so a re-send to the sender never overtakes the original.
        Raises BrokerUnavailable when it cannot; then nothing was accepted.
        """

    async def history(self, room: str, since: str | None, limit: int) -> History:
        """Messages after `since` (oldest first), or the newest `limit` without `since`."""

    async def history_before(self, room: str, before: str, limit: int) -> History:
        """The newest `limit` messages older than `before`, oldest first; `gap` is False."""

    async def rooms(self, limit: int) -> list[RoomInfo]:
        """Rooms with members or a recent message, as `rank_rooms` orders them.

        Bounded work whatever the number of rooms; callers still cache it (it is polled).
        """
