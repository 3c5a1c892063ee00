"""Give memory back to the system after a burst of large, short-lived buffers.

A history page or a replay allocates megabytes that live for a moment. Python frees them, but
glibc's allocator keeps the freed pages of its heap for reuse, so after a burst of large
answers the process's RSS stays near its peak although the memory is free: an operator (or the
kernel's OOM killer) sees a process that looks like it leaks. `malloc_trim(0)` hands those free
pages back (madvise). It walks the allocator's free lists, so it blocks the loop for as long
as they are long: about half a millisecond after a burst of forty 1 MB answers, measured, but
more with a heap of many free pieces. So it runs shortly after such a burst, never per
request, and at most once per INTERVAL seconds, or per 1,000 times its last duration if that
is longer: trimming never takes more than 0.1 % of the loop's time. Where the C library has
no `malloc_trim` (musl, macOS) nothing is done: those allocators return memory differently.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

DELAY: Final = 1.0  # after the burst (a burst is rarely one request)
INTERVAL: Final = 5.0  # at most this often
BUDGET: Final = 1000.0  # ... or at most once per this many times its last duration


def _malloc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """Call `soon()` when a large buffer was freed; the trim follows within DELAY seconds."""

    def __init__(
        self,
        delay: float = DELAY,
        interval: float = INTERVAL,
        trim: Callable[[], object] | None = None,
    ) -> None:
        self._trim = trim or _malloc_trim()  # `trim`: another release function (tests)
        self._delay = delay
        self._base_interval = self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._last = float("-inf")

    def soon(self) -> None:
        if self._trim is None or self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        at = max(loop.time() + self._delay, self._last + self._interval)
        self._handle = loop.call_at(at, self._run)

    def _run(self) -> None:
        self._handle = None
        assert self._trim is not None
        started = time.perf_counter()
        try:
            self._trim()
        except Exception:  # never fatal: memory is only returned later
            log.exception("malloc_trim failed")
        took = time.perf_counter() - started
        self._interval = max(self._base_interval, BUDGET * took)
        self._last = asyncio.get_running_loop().time()
        if took > 0.05:
            log.info(
                "returning free memory took %.0f ms; next in %.0f s", 1000 * took, self._interval
            )

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
