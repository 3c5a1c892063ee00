"""Stopping tasks for sure: cancel, and cancel again until they have ended, for a bounded time.

One cancel is not enough. On Python 3.11, asyncio.wait_for (ours, and redis-py's around every
socket write) swallows a cancel that arrives as the awaitable it waits for completes, and the
task then runs on: a close that cancelled once and awaited hung (the Redis broker's presence
refresh loop, woken as Redis came back; a session in the middle of a publish).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any, Final

log = logging.getLogger(__name__)

RECANCEL: Final = 0.1  # a task that has not ended by then is cancelled again
STOP_WAIT: Final = 5.0  # tasks still running after this long are left behind, and logged


async def cancel_until_done(
    tasks: Collection[asyncio.Task[Any]], what: str, timeout: float = STOP_WAIT
) -> None:
    """Cancel `tasks`, again every RECANCEL s, until all have ended or `timeout` s passed.

    An exception a task ended with is taken here (as `gather(return_exceptions=True)` would):
    the caller is stopping them, not waiting for their results.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            names = ", ".join(sorted(task.get_name() for task in pending))
            log.error("%s still running after %g s of cancels: %s", what, timeout, names)
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL, remaining))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
