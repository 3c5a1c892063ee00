"""Broker implementations behind one seam; `create_broker` picks one from the configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from webchat.broker.base import Broker

if TYPE_CHECKING:
    from webchat.config import Config


def create_broker(config: Config, node_id: str) -> Broker:
    """The in-memory broker without a Redis URL, the Redis broker with one (imported lazily)."""
    if config.memory_broker:
        from webchat.broker.memory import MemoryBroker

        return MemoryBroker(history_size=config.history_size)
    from webchat.broker.redis import RedisBroker

    return RedisBroker(config, node_id)
