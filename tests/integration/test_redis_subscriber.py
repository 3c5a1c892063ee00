"""The Redis broker's subscriber connection failing while Redis itself is fine.

Killed (`CLIENT KILL`, or by Redis for exceeding its output buffer limit) or silent (a link
that stops delivering): each instance notices, reports not ready meanwhile, reconnects and
backfills from the streams, so every client still gets every message exactly once, in order.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.conftest import MakeServer
from tests.support.reconnecting import ReconnectingClient
from tests.support.redis import RedisServer, StallProxy, fetch_history, wait_status
from tests.support.redis_traffic import (
    TRAFFIC,
    Sender,
    assert_everyone_has_history,
    connect,
)
from tests.support.timing import poll, seconds


@pytest.fixture
def broker() -> str:
    return "redis"


async def test_killed_pubsub_connections_recover_and_backfill(
    make_server: MakeServer, redis_server: RedisServer, session
):
    a, b = make_server(*TRAFFIC), make_server(*TRAFFIC)
    alice, bob = await connect(session, a, "alice"), await connect(session, b, "bob")
    carol = await connect(session, b, "carol")
    await alice.client.send("before")
    for rec in (alice, bob):
        await rec.wait(lambda r=rec: len(r.messages) == 1, 5, "the first message")
    await alice.wait(lambda: len(alice.presence) == 2, 5, "bob's and carol's joins")

    # Kill every subscriber connection and keep them from coming back for a while, so what
    # is published meanwhile can only arrive by backfill from the stream.
    redis_server.command("ACL", "SETUSER", "default", "-subscribe")
    assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") == 2
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 503, timeout=2)
    for n in range(5):
        await alice.client.send(f"meanwhile {n}")
        await bob.client.send(f"meanwhile from b {n}")
    await carol.stop()
    await carol.client.close()  # her leave is announced while nobody is subscribed
    with redis_server.client() as client:
        await poll(
            lambda: client.xlen("wc:{r}:h") >= 11 and not client.hexists("wc:{r}:p", "carol"),
            10,
            "the sends and carol's leave in Redis",
        )
    assert alice.errors == bob.errors == []
    assert len(alice.messages) == len(bob.messages) == 1  # nothing delivered live meanwhile
    assert len(alice.presence) == 2

    redis_server.command("ACL", "SETUSER", "default", "+subscribe")
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 200, timeout=10)
    await alice.client.send("after")
    history = await assert_everyone_has_history(session, a, [alice, bob])
    assert len(history) == 12 and history[-1]["text"] == "after"
    # The leave published while a was not subscribed reached alice by backfill too.
    assert alice.presence[2:] == [
        {"type": "presence", "room": "r", "event": "leave", "name": "carol"}
    ]

    # Once more, under traffic and without the ACL: the subscribers reconnect at once.
    sender = Sender(await connect(session, b, "sb"))
    await sender.until(accepted=5)
    assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") == 2
    await sender.until(accepted=20)
    await sender.stop()
    await assert_everyone_has_history(session, a, [alice, bob, sender.rec])
    assert sender.unavailable == 0
    for rec in (alice, bob, sender.rec):
        await rec.stop()


async def test_a_silently_dead_subscriber_is_detected_and_backfilled(
    make_server: MakeServer, redis_server: RedisServer, session
):
    async with StallProxy(redis_server.port) as proxy:
        # Instance a reaches Redis through the proxy (the later --redis-url wins), b directly.
        # Started in a thread: the proxy runs in this event loop, which must keep running.
        a = await asyncio.to_thread(make_server, *TRAFFIC, "--redis-url", proxy.url())
        # b too: a blocked loop would stall the proxy, and a's health check with it.
        b = await asyncio.to_thread(make_server, *TRAFFIC)
        rx = await connect(session, a, "rx")
        tx = await connect(session, b, "tx")
        await tx.client.send("before")
        await rx.wait(lambda: len(rx.messages) == 1, 5, "the first message")

        # Stall a's subscriber connection: its socket stays open, nothing arrives on it.
        proxied = {link.upstream_port: link for link in proxy.links}
        subscribers = [
            c
            for c in redis_server.command("CLIENT", "LIST", "TYPE", "pubsub").decode().split("\n")
            if c
        ]
        ports = [
            int(field.split(":")[-1])
            for c in subscribers
            for field in c.split()
            if field.startswith("addr=")
        ]
        stalled = [proxied[port] for port in ports if port in proxied]
        assert len(subscribers) == 2 and len(stalled) == 1, subscribers
        stalled[0].stall()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(3):
            await tx.client.send(f"during {n}")
        await tx.wait(lambda: len(tx.messages) == 4, 5, "the echoes on b")

        await rx.wait(lambda: len(rx.messages) == 4, 10, "the backfilled messages")
        assert loop.time() - started < seconds(5)
        await tx.client.send("after")
        await assert_everyone_has_history(session, b, [rx, tx])
        assert "looks dead (self-ping not back" in a.log(), a.log()
        for rec in (rx, tx):
            await rec.stop()


async def test_a_subscriber_killed_for_its_output_buffer_recovers(
    make_server: MakeServer, redis_server: RedisServer, session
):
    """A node too slow to read its pub/sub connection is cut off by Redis, then catches up.

    The catch-up is a burst its client may not keep up with either: the client is then closed
    1013 and resumes with `since`, as the protocol says, so it too ends with every message.
    """
    flags = (*TRAFFIC, "--rate", "100000", "--burst", "100000")
    a, b = make_server(*flags), make_server(*flags)
    rx = await ReconnectingClient(session, a.ws_url, room="r", name="rx").start()
    tx = await connect(session, b, "tx")
    redis_server.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 0 0")
    text = "x" * 1900
    count = 6000  # about 12 MB: past what the socket buffers hold, and the 64 KiB limit

    a.signal(signal.SIGSTOP)  # a stops reading; Redis buffers, then cuts it off
    try:
        for n in range(count):
            await tx.client.send(f"{n} {text}")
        await tx.wait(lambda: len(tx.messages) == count, 60, "every echo on b")
        await poll(
            lambda: "output buffer limits" in redis_server.log(), 10, "the output buffer kill"
        )
    finally:
        a.signal(signal.SIGCONT)
    await wait_status(session, a.url + "/readyz", 200, timeout=10)
    history = await fetch_history(session, b.url, "r")
    assert [m["id"] for m in history] == [m["id"] for m in tx.messages]
    await rx.wait(lambda: len(rx.messages) >= count, 60, "every message on a")
    assert rx.messages == history and rx.duplicates == [] and rx.gaps == 0
    assert "looks dead" in a.log() or "connection failed" in a.log(), a.log()
    await rx.stop()
    await tx.stop()


async def test_messages_trimmed_while_unsubscribed_make_clients_resume_with_a_gap(
    make_server: MakeServer, redis_server: RedisServer, session
):
    """More messages than history holds are published while b's subscriber is down: b cannot
    deliver the trimmed ones, so its clients are closed 1013 and resume into a `gap` frame."""
    a = make_server(*TRAFFIC, "--history-size", "5")
    b = make_server(*TRAFFIC, "--history-size", "5")
    alice = await connect(session, a, "alice")
    bob = await ReconnectingClient(session, b.ws_url, room="r", name="bob").start()
    await alice.client.send("before")
    await bob.wait(lambda: len(bob.messages) == 1, 5, "the first message")

    redis_server.command("ACL", "SETUSER", "default", "-subscribe")
    assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") == 2
    await wait_status(session, b.url + "/readyz", 503, timeout=2)
    for n in range(8):
        await alice.client.send(f"meanwhile {n}")
    with redis_server.client() as client:
        await poll(lambda: client.xinfo_stream("wc:{r}:h")["entries-added"] >= 9, 10, "9 stored")
    redis_server.command("ACL", "SETUSER", "default", "+subscribe")

    await bob.wait(lambda: bob.gaps == 1 and len(bob.messages) == 6, 10, "a resume into a gap")
    assert 1013 in bob.close_codes
    history = await fetch_history(session, a.url, "r")
    assert [m["id"] for m in bob.messages[1:]] == [m["id"] for m in history]
    assert [m["text"] for m in history] == [f"meanwhile {n}" for n in range(3, 8)]
    await bob.stop()
    await alice.client.close()
