"""The instance watching itself: event-loop lag, and gauges sampled once a second.

Event-loop lag is how late the loop runs a timer: a probe sleeps PROBE_INTERVAL and measures
how much longer it took. A loop busy with a long fan-out, a GC pause or a blocking call makes
every client wait that long, whatever the latency histograms of the work itself say. Probes
run 10 times a second (about 20 µs of CPU each); each goes into a histogram (its distribution
over time: `webchat_event_loop_lag_seconds_hist`), and the worst of the last second is the
gauge `webchat_event_loop_lag_seconds` and `LoopLag.recent`. The worst of a second rather than
the latest probe, so a 100 ms stall shows on a 15 s scrape, not only when the scrape lands on
it. Admission control (Node.loop_lagging) reads `LoopLag.latest` instead: it refuses new
clients while the loop is late now, not for a second after a single pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

PROBE_INTERVAL: Final = 0.1
WINDOW: Final = 1.0  # seconds per gauge update and per `sample` call


class LoopLag:
    """Probe results. Pure: the caller measures, this keeps the worst of each window."""

    __slots__ = ("_since", "_window_max", "_window_start", "latest", "recent")

    def __init__(self, now: float) -> None:
        self.latest = 0.0  # the last probe's lag, seconds
        self.recent = 0.0  # the worst lag of the last complete window
        self._window_max = 0.0
        self._window_start = now
        self._since = now  # probes due before this are not counted (see `reset`)

    def reset(self, now: float) -> None:
        """Forget what was measured so far, and a probe due before now that has yet to wake:
        the start-up's own pauses (imports, the collector) are not overload."""
        self.latest = self.recent = self._window_max = 0.0
        self._window_start = self._since = now

    def probe(self, lag: float, now: float) -> bool:
        """Record one probe; True when a window just completed (`recent` was updated)."""
        if now - lag < self._since:  # it was due before a reset
            return False
        self.latest = lag
        self._window_max = max(self._window_max, lag)
        if now - self._window_start < WINDOW:
            return False
        self.recent = self._window_max
        self._window_max = 0.0
        self._window_start = now
        return True


async def run_monitor(
    lag: LoopLag,
    on_probe: Callable[[float], None],
    every_window: Callable[[], None],
) -> None:
    """Probe the loop until cancelled; `on_probe(lag)` each probe, `every_window()` each second.

    A failing callback is logged and the monitor goes on: it must never stop measuring.
    """
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + PROBE_INTERVAL
        await asyncio.sleep(PROBE_INTERVAL)
        now = loop.time()
        try:
            measured = max(0.0, now - expected)
            on_probe(measured)
            if lag.probe(measured, now):
                every_window()
        except Exception:
            log.exception("monitor tick failed")
