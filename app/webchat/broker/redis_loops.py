"""The Redis broker's background loops: each kept running until stopped, and stopped for sure.

Stopping is not one cancel. On Python 3.11, asyncio.wait_for (the broker's, and redis-py's
around every socket write) swallows a cancel that arrives as the awaitable it waits for
completes, and the loop then runs on: a close that cancelled once and awaited the loops hung
when it came just as Redis was back (the presence refresh loop had just been woken). So a
stop cancels again until every loop has ended, for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Final

log = logging.getLogger(__name__)

Loops = list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]

RECANCEL: Final = 0.1  # a loop that has not ended by then is cancelled again
STOP_WAIT: Final = 5.0  # loops still running after this long are left behind, and logged


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
    """Cancel `tasks`, again every RECANCEL s, until all have ended or `timeout` s passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            names = ", ".join(sorted(task.get_name() for task in pending))
            log.error("Redis broker loops still running after %g s of cancels: %s", timeout, names)
            return
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL, remaining))
