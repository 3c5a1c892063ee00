"""Prometheus metrics, as an object passed to whoever records them (no module globals).

Labels come from small fixed sets only: never a room, a user name or a connection id.

With several workers (`webchat --workers N`) every worker records into files in one directory
(prometheus-client's multiprocess mode) and `/metrics` on any worker answers for all of them:
counters summed, `webchat_connected_users` summed over live workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# prometheus-client's own switch: when set as the library is imported, every metric value
# lives in a file in this directory. `webchat --workers` sets it before spawning the workers.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# `_created` series double the output and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint


def multiprocess_dir() -> str | None:
    """The directory this process's metric values are written to, or None (one process).

    prometheus-client decides at import from this environment variable, so Metrics reads the
    same variable rather than a Config field: the two must agree.
    """
    return os.environ.get(MULTIPROCESS_ENV) or None


class Metrics:
    """This process's metrics. `render()` is the /metrics body: for all workers if several."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir()
        self.registry = registry or CollectorRegistry()
        # In multiprocess mode the values are in files and `render` collects them from there;
        # registering as well would only let this process's own copy be rendered by mistake.
        target = None if self.multiprocess_dir else self.registry
        self.connected_users = Gauge(
            "webchat_connected_users",
            "WebSocket connections currently open (on all workers of this instance)",
            registry=target,
            # Workers: the sum over live workers; a dead worker's files are dropped by the
            # parent (mark_process_dead). Ignored with one process.
            multiprocess_mode="livesum",
        )
        self.messages = Counter(
            "webchat_messages",
            "Messages accepted from clients on this instance (duplicates not counted)",
            registry=target,
        )
        self.errors = Counter(
            "webchat_errors",
            "Error frames sent to clients, by protocol error code",
            ["code"],
            registry=target,
        )
        self.closes = Counter(
            "webchat_closes",
            "Connections closed by the server, by reason",
            ["reason"],
            registry=target,
        )
        self.http_refusals = Counter(
            "webchat_upgrade_refusals",
            "WebSocket upgrades refused before the handshake, by HTTP status",
            ["status"],
            registry=target,
        )

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape: the collector reads every worker's files each time.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint
        return generate_latest(registry)
