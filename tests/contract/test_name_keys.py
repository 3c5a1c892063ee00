"""PROTOCOL.md 1.1 "Identity", anonymous mode: a name present in a room is held by the key of
its first connection (or by no key); another key gets 409 `name_taken` before the upgrade, on
every instance; the name is free again after it leaves; keys are never sent or logged."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from tests.conftest import REDIS_BROKERS
from tests.contract.helpers import (
    assert_error_body,
    connect,
    get,
    get_json,
    nothing_else,
    say,
    upgrade_refused,
)
from tests.support.timing import poll, seconds

KEY_A = "aaaaAAAA0000____a"
KEY_B = "bbbbBBBB1111----b"


def presence(room: str, event: str, name: str) -> dict[str, str]:
    return {"type": "presence", "room": room, "event": event, "name": name}


async def refused_with(session, server, **params) -> int:
    """The status of a refused upgrade (checked with aiohttp's client too) and its body."""
    query = {k: v for k, v in params.items() if v is not None}
    status, body = await upgrade_refused(session, server, params=query)
    if status == 409:
        assert_error_body(body, "name_taken")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await asyncio.wait_for(session.ws_connect(server.ws_url, params=query), seconds(10))
    assert info.value.status == status
    return status


async def test_a_held_name_is_refused_to_another_key(server, session):
    alice = await connect(session, server, name="alice", room="r", key=KEY_A)
    assert await refused_with(session, server, room="r", name="alice", key=KEY_B) == 409
    assert await refused_with(session, server, room="r", name="alice") == 409  # no key
    assert await refused_with(session, server, room="r", name=" alice\t", key=KEY_B) == 409
    # The same key: another tab of the same person, one name.
    tab = await connect(session, server, name="alice", room="r", key=KEY_A)
    assert tab.welcome["members"] == ["alice"] and tab.welcome["member_count"] == 1
    # Other names, and the name in other rooms, are free.
    bob = await connect(session, server, name="bob", room="r", key=KEY_B)
    elsewhere = await connect(session, server, name="alice", room="other", key=KEY_B)
    assert elsewhere.welcome["members"] == ["alice"]
    # Refusals told nobody anything: alice's tabs saw bob's join only.
    assert await alice.expect("presence") == presence("r", "join", "bob")
    assert await tab.expect("presence") == presence("r", "join", "bob")
    await nothing_else(bob, alice, tab)


async def test_a_name_without_a_key_is_held_by_no_key(server, session):
    bob = await connect(session, server, name="bob", room="r")
    again = await connect(session, server, name="bob", room="r")  # as in version 1
    assert again.welcome["member_count"] == 1 and bob.ws.close_code is None
    assert await refused_with(session, server, room="r", name="bob", key=KEY_A) == 409


async def test_the_name_is_free_again_after_it_leaves(server, session):
    # `server` runs with --presence-grace 0.3.
    carol = await connect(session, server, name="carol", room="r")
    alice = await connect(session, server, name="alice", room="r", key=KEY_A)
    assert await carol.expect("presence") == presence("r", "join", "alice")
    await alice.close()
    # Within the grace period alice is still present, and her name still hers.
    assert await refused_with(session, server, room="r", name="alice", key=KEY_B) == 409
    assert await carol.expect("presence") == presence("r", "leave", "alice")
    other = await connect(session, server, name="alice", room="r", key=KEY_B)
    assert other.welcome["name"] == "alice"
    assert await carol.expect("presence") == presence("r", "join", "alice")
    # The original key is now the one refused.
    assert await refused_with(session, server, room="r", name="alice", key=KEY_A) == 409


async def test_the_refusal_can_be_read_without_an_upgrade(server, session):
    """Browsers cannot read why an upgrade failed; a plain GET of the same URL tells them."""
    alice = await connect(session, server, name="alice", room="r", key=KEY_A)

    async def plain(**params: str) -> tuple[int, dict]:
        return await get_json(session, f"{server.url}/ws", params=params)

    status, body = await plain(room="r", name="alice", key=KEY_B)
    assert status == 409
    assert_error_body(body, "name_taken")
    for params in [
        {"room": "r", "name": "alice", "key": KEY_A},
        {"room": "r", "name": "free"},
        {"room": "elsewhere", "name": "alice", "key": KEY_B},
    ]:
        status, body = await plain(**params)
        assert status == 426, params
        assert_error_body(body, "upgrade_required")
    status, body = await plain(room="r", name="\u200b")
    assert status == 400
    assert_error_body(body, "bad_request")
    status, body = await get_json(
        session, f"{server.url}/ws", params={"name": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert status == 403
    assert_error_body(body, "forbidden_origin")
    await nothing_else(alice)  # none of it joined or announced anything


async def test_keys_are_never_sent_to_anyone_or_logged(make_server, session):
    server = make_server("--log-level", "debug", "--presence-grace", "0")
    secrets = [KEY_A, hashlib.sha256(KEY_A.encode()).hexdigest(), KEY_B]
    bob = await connect(session, server, name="bob", room="r", key=KEY_B)
    alice = await connect(session, server, name="alice", room="r", key=KEY_A)
    await refused_with(session, server, room="r", name="alice", key=KEY_B)
    await say(alice, "hello")
    frames = [alice.welcome, bob.welcome, await bob.recv(), await bob.recv()]
    await alice.close()
    frames.append(await bob.recv())  # alice's leave
    assert [f["type"] for f in frames[2:]] == ["presence", "message", "presence"]
    _, _, api = await get(session, f"{server.url}/api/rooms/r/messages")
    _, _, listing = await get(session, f"{server.url}/api/rooms")
    # A request HTTP cannot parse, with the key in it: refused, and the key not logged.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /ws?room=r&name=x&key={KEY_A}&x=\xff HTTP/1.1\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readline(), seconds(5))).split()[1] == b"400"
    writer.close()
    await poll(lambda: "malformed HTTP request" in server.log(), 5, "its log line")
    log = server.log()
    assert "listening" in log  # the log was read: the same file a deployment keeps
    for secret in secrets:
        assert all(secret not in repr(frame) for frame in frames)
        assert secret not in api and secret not in listing
        assert secret not in log


@pytest.fixture
def instances(broker, make_server):
    """Two instances of one service: on Redis two processes, on memory the one process."""
    first = make_server()
    return [first, first] if broker == "memory" else [first, make_server()]


async def test_of_two_first_connections_with_different_keys_one_wins(instances, session):
    one, two = instances
    for round_ in range(12):
        name = f"racer{round_}"
        attempts = await asyncio.gather(
            connect(session, one, name=name, room="race", key=KEY_A),
            connect(session, two, name=name, room="race", key=KEY_B),
            return_exceptions=True,
        )
        won = [a for a in attempts if not isinstance(a, BaseException)]
        lost = [a for a in attempts if isinstance(a, BaseException)]
        assert len(won) == 1 and len(lost) == 1, attempts
        assert isinstance(lost[0], aiohttp.WSServerHandshakeError), lost
        assert lost[0].status == 409
        winner_key = KEY_A if attempts[0] is won[0] else KEY_B
        loser_key = KEY_B if winner_key == KEY_A else KEY_A
        # Both instances now agree on the holder.
        for server in (one, two):
            assert await refused_with(session, server, room="race", name=name, key=loser_key) == 409
            tab = await connect(session, server, name=name, room="race", key=winner_key)
            assert tab.welcome["members"].count(name) == 1


@pytest.mark.parametrize("broker", REDIS_BROKERS, indirect=True)
async def test_a_dead_instances_names_are_free_after_the_presence_timeout(make_server, session):
    one = make_server("--presence-timeout", "2")
    two = make_server("--presence-timeout", "2")
    alice = await connect(session, one, name="alice", room="r", key=KEY_A)
    assert await refused_with(session, two, room="r", name="alice", key=KEY_B) == 409
    assert alice.ws.close_code is None
    one.kill()  # no leave: the hold expires, and the next join reaps it

    async def accepted() -> bool:
        status, _ = await get_json(
            session, f"{two.url}/ws", params={"room": "r", "name": "alice", "key": KEY_B}
        )
        return status == 426

    await poll(accepted, 10, "alice's name freed")
    taken = await connect(session, two, name="alice", room="r", key=KEY_B)
    assert taken.welcome["members"] == ["alice"]
