"""When the server runs a full garbage collection: once enough sockets have closed.

`cli.serve` freezes the start-up objects and raises the collector's thresholds (about 30 % less
CPU per connect), so an object that lives through a young collection is freed, if it is cyclic
garbage, only by a full collection, which those thresholds almost never run. Every closed socket
leaves such garbage: asyncio's transport holds a bound method of itself (`_read_ready_cb`), a
cycle that only asyncio's private attributes could break. Left alone, RSS grew with the
connection churn (docs/storms.md, "Soak"); the app's own objects are freed as a connection ends
(websocket.py `connection_lost`), so this garbage is about 1 KiB per closed socket.

A full collection pauses the event loop for time in proportion to the objects alive (14 per
idle connection: a median of 80-110 ms at 10,000 on the reference machine, docs/performance.md,
"Garbage"), so it runs only once the sockets closed since the last one reach a quarter of those
open, and at least `after`: the pause per closed socket stays the same at any size, and the
garbage waiting stays below a quarter of the open sockets' transports.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Final

from webchat.listener import Gate

log = logging.getLogger(__name__)

# How often the count of closed sockets is looked at (a comparison; the collection is rare).
CHECK_INTERVAL: Final = 1.0


def due(closed: int, open_sockets: int, after: int) -> bool:
    """Whether `closed` sockets since the last collection call for a full one now."""
    return after > 0 and closed >= max(after, open_sockets // 4)


async def collect_garbage(gate: Gate, after: int) -> None:
    """Run a full collection whenever `due` (forever; cancel the task to stop)."""
    if after <= 0:
        return
    last = gate.closed
    while True:
        await asyncio.sleep(CHECK_INTERVAL)
        closed = gate.closed
        since = closed - last
        if not due(since, gate.open, after):
            continue
        last = closed
        started = time.perf_counter()
        found = gc.collect()
        log.info(
            "garbage collection: %d unreachable objects in %.0f ms "
            "(%d sockets closed since the last, %d open)",
            found,
            (time.perf_counter() - started) * 1000,
            since,
            gate.open,
        )
