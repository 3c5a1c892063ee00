"""Reading what subscribed rooms missed from their streams, for the subscriber's backfill."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, TypeVar

from webchat.broker.base import Message
from webchat.broker.redis_codec import (
    Announced,
    describe,
    message_from_entry,
    presence_from_entry,
    presence_stream_key,
    stream_key,
)
from webchat.broker.redis_connect import RedisClient
from webchat.broker.redis_rooms import Read, RoomSub

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKFILL_COUNT: Final = 1000  # stream entries per XRANGE


async def read_after(
    client: RedisClient, rooms: list[tuple[str, RoomSub]]
) -> list[tuple[Read[Message], Read[Announced]]]:
    """Per room, both streams after its cursors and their newest ids, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for room, sub in rooms:
        for key, cursor in (
            (stream_key(room), sub.messages),
            (presence_stream_key(room), sub.presence),
        ):
            pipe.xrevrange(key, count=1)
            pipe.xrange(key, count=1)
            pipe.xrange(key, min=f"({cursor.last}", count=BACKFILL_COUNT)
    results: list[Any] = await pipe.execute()
    reads = []
    for n, (room, _) in enumerate(rooms):
        (newest_message, oldest_message, messages, newest_presence, oldest_presence, presence) = (
            results[6 * n : 6 * n + 6]
        )
        reads.append(
            (
                Read(
                    _first_id(newest_message),
                    _first_id(oldest_message),
                    _decode(message_from_entry, room, messages),
                    len(messages) < BACKFILL_COUNT,
                ),
                Read(
                    _first_id(newest_presence),
                    _first_id(oldest_presence),
                    _decode(presence_from_entry, room, presence),
                    len(presence) < BACKFILL_COUNT,
                ),
            )
        )
    return reads


def _first_id(entries: list[tuple[bytes, Any]]) -> str | None:
    return entries[0][0].decode() if entries else None


def _decode(
    decode: Callable[[str, bytes, dict[bytes, bytes]], T], room: str, entries: list[Any]
) -> list[T]:
    """Stream entries decoded; a malformed one is logged and skipped, never fatal."""
    out = []
    for entry_id, fields in entries:
        try:
            out.append(decode(room, entry_id, fields))
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            log.error("malformed entry %r in a stream of %s: %s", entry_id, room, describe(exc))
    return out
