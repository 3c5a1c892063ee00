"""Broker implementations behind one seam; `create_broker` picks one from the configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from webchat.broker.base import Broker

if TYPE_CHECKING:
    from webchat.config import Config
    from webchat.metrics import Metrics
    from webchat.tracing import Tracing


def create_broker(
    config: Config, node_id: str, metrics: Metrics | None = None, tracing: Tracing | None = None
) -> Broker:
    """The in-memory broker without a Redis URL, the Redis broker with one (imported lazily).

    `metrics` and `tracing` instrument the Redis broker's calls; the memory broker makes none.
    """
    if config.memory_broker:
        from webchat.broker.memory import MemoryBroker

        return MemoryBroker(history_size=config.history_size, room_ttl=config.room_ttl)
    from webchat.broker.redis import RedisBroker

    return RedisBroker(config, node_id, metrics, tracing)
