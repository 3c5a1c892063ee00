"""Redis broker: placeholder until the Redis broker issue lands."""

from __future__ import annotations

from webchat.config import Config


class RedisBroker:
    def __init__(self, config: Config, node_id: str) -> None:
        raise NotImplementedError("the Redis broker is not implemented yet; omit --redis-url")
