"""Two webchat processes on one real redis-server behave as one service.

Every process a test makes shares that test's redis-server (see `broker_args` in conftest).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import MakeServer
from tests.support.client import ChatClient
from tests.support.redis import RedisServer, fetch_history
from tests.support.redis_traffic import FAST, assert_one_order_with_concurrent_senders
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds


@pytest.fixture
def broker() -> str:
    return "redis"


async def connect(
    session: aiohttp.ClientSession, server: WebchatProcess, name: str, room: str = "r"
) -> ChatClient:
    return await asyncio.wait_for(
        ChatClient.connect(session, server.ws_url, room=room, name=name), seconds(10)
    )


async def test_messages_and_presence_cross_instances(make_server: MakeServer, session):
    a, b = make_server(*FAST), make_server(*FAST)
    alice = await connect(session, a, "alice")
    bob = await connect(session, b, "bob")
    assert sorted(bob.welcome["members"]) == ["alice", "bob"]
    assert bob.welcome["member_count"] == 2
    assert await alice.expect("presence") == {
        "type": "presence",
        "room": "r",
        "event": "join",
        "name": "bob",
    }

    await alice.send("from a", nonce="n1")
    echo = await alice.expect("message")
    assert await bob.expect("message") == echo
    assert echo["text"] == "from a" and echo["nonce"] == "n1"
    await bob.send("from b")
    echo = await bob.expect("message")
    assert await alice.expect("message") == echo and "nonce" not in echo

    # A client of another room on instance b does not see room r.
    carol = await connect(session, b, "carol", room="other")
    await alice.send("only r")
    assert await bob.expect("message") == await alice.expect("message")
    await carol.send("only other")
    assert (await carol.expect("message"))["text"] == "only other"

    # Leaving on b reaches a after the grace period.
    await bob.close()
    leave = await alice.expect("presence")
    assert leave == {"type": "presence", "room": "r", "event": "leave", "name": "bob"}
    dave = await connect(session, a, "dave")
    assert sorted(dave.welcome["members"]) == ["alice", "dave"]


async def test_one_order_for_every_receiver_with_concurrent_senders(
    make_server: MakeServer, session
):
    flags = (*FAST, "--rate", "5000", "--burst", "5000", "--history-size", "5000")
    a, b = make_server(*flags), make_server(*flags)
    per_sender = 250
    senders = [await connect(session, server, f"s{i}") for i, server in enumerate((a, a, b, b))]
    watchers = [await connect(session, a, "wa"), await connect(session, b, "wb")]
    recorders = await assert_one_order_with_concurrent_senders(
        session, a.url, senders, watchers, per_sender, timeout=60
    )
    for rec in recorders:
        await rec.stop()


async def test_idempotent_send_across_instances(make_server: MakeServer, session):
    a, b = make_server(*FAST), make_server(*FAST)
    bob = await connect(session, a, "bob")
    alice = await connect(session, a, "alice")
    await alice.send("hello", nonce="k1")
    original = await alice.expect("message")
    assert await bob.next_of("message") == original

    # The same sender resends on another instance after a reconnect: it gets the original
    # back, and nobody gets the message twice.
    await alice.close()
    again = await connect(session, b, "alice")
    await again.send("hello (resent)", nonce="k1")
    assert await again.expect("message") == original
    # Another name's nonce is its own.
    carol = await connect(session, b, "carol")
    await carol.send("mine", nonce="k1")
    mine = await carol.expect("message")
    assert mine["id"] != original["id"]
    assert await bob.next_of("message") == mine  # not a copy of the original first
    history = await fetch_history(session, b.url, "r")
    assert [m["id"] for m in history] == [original["id"], mine["id"]]


async def test_members_of_a_killed_instance_leave_within_the_presence_timeout(
    make_server: MakeServer, session
):
    timeout = 3.0
    flags = (*FAST, "--presence-timeout", str(timeout))
    a, b = make_server(*flags), make_server(*flags)
    alice = await connect(session, a, "alice")
    bob = await connect(session, b, "bob")
    carol = await connect(session, b, "carol")
    joined = [await alice.expect("presence"), await alice.expect("presence")]
    assert [(p["event"], p["name"]) for p in joined] == [("join", "bob"), ("join", "carol")]
    # A name held on both instances stays present while either holds it.
    alice_on_b = await connect(session, b, "alice")
    assert alice_on_b.welcome["member_count"] == 3
    assert await bob.expect("presence") == {
        "type": "presence",
        "room": "r",
        "event": "join",
        "name": "carol",
    }

    loop = asyncio.get_running_loop()
    b.kill()  # SIGKILL: no leave, no closed sockets on b's side
    killed = loop.time()
    left = {(await alice.expect("presence", timeout=timeout + 5))["name"] for _ in range(2)}
    elapsed = loop.time() - killed
    assert left == {"bob", "carol"}
    # Within the presence timeout, plus slack for scheduling on a busy test machine.
    assert elapsed <= seconds(timeout + 0.5), elapsed
    dave = await connect(session, a, "dave")
    assert sorted(dave.welcome["members"]) == ["alice", "dave"]
    assert dave.welcome["member_count"] == 2
    await bob.close()
    await carol.close()
    await alice_on_b.close()


async def test_an_instance_subscribes_to_a_room_only_while_it_has_members_there(
    make_server: MakeServer, redis_server: RedisServer, session
):
    a, b = make_server(*FAST), make_server(*FAST)

    def subscribers(room: str) -> int:
        with redis_server.client() as client:
            [(_, count)] = client.pubsub_numsub(f"wc:{{{room}}}:c")
        return int(count)

    async def until_subscribers(room: str, count: int) -> None:
        await poll(lambda: subscribers(room) == count, 5, f"{count} subscribers of {room}")

    assert subscribers("r") == 0
    alice = await connect(session, a, "alice")
    assert subscribers("r") == 1  # subscribed before the welcome
    alice2 = await connect(session, a, "alice2")
    bob = await connect(session, b, "bob")
    assert subscribers("r") == 2  # one subscription per instance, not per client
    await bob.close()
    await until_subscribers("r", 1)
    await alice.close()
    assert subscribers("r") == 1
    await alice2.close()
    await until_subscribers("r", 0)
    # Subscribing again works, and delivers.
    carol = await connect(session, a, "carol")
    await until_subscribers("r", 1)
    await carol.send("again")
    assert (await carol.next_of("message"))["text"] == "again"
