"""History reads of the Redis broker, batched: a resume storm costs a few round trips, not two
per client.

Reads asked for before a flush goes are sent in it, in one pipeline, and identical ones (same
room, `since` and limit: every client of a room resuming after the same message) share one.
One flush is in flight at a time; what is asked meanwhile makes the next. A read never joins
one already sent: a client's replay must be read after it joined its room (its deliveries held
from then on), or a message published in between would be in neither.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from webchat.broker.base import BrokerUnavailable, History, Message
from webchat.broker.redis_batch import evalsha_pipelined
from webchat.broker.redis_codec import id_key, message_from_entry, start_after, stream_key
from webchat.broker.redis_connect import RedisClient
from webchat.broker.redis_ops import RedisOps
from webchat.broker.redis_scripts import HISTORY_AFTER
from webchat.protocol import parse_id

log = logging.getLogger(__name__)

Read = tuple[str, str | None, int]  # room, since, limit


def _retrieve(future: asyncio.Future[History]) -> None:
    """Mark an error as seen: all of a shared read's waiters may have gone before it came."""
    if not future.cancelled():
        future.exception()


class HistoryReads:
    """`await reads.read(room, since, limit)`: RedisBroker.history. The broker runs `run`."""

    def __init__(self, client: RedisClient, ops: RedisOps) -> None:
        self._client = client
        self._ops = ops
        self._after = client.register_script(HISTORY_AFTER)
        self._queued: dict[Read, asyncio.Future[History]] = {}
        self._wanted = asyncio.Event()

    async def read(self, room: str, since: str | None, limit: int) -> History:
        """memory.select_history's rule, with the next flush. Raises RedisError, OSError."""
        key = (room, since, limit)
        waiter = self._queued.get(key)
        if waiter is None:
            waiter = self._queued[key] = asyncio.get_running_loop().create_future()
            waiter.add_done_callback(_retrieve)
            self._wanted.set()
        # Shielded: one waiter going away must not cancel the read for the others.
        return await asyncio.shield(waiter)

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            queued, self._queued = self._queued, {}
            try:
                results = await self._ops.call("history", self._read(list(queued)))
            except asyncio.CancelledError:
                for waiter in queued.values():
                    waiter.set_exception(BrokerUnavailable("the broker is closing"))
                raise
            except Exception as exc:  # the waiters get it: every read answers, none hangs
                if not isinstance(exc, (RedisError, OSError)):
                    log.exception("history reads failed")
                for waiter in queued.values():
                    waiter.set_exception(exc)
                continue
            for waiter, result in zip(queued.values(), results, strict=True):
                if isinstance(result, BaseException):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)

    async def _read(self, reads: list[Read]) -> list[History | BaseException]:
        """Reads after `since` by HISTORY_AFTER, newest-n reads as XREVRANGE, in one pipeline
        (one round trip). A welcome asks for both: its room's newest message (which must not
        be read after its replay) then comes with the room's first read after `since` in
        this flush, read by the same script, so a resume storm costs one call per room and
        flush instead of two. Newest-n reads of other rooms go first."""
        newest = [(i, r) for i, r in enumerate(reads) if r[1] is None]
        after = [(i, r) for i, r in enumerate(reads) if r[1] is not None]
        out: list[History | BaseException] = [BrokerUnavailable("not read")] * len(reads)
        first_after: dict[str, int] = {}  # room -> its first call in `after`
        for k, (_, (room, _, _)) in enumerate(after):
            first_after.setdefault(room, k)
        along: dict[int, int] = {}  # a newest-1 read -> the call in `after` that reads it
        alone: list[tuple[int, Read]] = []  # the other newest-n reads
        for i, read in newest:
            call = first_after.get(read[0]) if read[2] == 1 else None
            if call is None:
                alone.append((i, read))
            else:
                along[i] = call
        calls = []
        wanted = set(along.values())
        for k, (_, (room, since, limit)) in enumerate(after):
            assert since is not None
            start = start_after(parse_id(since))
            calls.append(([stream_key(room)], [start or "", limit, "1" if k in wanted else ""]))
        commands = [
            ("XREVRANGE", stream_key(room), "+", "-", "COUNT", limit)
            for _, (room, _, limit) in alone
        ]
        replies = await evalsha_pipelined(self._client, self._after, calls, first=commands)
        for (i, (room, _, _)), entries in zip(alone, replies, strict=False):
            if isinstance(entries, BaseException):
                out[i] = entries
            else:
                entries.reverse()
                out[i] = History(_messages(room, entries), gap=False)
        scripts = replies[len(alone) :]
        for (i, (room, since, _)), reply in zip(after, scripts, strict=True):
            if isinstance(reply, BaseException):
                out[i] = reply
                continue
            oldest, raw, _ = reply
            assert since is not None
            gap = not oldest or parse_id(since) < id_key(oldest.decode())
            out[i] = History(_messages(room, _entries(raw)), gap=gap)
        for i, call in along.items():
            reply = scripts[call]
            if isinstance(reply, BaseException):
                out[i] = reply
            else:
                out[i] = History(_messages(reads[i][0], _entries(reply[2])), gap=False)
        return out


def _entries(raw: list[Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return [(entry_id, _fields(flat)) for entry_id, flat in raw]


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _messages(room: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Message]:
    return [message_from_entry(room, entry_id, fields) for entry_id, fields in entries]
