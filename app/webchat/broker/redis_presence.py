"""Presence across nodes in Redis: who is in which room, and leaving when a node dies.

Each node holds the names of its local members (the hub calls join/leave once per name and
room, not per connection) as `<node>:<name>` entries with an expiry, and refreshes them three
times per expiry. A per-room count of holding nodes decides when a name joins (count 0 -> 1)
or leaves (1 -> 0). Expired holders (a node killed without leaving) are reaped every second by
each node in the rooms it subscribes to, and before every member listing and join; the expiry
is the presence timeout less one reap interval, so their names leave within the presence
timeout.

A name's holder (the hash of its first connection's key) is stored with it by the join script:
a join under another holder is refused there, atomically, on whichever node it comes.
The names present after each change are reported to `on_count`, for the room index.

A join whose outcome is unknown (cancelled because its client left, or timed out after the
script may have run) and a leave that failed are settled: retried in the background until
Redis agrees with what this node holds, so neither leaves a ghost member behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from redis.exceptions import RedisError

from webchat.broker.base import BrokerUnavailable, NameTaken
from webchat.broker.redis_codec import channel, describe, presence_keys
from webchat.broker.redis_connect import RedisClient
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_scripts import HOLDER, JOIN, LEAVE, MEMBERS, REAP, REFRESH

log = logging.getLogger(__name__)

# Rooms per pipeline when refreshing or reaping many rooms at once.
_CHUNK = 200
SETTLE_DELAY = 0.2  # a join or leave to settle is retried after this, doubling while it fails
SETTLE_MAX_DELAY = 5.0


class _RoomLock:
    """A lock per room, dropped when nobody uses it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class RedisPresence:
    """The Presence protocol over Redis; the broker owns it and runs its loops."""

    def __init__(
        self,
        client: RedisClient,
        node_id: str,
        timeout: float,
        reachable: Callable[[], bool],
        ops: RedisOps,
        on_count: Callable[[str, int], None] = lambda room, count: None,
        control: RedisClient | None = None,
    ) -> None:
        self._client = client
        self._control = control or client  # the refresh and reap loops
        self._ops = ops
        self._reachable = reachable
        self._on_count = on_count
        self._node = node_id
        # A dead node's hold expires at most `hold` after it died and is reaped at most one
        # reap interval later: within the presence timeout.
        self.reap_interval = min(1.0, timeout / 4)
        hold = timeout - self.reap_interval
        self._timeout_ms = max(1, int(hold * 1000))
        self.refresh_interval = hold / 3
        # Names this node holds: the hub's join/leave calls counted, so a leave that races a
        # join of the same name (grace over, then a reconnect) ends with the name held.
        self._held: dict[str, Counter[str]] = {}
        self._holders: dict[str, dict[str, str]] = {}  # the holder of each name held here
        self._locks: dict[str, _RoomLock] = {}
        self._join = client.register_script(JOIN)
        self._holder = client.register_script(HOLDER)
        self._refresh = client.register_script(REFRESH)
        self._leave = client.register_script(LEAVE)
        self._reap = client.register_script(REAP)
        self._members = client.register_script(MEMBERS)
        self._refresh_now = asyncio.Event()
        self._reap_from = 0.0  # loop time before which the reaper waits
        self._unsettled: set[tuple[str, str]] = set()  # (room, name) Redis may disagree on
        self._settle_now = asyncio.Event()
        # Per refresh or reap batch in flight, the rooms whose join or leave reported a count
        # meanwhile: the batch may have run before it in Redis, so its older count of those
        # rooms is dropped (it would keep an emptied room listed as busy in the room index).
        self._in_flight: list[set[str]] = []

    # --- the Presence protocol --------------------------------------------------------

    async def join(self, room: str, name: str, holder: str = "") -> None:
        holders = self._holders.setdefault(room, {})
        if holders.setdefault(name, holder) != holder:
            # Held here still, by another key: a leave of it has not reached Redis yet.
            raise NameTaken(f"{name!r} is held by another key in {room}")
        names = self._held.setdefault(room, Counter())
        names[name] += 1
        if names[name] > 1:
            return
        try:
            await self._apply(room, name)
        except NameTaken:
            self._release(room, name)
            raise
        except (RedisError, OSError) as exc:
            # The hub detaches the connection without a leave; forget the hold again, and
            # make sure Redis forgets it too: the script may have run (a timeout).
            self._release(room, name)
            self._settle(room, name)
            raise BrokerUnavailable(f"presence join failed: {describe(exc)}") from exc
        except BaseException:
            # Cancelled: the client left during its join, and the script may have run.
            self._release(room, name)
            self._settle(room, name)
            raise

    async def holder(self, room: str, name: str) -> str | None:
        held = self._holders.get(room, {}).get(name)
        if held is not None:
            return held
        try:
            value = await self._ops.call(
                "presence_holder",
                self._holder(keys=presence_keys(room), args=[channel(room), name]),
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"presence read failed: {describe(exc)}") from exc
        return None if value is None else bytes(value).decode()

    async def leave(self, room: str, name: str) -> None:
        if not self._release(room, name):
            return
        if not self._reachable():
            # No waiting for timeouts (at shutdown, say): the hold is no longer refreshed, so
            # it expires and is reaped, unless Redis is back sooner and the leave settled.
            log.info("Redis unreachable: %r leaves %s when Redis is back", name, room)
            self._settle(room, name)
            return
        try:
            await self._apply(room, name)
        except (RedisError, OSError) as exc:
            log.warning(
                "presence leave of %r in %s failed (%s); retrying", name, room, describe(exc)
            )
            self._settle(room, name)

    async def members(self, room: str, limit: int, include: str) -> tuple[list[str], int]:
        try:
            count, names = await self._ops.call(
                "presence_members",
                self._members(keys=presence_keys(room), args=[channel(room), limit, include]),
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"presence listing failed: {describe(exc)}") from exc
        listed = sorted(n.decode() for n in names)
        if include in listed:
            listed.remove(include)
            listed.insert(0, include)
        return listed[:limit], int(count)

    # --- keeping holds alive ------------------------------------------------------------

    def reconnected(self, grace: float) -> None:
        """Redis is reachable again: refresh every hold now, and reap only after `grace` s.

        After an outage longer than the presence timeout every hold has expired; the pause
        gives every live node time to reconnect and refresh before anyone reaps them, so
        connected clients do not flicker out and back in.
        """
        self._reap_from = asyncio.get_running_loop().time() + grace
        self._refresh_now.set()

    async def refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), self.refresh_interval)
            self._refresh_now.clear()
            try:
                await self._refresh_all()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("presence refresh failed: %s", exc)
            except Exception:
                log.exception("presence refresh failed")

    async def reap_loop(self, rooms: Callable[[], Iterable[str]]) -> None:
        """Every reap interval, reap expired holders in `rooms()` (the subscribed rooms)."""
        while True:
            await asyncio.sleep(self.reap_interval)
            if asyncio.get_running_loop().time() < self._reap_from:
                continue
            try:
                await self._reap_rooms(list(rooms()))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("presence reaping failed: %s", exc)
            except Exception:
                log.exception("presence reaping failed")

    async def settle_loop(self) -> None:
        """Retry joins and leaves whose outcome in Redis is unknown until Redis agrees."""
        delay = SETTLE_DELAY
        while True:
            await self._settle_now.wait()
            await asyncio.sleep(delay)  # gathers a burst; backs off while Redis fails
            self._settle_now.clear()
            pending, self._unsettled = self._unsettled, set()
            failed = False
            for room, name in pending:
                try:
                    await self._apply(room, name)
                except NameTaken:
                    log.warning("%r in %s is now held by another key", name, room)
                except (RedisError, OSError) as exc:
                    log.debug("settling %r in %s failed (retried): %s", name, room, describe(exc))
                    self._settle(room, name)
                    failed = True
            delay = min(delay * 2, SETTLE_MAX_DELAY) if failed else SETTLE_DELAY

    def _settle(self, room: str, name: str) -> None:
        self._unsettled.add((room, name))
        self._settle_now.set()

    async def _refresh_all(self) -> None:
        held = [(room, list(names)) for room, names in self._held.items() if names]
        for start in range(0, len(held), _CHUNK):
            chunk = held[start : start + _CHUNK]
            pipe = self._control.pipeline(transaction=False)
            for room, names in chunk:
                await self._refresh(
                    keys=presence_keys(room),
                    args=[self._node, self._timeout_ms, *names],
                    client=pipe,
                )
            with self._batch() as reported:
                results: list[Any] = await self._ops.call("presence_refresh", pipe.execute())
            for (room, _), (count, _) in zip(chunk, results, strict=True):
                if room not in reported:  # all at once: the re-joins below let others run
                    self._on_count(room, int(count))
            for (room, _), (_, missing) in zip(chunk, results, strict=True):
                for raw in missing:
                    name = raw.decode()
                    log.info("re-joining %r in %s: its hold had expired", name, room)
                    try:
                        await self._apply(room, name)
                    except NameTaken:
                        # Another key took the name while this node could not refresh it.
                        log.warning("%r in %s is now held by another key", name, room)

    async def _reap_rooms(self, rooms: list[str]) -> None:
        for start in range(0, len(rooms), _CHUNK):
            chunk = rooms[start : start + _CHUNK]
            pipe = self._control.pipeline(transaction=False)
            for room in chunk:
                await self._reap(keys=presence_keys(room), args=[channel(room)], client=pipe)
            with self._batch() as reported:
                results: list[Any] = await self._ops.call("presence_reap", pipe.execute())
            for room, count in zip(chunk, results, strict=True):
                if int(count) >= 0 and room not in reported:
                    self._on_count(room, int(count))

    # --- internals ----------------------------------------------------------------------

    def _release(self, room: str, name: str) -> bool:
        """Count one hold of `name` down; True if this node no longer holds it."""
        names = self._held.get(room)
        if not names or names[name] <= 0:
            return False
        names[name] -= 1
        if names[name] > 0:
            return False
        del names[name]
        holders = self._holders.get(room)
        if holders is not None:
            holders.pop(name, None)
            if not holders:
                del self._holders[room]
        if not names:
            del self._held[room]
        return True

    async def _apply(self, room: str, name: str) -> None:
        """Make Redis agree with whether this node holds `name` in `room` right now.

        Serialised per room: a leave sent on one pooled connection and a join on another
        could otherwise run in either order.
        """
        entry = self._locks.get(room)
        if entry is None:
            entry = self._locks[room] = _RoomLock()
        entry.users += 1
        try:
            async with entry.lock:
                keys = presence_keys(room)
                if name in self._held.get(room, ()):
                    holder = self._holders.get(room, {}).get(name, "")
                    joined, count = await self._ops.call(
                        "presence_join",
                        self._join(
                            keys=keys,
                            args=[channel(room), self._node, self._timeout_ms, name, holder],
                        ),
                    )
                    if not joined:
                        raise NameTaken(f"{name!r} is held by another key in {room}")
                else:
                    count = await self._ops.call(
                        "presence_leave",
                        self._leave(keys=keys, args=[channel(room), self._node, name]),
                    )
                self._report(room, int(count))
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[room]

    def _report(self, room: str, count: int) -> None:
        """A join's or leave's count of `room`: newer than any batch's still in flight."""
        self._on_count(room, count)
        for reported in self._in_flight:
            reported.add(room)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[set[str]]:
        """While a batched refresh or reap is in flight: the rooms reported meanwhile."""
        reported: set[str] = set()
        self._in_flight.append(reported)
        try:
            yield reported
        finally:  # by identity: two batches' sets may be equal
            self._in_flight = [r for r in self._in_flight if r is not reported]
