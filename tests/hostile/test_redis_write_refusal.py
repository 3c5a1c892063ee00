"""A Redis that answers but refuses writes takes the instance out of the balancer, and back.

Issue 12: at `maxmemory` new clients got 101 and then 1013, sends `unavailable`, while
`/readyz` stayed 200 (the health check's PUBLISH is not a write, so Redis accepts it out of
memory), so no load balancer failed over. Each way Redis refuses writes is tried in turn on
one instance: out of memory, a read-only replica, MISCONF after a failed save. Within 2 s
`/readyz` and new upgrades answer 503 `unavailable`; when writes succeed again, both are back
within 2 s and a connected client's sends are accepted again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis import RedisServer, wait_status
from tests.support.redis_traffic import TRAFFIC, Sender, connect, upgrade_status
from tests.support.servers import WebchatProcess, free_port
from tests.support.timing import seconds


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    # `dir` is a protected setting: the MISCONF case points it where no save can succeed.
    server = RedisServer(extra_args=["--enable-protected-configs", "yes"]).start()
    yield server
    server.cleanup()


def faults(redis: RedisServer) -> dict[str, tuple[list[tuple[str, ...]], list[tuple[str, ...]]]]:
    """name -> (commands that make Redis refuse writes, commands that undo it)."""
    return {
        "out of memory": (
            [
                ("CONFIG", "SET", "maxmemory-policy", "noeviction"),
                ("CONFIG", "SET", "maxmemory", "1"),
            ],
            [("CONFIG", "SET", "maxmemory", "0")],
        ),
        # A replica of a master that does not exist: read-only, its data kept.
        "read-only replica": (
            [("REPLICAOF", "127.0.0.1", str(free_port()))],
            [("REPLICAOF", "NO", "ONE")],
        ),
        "MISCONF": (
            [("CONFIG", "SET", "save", "3600 1"), ("CONFIG", "SET", "dir", "/proc"), ("BGSAVE",)],
            [("CONFIG", "SET", "dir", str(redis.dir)), ("BGSAVE",)],
        ),
    }


async def test_redis_refusing_writes_is_not_ready_and_back(redis_server: RedisServer, session):
    # No admission on loop lag: only Redis may make an upgrade 503 here, not a loaded machine.
    server = WebchatProcess(
        "--redis-url", redis_server.url, *TRAFFIC, "--max-loop-lag", "0"
    ).start()
    try:
        alice = await connect(session, server, "alice")
        for name, (refuse, undo) in faults(redis_server).items():
            # Nobody sends while Redis starts refusing: the health check must notice alone.
            for command in refuse:
                redis_server.command(*command)
            took = await wait_status(session, server.url + "/readyz", 503, timeout=2)
            assert await upgrade_status(session, server) == 503, name
            sender = Sender(alice)
            await sender.until_unavailable()
            for command in undo:
                redis_server.command(*command)
            back = await wait_status(session, server.url + "/readyz", 200, timeout=2)
            assert await upgrade_status(session, server) == 101, name
            await sender.until(accepted=3)
            await sender.stop()
            print(f"{name}: not ready after {took:.2f} s, ready {back:.2f} s after the fix")
            assert took <= seconds(2) and back <= seconds(2), name
        assert alice.close_code is None, "connected clients stay"
        await alice.stop()
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log
    refusals = [line for line in log.splitlines() if "Redis refuses writes (" in line]
    for what in ("OutOfMemoryError", "ReadOnlyError", "MISCONF"):
        assert any(what in line for line in refusals), log
    assert log.count("Redis accepts writes again") == 3, log
