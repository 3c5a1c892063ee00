"""The Redis broker when Redis fails: restarted, frozen, down at start-up, data lost.

Every process of a test shares the test's redis-server, which keeps an AOF here, so a restart
brings its streams back as a production Redis with appendonly would.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import MakeServer
from tests.support.client import ChatClient
from tests.support.redis import RedisServer, fetch_history, http_get_status, wait_status
from tests.support.redis_traffic import (
    FAST,
    TRAFFIC,
    Sender,
    assert_everyone_has_history,
    connect,
    recovered,
    traffic_on_two,
    upgrade_status,
)
from tests.support.servers import ROOT, WebchatProcess
from tests.support.timing import seconds


@pytest.fixture
def broker() -> str:
    return "redis"


@pytest.fixture
def redis_appendonly() -> bool:
    return True


async def test_redis_restart_mid_traffic(make_server: MakeServer, redis_server, session):
    a, b = make_server(*TRAFFIC), make_server(*TRAFFIC)
    recs, senders = await traffic_on_two(session, a, b)

    await asyncio.to_thread(redis_server.stop)
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 503, timeout=2)
    for sender in senders:
        await sender.until_unavailable()
    assert await upgrade_status(session, a) == 503

    await asyncio.to_thread(redis_server.start)
    await recovered(session, (a, b), senders)

    history = await assert_everyone_has_history(session, b, recs)
    accepted = {nonce for sender in senders for nonce in sender.accepted}
    assert accepted <= {m["nonce"] for m in history}
    late = await connect(session, b, "late")  # upgrades are accepted again
    assert late.client.welcome is not None
    recs.append(late)
    for rec in recs:
        await rec.stop()


async def test_frozen_redis_is_unavailable_then_recovers(
    make_server: MakeServer, redis_server: RedisServer, session
):
    a, b = make_server(*TRAFFIC), make_server(*TRAFFIC)
    recs = [await connect(session, a, "sa"), await connect(session, b, "wb")]
    sender = Sender(recs[0])
    await sender.until(accepted=5)

    redis_server.freeze()  # SIGSTOP: sockets stay open, nothing answers
    try:
        for server in (a, b):
            await wait_status(session, server.url + "/readyz", 503, timeout=2)
        await sender.until_unavailable(timeout=10)
    finally:
        redis_server.thaw()
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 200, timeout=10)
    await sender.until(accepted=5)
    await sender.stop()
    await assert_everyone_has_history(session, a, recs)
    for rec in recs:
        await rec.stop()


@pytest.fixture
def absent_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.cleanup()


async def test_redis_down_at_startup(absent_redis: RedisServer, session):
    """The process runs without Redis, not ready; once Redis starts it becomes ready."""
    proc = WebchatProcess("--redis-url", absent_redis.url, *FAST)
    try:
        proc.start(wait_ready=False)
        assert await http_get_status(session, proc.url + "/healthz") == 200
        assert await http_get_status(session, proc.url + "/readyz") == 503
        assert await upgrade_status(session, proc) == 503
        async with session.get(proc.url + "/api/rooms/r/messages") as response:
            assert response.status == 503
        await asyncio.to_thread(absent_redis.start)
        await wait_status(session, proc.url + "/readyz", 200, timeout=10)
        alice = await connect(session, proc, "alice")
        await alice.client.send("hello")
        await alice.wait(lambda: len(alice.messages) == 1, 5, "the echo")
        assert alice.messages[0]["text"] == "hello"
        await alice.stop()
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()


def test_malformed_redis_url_exits_2_with_one_line():
    for url in ("redis://localhost:notaport", "http://localhost:6379", "redis://:6379/x"):
        result = subprocess.run(
            [sys.executable, "-m", "webchat", "--redis-url", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds(20),
        )
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--redis-url" in lines[0], result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize("redis_appendonly", [False])
async def test_redis_restarted_without_its_data(
    make_server: MakeServer, redis_server: RedisServer, session
):
    a, b = make_server(*TRAFFIC), make_server(*TRAFFIC)
    alice, bob = await connect(session, a, "alice"), await connect(session, b, "bob")
    for n in range(3):
        await alice.client.send(f"before {n}")
    for rec in (alice, bob):
        await rec.wait(lambda r=rec: len(r.messages) == 3, 5, "the first messages")

    seen = {rec.name: len(rec.presence) for rec in (alice, bob)}
    await asyncio.to_thread(redis_server.kill)  # no AOF: streams and presence are gone
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 503, timeout=2)
    await asyncio.to_thread(redis_server.start)
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 200, timeout=10)
    # Each instance re-joins the names it holds, so the other's clients see them (again).
    for rec, other in ((alice, "bob"), (bob, "alice")):
        await rec.wait(
            lambda r=rec, o=other: any(p["name"] == o for p in r.presence[seen[r.name] :]),
            10,
            f"{other} back",
        )
    carol = await asyncio.wait_for(
        ChatClient.connect(session, a.ws_url, room="r", name="carol"), seconds(10)
    )
    assert sorted(carol.welcome["members"]) == ["alice", "bob", "carol"]
    await carol.close()

    for n in range(3):
        await bob.client.send(f"after {n}")
    await bob.wait(lambda: len(bob.messages) == 6, 10, "the echoes")
    history = await fetch_history(session, a.url, "r")
    assert [m["text"] for m in history] == [f"after {n}" for n in range(3)]
    for rec in (alice, bob):
        await rec.wait(lambda r=rec: len(r.messages) == 6, 10, "the later messages")
        assert rec.messages[3:] == history
        assert rec.close_code is None
        await rec.stop()
