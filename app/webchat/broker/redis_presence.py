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

Joins, leaves and member listings are batched: each call queues its room's work and waits for
the next flush, which sends every room's queue in one pipeline, one script per room (SYNC).
One flush is in flight at a time, so what arrives meanwhile makes the next one: a storm of N
joins into a room costs a few round trips, not N, and a room's changes reach Redis in order.
A name's change sends the state it has when the flush goes (held here or not), so a leave
racing a join of the same name ends as the hub left it.

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
from webchat.broker.redis_batch import evalsha_pipelined
from webchat.broker.redis_clock import ClockWatch
from webchat.broker.redis_codec import channel, describe, presence_keys
from webchat.broker.redis_connect import RedisClient
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_scripts import HOLDER, REAP, REFRESH, SYNC

log = logging.getLogger(__name__)

# Rooms per pipeline when refreshing or reaping many rooms at once.
_CHUNK = 200
# Names per SYNC call: one script's run blocks Redis, so a huge batch is sent in pieces.
_NAMES_PER_CALL = 500
# Rooms whose last member listing is kept (to skip decoding the same one again); past this,
# all are forgotten.
_LISTINGS_KEPT = 1000
SETTLE_DELAY = 0.2  # a join or leave to settle is retried after this, doubling while it fails
SETTLE_MAX_DELAY = 5.0


class _RoomBatch:
    """One room's presence work waiting for the next flush.

    `names`: names whose hold must reach Redis (a join or a leave, whichever is true when the
    flush goes), each with its waiters (resolved False if the name is taken by another holder).
    `listings`: member listings asked for, of at most `listing` names.
    """

    __slots__ = ("listing", "listings", "names")

    def __init__(self) -> None:
        self.names: dict[str, list[asyncio.Future[bool]]] = {}
        self.listings: list[asyncio.Future[tuple[int, list[str]]]] = []
        self.listing = 0

    def fail(self, exc: BaseException) -> None:
        waiters: list[asyncio.Future[Any]] = [w for ws in self.names.values() for w in ws]
        for waiter in [*waiters, *self.listings]:
            if not waiter.done():
                waiter.set_exception(exc)


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
        limit: int = 200,
        control: RedisClient | None = None,
    ) -> None:
        self._client = client
        self._control = control or client  # the refresh and reap loops
        self._ops = ops
        self._limit = limit  # the presence limit: larger rooms produce no presence events
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
        self._batches: dict[str, _RoomBatch] = {}  # queued for the next flush
        self._flushing: dict[str, _RoomBatch] = {}  # in the flush in flight
        self._batch_wanted = asyncio.Event()
        self._listings: dict[str, tuple[list[bytes], list[str]]] = {}  # the last of each room
        self._sync = client.register_script(SYNC)
        self._holder = client.register_script(HOLDER)
        self._refresh = client.register_script(REFRESH)
        self._reap = client.register_script(REAP)
        self._refresh_now = asyncio.Event()
        self._clock = ClockWatch()  # notices a step of Redis's clock between refreshes
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
            joined = await self._send(room, name)
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
        if not joined:
            self._release(room, name)
            raise NameTaken(f"{name!r} is held by another key in {room}")

    async def holder(self, room: str, name: str) -> str | None:
        held = self._holders.get(room, {}).get(name)
        if held is not None:
            return held
        try:
            value = await self._ops.call(
                "presence_holder",
                self._holder(keys=presence_keys(room), args=[channel(room), name, self._limit]),
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
            await self._send(room, name)
        except (RedisError, OSError) as exc:
            log.warning(
                "presence leave of %r in %s failed (%s); retrying", name, room, describe(exc)
            )
            self._settle(room, name)

    async def members(self, room: str, limit: int, include: str) -> tuple[list[str], int]:
        """Read with the room's next batch: shared by every welcome waiting for it.

        Above `limit` names the listing is `limit` of them, whichever Redis picks (any will
        do: clients of a large room rely on the count), with `include` first if present.
        """
        waiter: asyncio.Future[tuple[int, list[str]]] = asyncio.get_running_loop().create_future()
        batch = self._queue(room)
        batch.listings.append(waiter)
        batch.listing = max(batch.listing, limit)
        try:
            count, names = await waiter
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"presence listing failed: {describe(exc)}") from exc
        others = [n for n in names if n != include]
        if len(others) < len(names) or include in self._held.get(room, ()):
            return [include, *others][:limit], count
        return others[:limit], count

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
        """Refresh every hold each `refresh_interval`; warn when the holds are at risk.

        A hold outlives two failed or late refreshes and not a third: then every name held
        here leaves and joins again (a presence storm), so a failed refresh, or one that comes
        more than two intervals after the last success, is logged at WARNING.
        """
        loop = asyncio.get_running_loop()
        refreshed = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), self.refresh_interval)
            self._refresh_now.clear()
            started = loop.time()
            try:
                await self._refresh_all()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning(
                    "presence refresh failed (%s); holds were last refreshed %.1f s ago and "
                    "expire after %.1f s",
                    describe(exc),
                    started - refreshed,
                    self._timeout_ms / 1000,
                )
                continue
            except Exception:
                log.exception("presence refresh failed")
                continue
            now = loop.time()
            if now - refreshed > 2 * self.refresh_interval:
                log.warning(
                    "presence holds refreshed %.1f s after the last refresh (every %.1f s; "
                    "they expire after %.1f s); this refresh took %.1f s",
                    now - refreshed,
                    self.refresh_interval,
                    self._timeout_ms / 1000,
                    now - started,
                )
            refreshed = now

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
                log.debug("presence reaping failed: %s", describe(exc))
            except Exception:
                log.exception("presence reaping failed")

    async def settle_loop(self) -> None:
        """Retry joins and leaves whose outcome in Redis is unknown until Redis agrees."""
        delay = SETTLE_DELAY
        while True:
            await self._settle_now.wait()
            await asyncio.sleep(delay)  # gathers a burst; backs off while Redis fails
            self._settle_now.clear()
            pending, self._unsettled = list(self._unsettled), set()
            failed = False
            # Together: they go in the same batches as everyone's joins and leaves.
            outcomes = await asyncio.gather(
                *(self._send(room, name) for room, name in pending), return_exceptions=True
            )
            for (room, name), outcome in zip(pending, outcomes, strict=True):
                if outcome is False:
                    log.warning("%r in %s is now held by another key", name, room)
                elif isinstance(outcome, Exception):  # RedisError, OSError, a closing broker
                    log.debug("settling %r in %s failed (retried): %s", name, room, outcome)
                    self._settle(room, name)
                    failed = True
                elif isinstance(outcome, BaseException):
                    raise outcome
            delay = min(delay * 2, SETTLE_MAX_DELAY) if failed else SETTLE_DELAY

    def _settle(self, room: str, name: str) -> None:
        self._unsettled.add((room, name))
        self._settle_now.set()

    async def _refresh_all(self) -> None:
        # Names whose join is still queued or in flight get their expiry from it; asked about
        # here, they could look lost (the refresh may run first) and be re-joined needlessly.
        held = [
            (room, [name for name in names if not self._pending(room, name)])
            for room, names in self._held.items()
            if names
        ]
        for start in range(0, len(held), _CHUNK):
            chunk = held[start : start + _CHUNK]
            pipe = self._control.pipeline(transaction=False)
            for room, names in chunk:
                await self._refresh(
                    keys=presence_keys(room),
                    args=[self._node, self._timeout_ms, *names],
                    client=pipe,
                )
            asked = asyncio.get_running_loop().time()
            with self._batch() as reported:
                results: list[Any] = await self._ops.call("presence_refresh", pipe.execute())
            if start == 0:
                self._clock_read(int(results[0][2]), asked)
            rejoins: list[tuple[str, str]] = []
            for (room, _), (count, *_) in zip(chunk, results, strict=True):
                if room not in reported:  # all at once: the re-joins below let others run
                    self._on_count(room, int(count))
            for (room, _), (_, missing, _) in zip(chunk, results, strict=True):
                for raw in missing:
                    name = raw.decode()
                    if name in self._held.get(room, ()):  # not left meanwhile
                        rejoins.append((room, name))
            if rejoins:
                room, name = rejoins[0]
                log.warning(
                    "re-joining %d names in %d rooms: their holds had expired (%r in %s, ...)",
                    len(rejoins),
                    len({r for r, _ in rejoins}),
                    name,
                    room,
                )
            sent = await asyncio.gather(*(self._send(r, n) for r, n in rejoins))
            for (room, name), joined in zip(rejoins, sent, strict=True):
                if not joined:
                    # Another key took the name while this node could not refresh it.
                    log.warning("%r in %s is now held by another key", name, room)

    def _clock_read(self, redis_ms: int, asked: float) -> None:
        step = self._clock.observe(redis_ms, asked)
        if step:
            log.warning(
                "Redis's clock stepped %+.1f s against this node's since the last presence "
                "refresh (a VM paused, an NTP correction?); holds expire by Redis's clock, so a "
                "step ahead by more than what is left of them makes every name leave and join "
                "again",
                step,
            )

    async def _reap_rooms(self, rooms: list[str]) -> None:
        for start in range(0, len(rooms), _CHUNK):
            chunk = rooms[start : start + _CHUNK]
            pipe = self._control.pipeline(transaction=False)
            for room in chunk:
                await self._reap(
                    keys=presence_keys(room), args=[channel(room), self._limit], client=pipe
                )
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

    # --- batches ----------------------------------------------------------------------------

    def _queue(self, room: str) -> _RoomBatch:
        batch = self._batches.get(room)
        if batch is None:
            batch = self._batches[room] = _RoomBatch()
            self._batch_wanted.set()
        return batch

    def _pending(self, room: str, name: str) -> bool:
        """Whether a change of `name` in `room` is queued or in flight."""
        batches = (self._batches.get(room), self._flushing.get(room))
        return any(name in batch.names for batch in batches if batch is not None)

    async def _send(self, room: str, name: str) -> bool:
        """Make Redis agree with whether this node holds `name` now, with the next flush.

        False if the name is held by another holder (it was to be joined; nothing changed).
        """
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue(room).names.setdefault(name, []).append(waiter)
        return await waiter

    async def batch_loop(self) -> None:
        """Flush the queued batches, one flush at a time; the broker runs this as a task."""
        while True:
            await self._batch_wanted.wait()
            self._batch_wanted.clear()
            batches, self._batches = self._batches, {}
            self._flushing = batches
            try:
                await self._flush(batches)
            except asyncio.CancelledError:
                for batch in batches.values():
                    batch.fail(BrokerUnavailable("the broker is closing"))
                raise
            except Exception as exc:  # the waiters get it: every call answers, none hangs
                if not isinstance(exc, (RedisError, OSError)):
                    log.exception("presence batch failed")
                for batch in batches.values():
                    batch.fail(exc)
            finally:
                self._flushing = {}

    async def _flush(self, batches: dict[str, _RoomBatch]) -> None:
        """One pipeline per `_CHUNK` rooms; a room's names in pieces of `_NAMES_PER_CALL`."""
        calls: list[tuple[str, _RoomBatch, list[str], list[Any], bool]] = []
        for room, batch in batches.items():
            held = self._held.get(room, Counter[str]())
            holders = self._holders.get(room, {})
            names = list(batch.names)
            for start in range(0, max(len(names), 1), _NAMES_PER_CALL):
                piece = names[start : start + _NAMES_PER_CALL]
                last = start + _NAMES_PER_CALL >= len(names)
                joins = [name for name in piece if name in held]
                args: list[Any] = [
                    channel(room),
                    self._node,
                    self._timeout_ms,
                    self._limit,
                    batch.listing if last else 0,
                    len(joins),
                ]
                for name in joins:
                    args += [name, holders.get(name, "")]
                args += [name for name in piece if name not in held]
                calls.append((room, batch, joins, args, last))
        for start in range(0, len(calls), _CHUNK):
            chunk = calls[start : start + _CHUNK]
            results = await self._ops.call(
                "presence_batch",
                evalsha_pipelined(
                    self._client,
                    self._sync,
                    [(presence_keys(room), args) for room, _, _, args, _ in chunk],
                ),
            )
            for (room, batch, joins, _, last), result in zip(chunk, results, strict=True):
                if isinstance(result, Exception):
                    batch.fail(result)
                    continue
                count, joined, raw_names = result
                self._report(room, int(count))
                for name, ok in zip(joins, joined, strict=True):
                    for waiter in batch.names.pop(name, ()):
                        if not waiter.done():
                            waiter.set_result(bool(ok))
                if not last:
                    continue
                for waiters in batch.names.values():  # leaves
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(True)
                listing = (int(count), self._listed(room, raw_names))
                for listed in batch.listings:
                    if not listed.done():
                        listed.set_result(listing)

    def _listed(self, room: str, raw: list[bytes]) -> list[str]:
        """A listing's names, decoded and sorted (shared: callers copy before changing it).

        In a resume storm a room's listing is read with every flush and is the same each time
        (the names of a killed instance stay held until they expire): then the last one is
        used again instead of decoding and sorting up to `presence_limit` names once more.
        """
        last = self._listings.get(room)
        if last is not None and last[0] == raw:
            return last[1]
        names = sorted(n.decode() for n in raw)
        if len(self._listings) >= _LISTINGS_KEPT:
            self._listings.clear()
        self._listings[room] = (raw, names)
        return names

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
