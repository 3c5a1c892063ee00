"""`--redis-replicas-ack 1` when the replica does not answer: `unavailable`, nothing shown early.

A master and one replica; the replica is frozen (SIGSTOP), so WAIT times out. The sender is
told `unavailable` and no client sees the message while the replica lacks it; once the replica
is back the message is delivered to everyone, once, and a resend with the same nonce is
answered with the original message (deduplicated), as PROTOCOL.md promises for any resend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import MakeServer
from tests.support.redis import RedisServer, fetch_history
from tests.support.redis_ha import REPLICATION, wait_in_sync
from tests.support.redis_traffic import FAST, connect


@pytest.fixture
def broker() -> str:
    return "redis"


@pytest.fixture
def replica(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A replica of the test's redis-server."""
    server = RedisServer(
        extra_args=[*REPLICATION, "--replicaof", "127.0.0.1", str(redis_server.port)]
    ).start()
    wait_in_sync(server)
    yield server
    server.thaw()
    server.cleanup()


async def test_unconfirmed_message_is_unavailable_then_delivered_once(
    make_server: MakeServer, replica: RedisServer, session
):
    server = make_server(*FAST, "--redis-replicas-ack", "1")
    alice = await connect(session, server, "alice")
    bob = await connect(session, server, "bob")

    await alice.client.send("one", nonce="n1")
    await bob.wait(lambda: len(bob.messages) == 1, 5, "the first message")
    await alice.wait(lambda: len(alice.messages) == 1, 5, "the first echo")

    replica.freeze()
    try:
        await alice.client.send("two", nonce="n2")
        await alice.wait(lambda: alice.errors, 5, "an error")
        assert [e["code"] for e in alice.errors] == ["unavailable"]
        # Written on the master, but no client may see it while a failover could lose it.
        assert [m["text"] for m in bob.messages + alice.messages] == ["one", "one"]
    finally:
        replica.thaw()

    # The replica catches up: the held message is confirmed and delivered, once.
    await bob.wait(lambda: len(bob.messages) == 2, 10, "the held message")
    await alice.client.send("two", nonce="n2")  # the client's resend after `unavailable`
    await alice.wait(
        lambda: [m["nonce"] for m in alice.messages].count("n2") >= 1, 10, "the answer to n2"
    )
    history = await fetch_history(session, server.url, "r")
    assert [m["text"] for m in history] == ["one", "two"]
    assert bob.messages == history
    assert {m["id"] for m in alice.messages if m["nonce"] == "n2"} == {history[1]["id"]}
    await alice.client.send("three", nonce="n3")
    await bob.wait(lambda: len(bob.messages) == 3, 5, "the next message")
    assert [m["text"] for m in await fetch_history(session, server.url, "r")] == [
        "one",
        "two",
        "three",
    ]
    for rec in (alice, bob):
        await rec.stop()
