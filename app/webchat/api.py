"""The HTTP API's answers: bounded in count and bytes, encoded in slices, written with a deadline.

A history page can be 500 messages of 2,000 characters each. Encoded at once, with escapes,
and handed to a client that never reads, such a page held tens of megabytes for as long as the
client kept its socket, and blocked the event loop while it was encoded. Here a page is:

- cut at `--api-max-bytes` of JSON (at least one message is kept), marked `"truncated": true`
  (PROTOCOL.md's additive notes): a `since` page keeps its oldest messages, others their newest,
  so a client pages on from its last (`since`) or first (`before`) id as usual;
- encoded a slice of messages at a time, yielding to the loop between slices;
- written in chunks with flow control under a deadline (`--api-timeout`): a client that has
  not read the answer by then is dropped;
- served by at most `--api-concurrency` requests at once per process (`Slots`); the others
  get 503 `unavailable` at once, before they cost anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from webchat.broker.base import Message
from webchat.protocol import encode_message
from webchat.websocket import reset

SLICE: Final = 8  # messages encoded between two yields to the loop (~0.25 ms at most)
CHUNK: Final = 64 * 1024  # bytes per write: aiohttp's writer drains above this
JSON: Final = "application/json; charset=utf-8"


class Slots:
    """At most `limit` API answers in progress at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0

    def take(self) -> bool:
        if self.busy >= self.limit:
            return False
        self.busy += 1
        return True

    def give_back(self) -> None:
        self.busy -= 1


def _envelope(gap: bool, truncated: bool) -> bytes:
    tail = b'],"gap":' + (b"true" if gap else b"false")
    return tail + (b',"truncated":true}' if truncated else b"}")


async def encode_page(
    messages: Sequence[Message], gap: bool, max_bytes: int, *, keep_newest: bool
) -> list[bytes]:
    """The JSON body `{"messages": [...], "gap": ..}` of a history page, in chunks of about
    CHUNK bytes, at most `max_bytes` long unless one message alone is longer.

    When the messages do not all fit, the newest (`keep_newest`) or the oldest are kept and
    the body says `"truncated": true`.
    """
    head = b'{"messages":['
    budget = max_bytes - len(head) - len(_envelope(gap, True))
    order = reversed(messages) if keep_newest else iter(messages)
    kept: list[bytes] = []
    size = 0
    for index, message in enumerate(order):
        if index and index % SLICE == 0:
            await asyncio.sleep(0)  # let other clients run between slices
        encoded = encode_message(message)
        cost = len(encoded) + (1 if kept else 0)  # the comma
        if kept and size + cost > budget:
            break
        kept.append(encoded)
        size += cost
    truncated = len(kept) < len(messages)
    if keep_newest:
        kept.reverse()
    chunks: list[bytes] = []
    pending: list[bytes] = [head]
    pending_size = len(head)
    for index, encoded in enumerate(kept):
        piece = encoded if index == 0 else b"," + encoded
        pending.append(piece)
        pending_size += len(piece)
        if pending_size >= CHUNK:
            chunks.append(b"".join(pending))
            pending, pending_size = [], 0
    pending.append(_envelope(gap, truncated))
    chunks.append(b"".join(pending))
    return chunks


async def send(request: web.Request, chunks: Sequence[bytes], timeout: float) -> web.StreamResponse:
    """Write a JSON answer; drop the client if it has not read it within `timeout` seconds."""
    response = web.StreamResponse(headers={"Content-Type": JSON})
    response.content_length = sum(len(chunk) for chunk in chunks)
    try:
        async with asyncio.timeout(timeout):
            await response.prepare(request)
            for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
    except TimeoutError:
        if request.transport is not None:
            reset(request.transport)  # and what the kernel holds for it
    except ConnectionError:  # the client went away: nothing to answer
        pass
    return response
