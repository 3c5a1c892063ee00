"""Timing, counting and tracing the Redis broker's calls, by kind of operation.

Measured on the command side (a script, a pipeline, a SUBSCRIBE until confirmed), never per
pub/sub message read, so the cost is per message published, not per delivery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from webchat.metrics import REDIS_OPERATIONS, Metrics
from webchat.redis_url import RedisTarget, parse_redis_url

if TYPE_CHECKING:
    from webchat.tracing import Tracing

T = TypeVar("T")

# The Redis command behind each operation, as a CLIENT span's name (db.operation.name).
COMMANDS: Final = {
    "publish": "EVALSHA",
    "history": "XRANGE",
    "subscribe": "SUBSCRIBE",
    "unsubscribe": "UNSUBSCRIBE",
    "backfill": "XRANGE",
    "presence_batch": "EVALSHA",
    "presence_refresh": "EVALSHA",
    "presence_reap": "EVALSHA",
    "presence_holder": "EVALSHA",
    "room_index": "EVALSHA",
    "rooms": "EVALSHA",
    "ping": "PUBLISH",
    "confirm": "WAIT",
    "commit": "PUBLISH",
    "topology": "CLUSTER SLOTS",
    "write_probe": "SET",
    "keep_alive": "PEXPIRE",
}


class RedisOps:
    """`await ops.call("publish", coroutine)`: the coroutine's result, timed and counted.

    Label children are resolved once here, so a call costs two clock reads, a counter
    increment and a histogram observation (~2 µs), plus a span only inside a sampled trace.
    """

    def __init__(self, metrics: Metrics, tracing: Tracing | None, url: str | RedisTarget) -> None:
        self._ok = {op: metrics.redis_operations.labels(op, "ok") for op in REDIS_OPERATIONS}
        self._error = {op: metrics.redis_operations.labels(op, "error") for op in REDIS_OPERATIONS}
        self._latency = {op: metrics.redis_latency.labels(op) for op in REDIS_OPERATIONS}
        self._tracing = tracing
        target = parse_redis_url(url) if isinstance(url, str) else url
        self._span_attributes: dict[str, Any] = {"db.system.name": "redis"}
        host, port = target.address
        if host:
            self._span_attributes["server.address"] = host
            self._span_attributes["server.port"] = port
        if target.kind != "cluster":  # a cluster has database 0 only
            self._span_attributes["db.namespace"] = str(target.db)

    async def call(self, operation: str, awaitable: Awaitable[T]) -> T:
        span = None
        if self._tracing is not None:
            command = COMMANDS[operation]
            span = self._tracing.client_span(
                command,
                lambda: {
                    **self._span_attributes,
                    "db.operation.name": command,
                    "webchat.redis.operation": operation,
                },
            )
        start = time.perf_counter()
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if span is not None:
                span.end()
            raise
        except BaseException as exc:
            self._latency[operation].observe(time.perf_counter() - start)
            self._error[operation].inc()
            if span is not None:
                span.record_exception(exc)
                from opentelemetry.trace import Status, StatusCode  # loaded: tracing is on

                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        self._latency[operation].observe(time.perf_counter() - start)
        self._ok[operation].inc()
        if span is not None:
            span.end()
        return result
