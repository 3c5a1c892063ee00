"""A client that leaves while its welcome is still being prepared (its join waits for a frozen
Redis) is forgotten at once: its session ends without waiting for Redis."""

from __future__ import annotations

import pytest

from tests.integration.conftest import ReadMetric
from tests.support.rawws import RawWebSocket
from tests.support.timing import poll

CONNECTED = "webchat_connected_users"


@pytest.fixture
def broker() -> str:
    return "redis"


async def test_a_client_leaving_during_its_join_ends_its_session_at_once(
    make_server, redis_server, read_metric: ReadMetric
):
    server = make_server()
    redis_server.freeze()  # the join's Redis calls now wait; the upgrade itself needs no Redis
    try:
        raw = await RawWebSocket.connect("127.0.0.1", server.port, "/ws?room=r&name=early")
        await poll(lambda: read_metric(server, CONNECTED), 5, "the connection counted")
        raw.close()
        # Well within the 1 s a Redis command may take before the broker gives up on it.
        await poll(lambda: _is_zero(read_metric(server, CONNECTED)), 0.8, "the session's end")
    finally:
        redis_server.thaw()


async def _is_zero(value) -> bool:  # type: ignore[no-untyped-def]
    return await value == 0
