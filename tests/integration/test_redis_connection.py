"""Reaching Redis as production does: TLS (`rediss://`) and a password in the URL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.client import ChatClient
from tests.support.redis import RedisServer, fetch_history, http_get_status, wait_status
from tests.support.redis_traffic import FAST
from tests.support.servers import WebchatProcess
from tests.support.timing import seconds


@pytest.fixture
def tls_redis() -> Iterator[RedisServer]:
    server = RedisServer(tls=True, password="s3cret:/@x").start()
    yield server
    server.cleanup()


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    server = RedisServer(password="right").start()
    yield server
    server.cleanup()


async def test_two_instances_over_tls_with_a_password(tls_redis: RedisServer, session):
    assert tls_redis.url.startswith("rediss://:s3cret")
    with (
        WebchatProcess("--redis-url", tls_redis.url, *FAST) as a,
        WebchatProcess("--redis-url", tls_redis.url, *FAST) as b,
    ):
        alice = await asyncio.wait_for(
            ChatClient.connect(session, a.ws_url, room="r", name="alice"), seconds(10)
        )
        bob = await asyncio.wait_for(
            ChatClient.connect(session, b.ws_url, room="r", name="bob"), seconds(10)
        )
        assert sorted(bob.welcome["members"]) == ["alice", "bob"]
        assert (await alice.expect("presence"))["name"] == "bob"
        await bob.send("over tls", nonce="t1")
        echo = await bob.expect("message")
        assert await alice.expect("message") == echo
        assert await fetch_history(session, a.url, "r") == [echo]
        # The subscriber connections are TLS too: kill them, they come back and backfill.
        assert tls_redis.command("CLIENT", "KILL", "TYPE", "pubsub") == 2
        await alice.send("after the kill")
        echo = await alice.expect("message")
        assert await bob.expect("message") == echo
    for proc in (a, b):
        assert "Traceback" not in proc.log(), proc.log()
        assert "s3cret" not in proc.log(), "the password must not be logged"


async def test_a_wrong_password_keeps_the_instance_not_ready(password_redis: RedisServer, session):
    url = password_redis.url.replace(":right@", ":wrong@")
    proc = WebchatProcess("--redis-url", url, *FAST)
    try:
        proc.start(wait_ready=False)
        assert await http_get_status(session, proc.url + "/readyz") == 503
        # The password is fixed on the Redis side: the instance, still retrying, gets ready.
        password_redis.command("CONFIG", "SET", "requirepass", "wrong")
        await wait_status(session, proc.url + "/readyz", 200, timeout=10)
    finally:
        proc.stop()
    log = proc.log()
    assert "Traceback" not in log, log
    assert "wrong" not in log, "the password must not be logged"
