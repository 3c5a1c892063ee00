"""Many samples into Locust's statistics at once: one call per flush, not one per delivery.

Locust's `events.request.fire` costs ~4.5 us per sample on this machine (its listener updates two
StatsEntry objects): at 50,000 deliveries/s that alone is a quarter of a core. The receivers
instead count deliveries in a local histogram keyed exactly as Locust keys its own
(`locust.stats.bucket_response_time`), and `log_many` adds it to the same StatsEntry fields that
`StatsEntry.log` updates, a few times a second. The CSV, the web UI, distributed mode (workers
ship these entries to the master) and the percentiles all see ordinary entries; only listeners of
`events.request` do not see the deliveries one by one.

Failures the same way: `fail_many` is `RequestStats.log_error` n times over, as one update.
"""

from __future__ import annotations

import time
from typing import Any

from locust.stats import RequestStats, StatsEntry, StatsError, bucket_response_time

__all__ = ["Histogram", "bucket_response_time", "fail_many", "log_many"]

REQUEST_TYPE = "WS"


class Histogram:
    """Delivery latencies in Locust's buckets, plus what StatsEntry keeps beside them."""

    __slots__ = ("bytes", "count", "max", "min", "sum", "times")

    def __init__(self) -> None:
        self.times: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = 0.0
        self.bytes = 0

    def add(self, ms: float, length: int) -> None:
        key = round(ms) if ms < 100 else bucket_response_time(ms)
        times = self.times
        times[key] = times.get(key, 0) + 1
        self.count += 1
        self.sum += ms
        if ms > self.max:
            self.max = ms
        if ms < self.min:
            self.min = ms
        self.bytes += length


def _log_entry(entry: StatsEntry, hist: Histogram, now: float) -> None:
    t = int(now)
    if (
        entry.use_response_times_cache
        and entry.last_request_timestamp
        and t > int(entry.last_request_timestamp)
    ):
        entry._cache_response_times(t - 1)
    entry.num_requests += hist.count
    entry.num_reqs_per_sec[t] += hist.count
    entry.last_request_timestamp = now
    entry.total_response_time += hist.sum  # type: ignore[assignment]  # Locust sums floats too
    if entry.min_response_time is None or hist.min < entry.min_response_time:
        entry.min_response_time = hist.min  # type: ignore[assignment]
    if hist.max > entry.max_response_time:
        entry.max_response_time = hist.max  # type: ignore[assignment]
    times = entry.response_times
    for key, n in hist.times.items():
        times[key] += n
    entry.total_content_length += hist.bytes


def log_many(stats: RequestStats, name: str, hist: Histogram) -> None:
    """Add `hist` to entry (WS, name) and to the total, as `hist.count` calls of `log` would."""
    if not hist.count:
        return
    now = time.time()
    _log_entry(stats.total, hist, now)
    _log_entry(stats.entries[(name, REQUEST_TYPE)], hist, now)


def fail_many(stats: RequestStats, name: str, error: str, n: int) -> None:
    """Record `n` failures of (WS, name) with the same error text."""
    if n <= 0:
        return
    t = int(time.time())
    for entry in (stats.total, stats.entries[(name, REQUEST_TYPE)]):
        entry.num_failures += n
        entry.num_fail_per_sec[t] += n
    key = StatsError.create_key(REQUEST_TYPE, name, error)
    found: Any = stats.errors.get(key)
    if found is None:
        found = stats.errors[key] = StatsError(REQUEST_TYPE, name, error)
    found.occurred()
    found.occurrences += n - 1
