"""Every wait in the tests derives from one unit, scaled on slow machines by WEBCHAT_TEST_UNIT."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

UNIT = float(os.environ.get("WEBCHAT_TEST_UNIT", "1"))
T = TypeVar("T")


def seconds(n: float) -> float:
    return n * UNIT


async def poll(check: Callable[[], T | Awaitable[T]], timeout: float, what: str) -> T:
    """Re-evaluate `check` until it returns something truthy, and return that.

    For state that no event reports (an HTTP status, a metric, a Redis key, a process table):
    the one polling loop of the test suite, bounded by `timeout` (scaled) seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds(timeout)
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]  # narrowed from T | Awaitable[T]
        if loop.time() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s (last: {result!r})")
        await asyncio.sleep(0.02)  # the polling interval; the deadline bounds the loop
