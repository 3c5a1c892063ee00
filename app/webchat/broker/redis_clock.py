"""Noticing a step of Redis's clock, which decides when presence holds expire.

Holds expire by Redis's time (TIME: the wall clock of Redis's host), so when that clock steps
ahead (a VM paused and resumed, an NTP correction) by more than what is left of the holds, every
hold expires at once: each node's names leave and join again, and clients get a presence storm.
Redis's own key expiry follows the same clock. Nothing here prevents that; the step is measured
against this node's monotonic clock from one presence refresh to the next and logged, so an
operator who sees the re-joins also sees why.
"""

from __future__ import annotations

from typing import Final

# Seconds by which the two clocks may disagree over one refresh: a refresh's round trip (at
# most the 1 s command timeout) is the error of a reading.
STEP: Final = 3.0


class ClockWatch:
    """Redis's time as read by successive refreshes, against this node's monotonic clock."""

    def __init__(self) -> None:
        self._last: tuple[int, float] | None = None  # (Redis's ms, this node's s)

    def observe(self, redis_ms: int, local: float) -> float:
        """Redis's time `redis_ms`, read by a call sent at `local` (monotonic seconds): the
        step of Redis's clock since the last reading in seconds (ahead > 0), or 0.0 if the
        clocks agree within STEP."""
        last, self._last = self._last, (redis_ms, local)
        if last is None:
            return 0.0
        step = (redis_ms - last[0]) / 1000 - (local - last[1])
        return step if abs(step) >= STEP else 0.0
