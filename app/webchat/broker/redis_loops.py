"""The Redis broker's background loops: each kept running until stopped, and stopped for sure
(one cancel may be lost: webchat.cancelling)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from webchat.cancelling import STOP_WAIT, cancel_until_done

log = logging.getLogger(__name__)

Loops = list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]


async def keep_running(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a background loop until cancelled; a crash is logged and the loop restarted."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Redis broker %s loop crashed; restarting it", name)
        await asyncio.sleep(1.0)


def start_loops(loops: Loops) -> list[asyncio.Task[None]]:
    """A task per loop, named after it (stop_loops names the ones that would not end)."""
    return [asyncio.create_task(keep_running(name, loop), name=name) for name, loop in loops]


async def stop_loops(tasks: Collection[asyncio.Task[None]], timeout: float = STOP_WAIT) -> None:
    """Cancel the loops until every one has ended (webchat.cancelling), for a bounded time."""
    await cancel_until_done(tasks, "Redis broker loops", timeout)
