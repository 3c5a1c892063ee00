"""The broker seam: what the hub needs from a message broker, and the values that cross it.

A broker assigns ids, keeps each room's history, dedupes idempotent sends and delivers every
accepted message back to every subscribed node through one `EventHandler`, in history order.
The hub never learns which broker it talks to; the broker never sees a socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEDUPE_SECONDS = 300.0


class BrokerUnavailable(Exception):
    """The broker cannot be reached; the caller answers `unavailable` and accepts nothing."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A message as a client sent it, before the broker accepts it."""

    name: str
    text: str
    nonce: str | None
    trace: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """An accepted message: `id` orders it within its room, `ts` is acceptance time (ms).

    `accepted_us` is the broker's acceptance time in microseconds since the epoch (its
    clock: Redis's `TIME`, or this process's), for delivery latency; it is not part of the
    wire frame, and None where the broker did not say (history and backfill reads).
    """

    id: str
    room: str
    name: str
    text: str
    ts: int
    nonce: str | None
    trace: dict[str, str] | None = None
    accepted_us: int | None = field(default=None, compare=False)


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
    """Which names are in which room, across every node."""

    async def join(self, room: str, name: str) -> None:
        """This node holds `name` in `room`; announces a join if no node held it before."""

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

        Raises BrokerUnavailable when it cannot; then nothing was accepted.
        """

    async def history(self, room: str, since: str | None, limit: int) -> History:
        """Messages after `since` (oldest first), or the newest `limit` without `since`."""
