"""Prometheus metrics, as an object passed to whoever records them (no module globals).

Labels come from small fixed sets only: never a room, a user name or a connection id.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# `_created` series double the output and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client lacks a hint


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.connected_users = Gauge(
            "webchat_connected_users",
            "WebSocket connections currently open on this instance",
            registry=self.registry,
        )
        self.messages = Counter(
            "webchat_messages",
            "Messages accepted from clients on this instance (duplicates not counted)",
            registry=self.registry,
        )
        self.errors = Counter(
            "webchat_errors",
            "Error frames sent to clients, by protocol error code",
            ["code"],
            registry=self.registry,
        )
        self.closes = Counter(
            "webchat_closes",
            "Connections closed by the server, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.http_refusals = Counter(
            "webchat_upgrade_refusals",
            "WebSocket upgrades refused before the handshake, by HTTP status",
            ["status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
