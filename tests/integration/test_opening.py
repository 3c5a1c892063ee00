"""A client that leaves while its welcome is still being prepared (the welcome's member read
waits for a frozen Redis) is forgotten at once: its session ends without waiting for Redis."""

from __future__ import annotations

import pytest

from tests.integration.conftest import ReadMetric
from tests.support.rawws import RawWebSocket
from tests.support.timing import poll

CONNECTED = "webchat_connected_users"


@pytest.fixture
def broker() -> str:
    return "redis"


async def test_a_client_leaving_during_its_welcome_ends_its_session_at_once(
    make_server, redis_server, read_metric: ReadMetric
):
    server = make_server()
    # A first tab holds the name: a second connection of it joins without Redis (the room is
    # subscribed, the name present), so it gets its 101 while Redis is frozen, and its
    # welcome (which reads the members from Redis) waits.
    first = await RawWebSocket.connect("127.0.0.1", server.port, "/ws?room=r&name=early")
    assert (await first.next_frame()).json()["type"] == "welcome"
    redis_server.freeze()
    try:
        raw = await RawWebSocket.connect("127.0.0.1", server.port, "/ws?room=r&name=early")
        await poll(lambda: _equals(read_metric(server, CONNECTED), 2), 5, "both counted")
        raw.close()
        # Well within the 1 s a Redis command may take before the broker gives up on it.
        await poll(lambda: _equals(read_metric(server, CONNECTED), 1), 0.8, "the session's end")
    finally:
        redis_server.thaw()
        first.close()


async def _equals(value, wanted: float) -> bool:  # type: ignore[no-untyped-def]
    return await value == wanted
