"""Prometheus metrics, as an object passed to whoever records them (no module globals).

The catalogue (names, labels, meanings) is docs/observability.md's "Metrics" section; the
dashboards and alerts in monitoring/ read exactly these names.

Labels come from small fixed sets only, never a room, a user name or a connection id, and
every label value is created when the metric is, so each series exists (at 0) from the start
and `rate()` and absence alerts work before the first event.

Cost on the fan-out path: the hub calls `delivered` once per batch of messages, never once per
recipient; `webchat_deliveries_total` is incremented by the number of recipients at once.
Gauges that would need a walk over every connection (send-buffer bytes, rooms) are sampled by
background sweeps that already run (heartbeat.py, monitor.py), not kept up to date per write.

With several workers (`webchat --workers N`) every worker records into files in one directory
(prometheus-client's multiprocess mode) and `/metrics` on any worker answers for all of them:
counters and histograms summed, each gauge combined as its `multiprocess_mode` says.
prometheus-client keeps no exemplars in that mode, so the delivery-latency exemplars are kept
here and shared through a small file per worker in the same directory (see `ExemplarStore`).
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from webchat.broker.base import Message

# prometheus-client's own switch: when set as the library is imported, every metric value
# lives in a file in this directory. `webchat --workers` sets it before spawning the workers.
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# `_created` series double the output and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint

# Latencies from 0.5 ms to 10 s in 1-2-5 steps: p50 and p99 readable by interpolation within
# a factor of 2.5 anywhere in that range, in 14 buckets (15 series with +Inf per histogram).
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
# Local recipients of one message: from a private chat to the largest rooms measured.
FANOUT_BUCKETS: Final = (
    0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
)  # fmt: skip

# The fixed label sets. Other values may appear (a later status code), never user input.
CONNECTION_STATUSES: Final = (
    "accepted",
    "bad_request",
    "forbidden_origin",
    "name_taken",
    "unavailable",  # also: overloaded (event-loop lag) or at --max-connections
    "unknown_host",  # a Host not in --allowed-hosts (421)
    "unauthorized",  # authenticated mode: no valid token (why: webchat_auth_failures_total)
    "forbidden_room",  # authenticated mode: the token does not allow the room
)
DISCONNECT_REASONS: Final = (
    "client",  # the client closed, or its TCP connection ended
    "timeout",  # no frame, not even a pong, for two heartbeat intervals
    "slow_client",  # its send buffer overflowed, or held data too long: closed 1013
    "rate_limit_abuse",  # 3 x burst rate_limited errors in a row: closed 1008
    "drain",  # the instance is shutting down: closed 1012
    "gap",  # history was trimmed past what it was sent: closed 1013 to resume into a gap
    "token_expired",  # authenticated mode: its token expired unrefreshed: closed 4001
    "error",  # the server could not serve it: broker unreachable while joining, bad frame
)
ERROR_TYPES: Final = (
    "bad_json",
    "bad_type",
    "bad_message",
    "rate_limited",
    "unavailable",
    "unauthorized",  # a refresh frame whose token was refused (the connection stays)
    "internal",  # an error logged by the service itself (a bug, a failed background task)
)
# Why a token was refused (HTTP 401 on /ws and /api/, or a refused refresh frame).
AUTH_FAILURE_REASONS: Final = (
    "missing",  # no token in the request
    "malformed",  # not a JWT
    "bad_algorithm",  # `alg` is none or another algorithm than the configured one
    "unknown_key",  # JWKS: no key has the token's `kid`
    "bad_signature",
    "expired",
    "not_yet_valid",  # `nbf` or `iat` in the future
    "wrong_audience",
    "wrong_issuer",
    "bad_claims",  # `sub`, `exp`, `name` or `rooms` missing or invalid
    "other_user",  # a refresh token for another `sub` than the connection's
)
REDIS_OPERATIONS: Final = (
    "publish",  # the publish script: dedupe, XADD, PUBLISH
    "history",  # history reads (replay, HTTP API)
    "subscribe",  # a room's stream heads and its SUBSCRIBE, until confirmed
    "unsubscribe",
    "backfill",  # reading what subscribed rooms missed, after a reconnect or a subscribe
    # a node's batched presence work: joins, leaves and member listings of every room with
    # some, one script per room in one pipeline (redis_presence.py)
    "presence_batch",
    "presence_refresh",
    "presence_reap",
    "presence_holder",  # which key holds a name, read before an upgrade
    "room_index",  # a node's batched update of the room index (GET /api/rooms)
    "rooms",  # the room listing read (GET /api/rooms, cached per node)
    "ping",  # the health check's self-ping
    "confirm",  # --redis-replicas-ack: a write and WAIT, before history or held messages are shown
    "commit",  # --redis-replicas-ack: releasing a confirmed message to the subscribers
    "topology",  # Redis Cluster: relearning which master serves which slots
    "write_probe",  # the health check's tiny SET: does Redis accept writes (OOM, replica)?
    "keep_alive",  # pushing back the TTL of the histories of rooms with members here
)
EXEMPLAR_FILE_PREFIX: Final = "exemplars_"


def multiprocess_dir() -> str | None:
    """The directory this process's metric values are written to, or None (one process).

    prometheus-client decides at import from this environment variable, so Metrics reads the
    same variable rather than a Config field: the two must agree.
    """
    return os.environ.get(MULTIPROCESS_ENV) or None


def forget_process(pid: int, path: str) -> None:
    """A worker died: drop its live gauges and its exemplars (called by the supervisor)."""
    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(path, f"{EXEMPLAR_FILE_PREFIX}{pid}.json"))


def build_version() -> str:
    try:
        return version("webchat")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def sampled_trace_id(trace: dict[str, str] | None) -> str | None:
    """The trace id of a W3C `traceparent` whose sampled flag is set, else None.

    Pure string slicing, so metrics need no OpenTelemetry import: `00-<trace>-<span>-<flags>`.
    """
    if not trace:
        return None
    parent = trace.get("traceparent")
    if parent is None or len(parent) != 55 or parent[2] != "-" or parent[35] != "-":
        return None
    try:
        sampled = int(parent[53:55], 16) & 1
    except ValueError:
        return None
    return parent[3:35] if sampled else None


class ExemplarStore:
    """Delivery-latency exemplars of this worker, shared with the others through a file.

    prometheus-client drops exemplars in multiprocess mode. This keeps the newest exemplar
    per bucket in memory (cheap: only sampled messages have one), writes them to
    `exemplars_<pid>.json` in the metrics directory once a second when changed (atomically),
    and at scrape time attaches, per bucket, the newest exemplar of any worker.
    """

    def __init__(self, path: str, bounds: Sequence[float]) -> None:
        self._path = path
        self._file = os.path.join(path, f"{EXEMPLAR_FILE_PREFIX}{os.getpid()}.json")
        self._bounds = list(bounds)
        # The `le` label as prometheus-client writes it.
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint
        self._latest: dict[str, tuple[str, float, float]] = {}
        self._dirty = False

    def observe(self, value: float, trace_id: str) -> None:
        le = self._les[bisect.bisect_left(self._bounds, value)]
        self._latest[le] = (trace_id, value, time.time())
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        temporary = f"{self._file}.tmp"
        with open(temporary, "w") as out:
            json.dump(self._latest, out)
        os.replace(temporary, self._file)

    def merged(self) -> dict[str, tuple[str, float, float]]:
        """Per `le`, the newest exemplar any worker wrote."""
        merged: dict[str, tuple[str, float, float]] = {}
        for name in glob.glob(os.path.join(self._path, f"{EXEMPLAR_FILE_PREFIX}*.json")):
            try:
                with open(name) as data:
                    entries = json.load(data)
            except (OSError, ValueError):  # a worker that just died, or a partial file
                continue
            for le, (trace_id, value, stamp) in entries.items():
                if le not in merged or merged[le][2] < stamp:
                    merged[le] = (str(trace_id), float(value), float(stamp))
        return merged


class _MultiProcessWithExemplars(Collector):
    """Every worker's values (prometheus-client's collector) plus the shared exemplars."""

    def __init__(self, path: str, store: ExemplarStore, histogram: str) -> None:
        self._values = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint
        self._store = store
        self._bucket = f"{histogram}_bucket"

    def collect(self) -> list[Metric]:
        metrics: list[Metric] = list(self._values.collect())  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint
        exemplars = self._store.merged()
        if not exemplars:
            return metrics
        for metric in metrics:
            metric.samples = [
                sample._replace(exemplar=Exemplar({"trace_id": found[0]}, found[1], found[2]))
                if sample.name == self._bucket and (found := exemplars.get(sample.labels["le"]))
                else sample
                for sample in metric.samples
            ]
        return metrics


class _ErrorLogCounter(logging.Handler):
    """Counts ERROR records of the service's loggers as `webchat_errors_total{type="internal"}`.

    Every failure the service catches and survives is logged (a crashed loop, a failed
    handler); counting the log records counts them all without a call at each site.
    """

    def __init__(self, counter: Any) -> None:
        super().__init__(logging.ERROR)
        self._counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        self._counter.inc()


class Metrics:
    """This process's metrics. `render()` is the /metrics body: for all workers if several."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir()
        self.registry = registry or CollectorRegistry()
        # In multiprocess mode the values are in files and `render` collects them from there;
        # registering as well would only let this process's own copy be rendered by mistake.
        target = None if self.multiprocess_dir else self.registry
        self.build_info = Gauge(
            "webchat_build_info",
            "The running build: always 1, with its version and Python's",
            ["version", "python"],
            registry=target,
            multiprocess_mode="livemax",  # one series, not one per worker
        )
        self.build_info.labels(build_version(), platform.python_version()).set(1)
        self.connected_users = Gauge(
            "webchat_connected_users",
            "WebSocket connections currently open (on all workers of this instance)",
            registry=target,
            # Workers: the sum over live workers; a dead worker's files are dropped by the
            # parent (forget_process). Ignored with one process.
            multiprocess_mode="livesum",
        )
        self.connections = Counter(
            "webchat_connections",
            "WebSocket upgrade attempts by outcome: accepted, or the refusal's error code",
            ["status"],
            registry=target,
        )
        self.disconnections = Counter(
            "webchat_disconnections",
            "WebSocket connections that ended, by why (each connection counted once)",
            ["reason"],
            registry=target,
        )
        self.messages = Counter(
            "webchat_messages",
            "Messages accepted from clients on this instance (duplicates not counted)",
            registry=target,
        )
        self.message_latency = Histogram(
            "webchat_message_latency_seconds",
            "From a client's message frame received to its acceptance by the broker (the ack)",
            registry=target,
            buckets=LATENCY_BUCKETS,
        )
        self.delivery_latency = Histogram(
            "webchat_delivery_latency_seconds",
            "From the broker's acceptance of a message to its write into the local recipients'"
            " send buffers; once per message per instance",
            registry=target,
            buckets=LATENCY_BUCKETS,
        )
        self.fanout_recipients = Histogram(
            "webchat_fanout_recipients",
            "Local recipients of each message delivered on this instance",
            registry=target,
            buckets=FANOUT_BUCKETS,
        )
        self.deliveries = Counter(
            "webchat_deliveries",
            "Message frames handed to local connections (messages x recipients)",
            registry=target,
        )
        self.send_buffer_bytes = Gauge(
            "webchat_send_buffer_bytes",
            "Bytes held for clients: unsent socket buffers and frames held before the welcome",
            registry=target,
            multiprocess_mode="livesum",
        )
        self.broker_ready = Gauge(
            "webchat_broker_ready",
            "1 while the message broker is reachable, else 0 (workers: the least ready)",
            registry=target,
            multiprocess_mode="livemin",
        )
        self.broker_reconnects = Counter(
            "webchat_broker_reconnects",
            "Reconnections of the broker's subscription (Redis pub/sub) after losing it",
            registry=target,
        )
        self.rooms_active = Gauge(
            "webchat_rooms_active",
            "Rooms with local members (workers: summed, a room on two workers counts twice)",
            registry=target,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Gauge(
            "webchat_event_loop_lag_seconds",
            "The event loop's worst lag running a timer over the last second (workers: the"
            " worst worker)",
            registry=target,
            multiprocess_mode="livemax",
        )
        self.loop_lag_hist = Histogram(
            "webchat_event_loop_lag_seconds_hist",
            "Every probe of the event loop's lag (10 a second): its distribution over time",
            registry=target,
            buckets=LATENCY_BUCKETS,
        )
        self.redis_operations = Counter(
            "webchat_redis_operations",
            "Redis commands, scripts and pipelines by kind and outcome",
            ["operation", "status"],
            registry=target,
        )
        self.redis_latency = Histogram(
            "webchat_redis_latency_seconds",
            "Redis command, script and pipeline round trips, by kind (errors included)",
            ["operation"],
            registry=target,
            buckets=LATENCY_BUCKETS,
        )
        self.errors = Counter(
            "webchat_errors",
            "Error frames sent to clients, by protocol error code, and internal errors",
            ["type"],
            registry=target,
        )
        self.auth_failures = Counter(
            "webchat_auth_failures",
            "Tokens refused (HTTP 401 on /ws and /api/, refused refresh frames), by why",
            ["reason"],
            registry=target,
        )
        self._status = {s: self.connections.labels(s) for s in CONNECTION_STATUSES}
        self._auth = {r: self.auth_failures.labels(r) for r in AUTH_FAILURE_REASONS}
        self._reasons = {r: self.disconnections.labels(r) for r in DISCONNECT_REASONS}
        self._errors = {t: self.errors.labels(t) for t in ERROR_TYPES}
        self._log_counter = _ErrorLogCounter(self._errors["internal"])
        self.exemplars: ExemplarStore | None = None
        if self.multiprocess_dir:
            self.exemplars = ExemplarStore(self.multiprocess_dir, LATENCY_BUCKETS)
            self.registry.register(
                _MultiProcessWithExemplars(
                    self.multiprocess_dir, self.exemplars, "webchat_delivery_latency_seconds"
                )
            )

    # --- recording ----------------------------------------------------------------------

    def upgrade(self, status: str) -> None:
        """One upgrade attempt: `accepted`, or the refusal's error code (`bad_request`...)."""
        counter = self._status.get(status)
        (counter or self.connections.labels(status)).inc()

    def auth_failure(self, reason: str) -> None:
        """A token refused, for one of AUTH_FAILURE_REASONS."""
        counter = self._auth.get(reason)
        (counter or self.auth_failures.labels(reason)).inc()

    def disconnected(self, reason: str) -> None:
        counter = self._reasons.get(reason)
        (counter or self.disconnections.labels(reason)).inc()

    def error(self, code: str) -> None:
        counter = self._errors.get(code)
        (counter or self.errors.labels(code)).inc()

    def delivered(self, messages: Sequence[Message], recipients: int) -> None:
        """A batch was written to `recipients` local connections: O(messages), not O(N).

        Delivery latency needs the broker's acceptance time in microseconds; messages without
        it (backfilled from the streams after an outage) are counted but not timed, since
        their latency is the outage, which `webchat_broker_ready` shows.
        """
        now_us = time.time_ns() // 1000
        self.deliveries.inc(recipients * len(messages))
        fanout = self.fanout_recipients
        latency = self.delivery_latency
        for message in messages:
            fanout.observe(recipients)
            accepted = message.accepted_us
            if accepted is None:
                continue
            # Broker clock vs this host's clock: a skew below zero is clamped, not dropped.
            seconds = max(0.0, (now_us - accepted) / 1e6)
            trace_id = sampled_trace_id(message.trace) if message.trace else None
            if trace_id is None:
                latency.observe(seconds)
            elif self.exemplars is not None:
                latency.observe(seconds)
                self.exemplars.observe(seconds, trace_id)
            else:
                latency.observe(seconds, {"trace_id": trace_id})

    # --- lifecycle ----------------------------------------------------------------------

    def count_logged_errors(self, loggers: Sequence[str] = ("webchat", "aiohttp")) -> None:
        """Count ERROR records of these loggers as internal errors, until `stop_counting`."""
        for name in loggers:
            logging.getLogger(name).addHandler(self._log_counter)

    def stop_counting(self, loggers: Sequence[str] = ("webchat", "aiohttp")) -> None:
        for name in loggers:
            logging.getLogger(name).removeHandler(self._log_counter)

    def flush(self) -> None:
        """Periodic work (monitor.py, once a second): share exemplars with the other workers."""
        if self.exemplars is not None:
            self.exemplars.flush()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The /metrics body and its content type.

        OpenMetrics (which carries exemplars) when the scraper's Accept header asks for it, as
        Prometheus does with exemplar storage on; the classic text format otherwise.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
