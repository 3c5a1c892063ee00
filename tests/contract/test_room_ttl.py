"""Idle rooms are forgotten after --room-ttl, rooms with members never; nonces go with them.

Both brokers alike. The TTL is short here (3 s, the least Redis allows with a 1 s presence
timeout); every wait polls the history API (and, on Redis, the keys) instead of sleeping.
"""

from __future__ import annotations

import pytest

from tests.contract.helpers import connect, get_json, history, nothing_else, say
from tests.support.timing import poll
from tests.support.tokens import claims

TTL = 3
TTL_ARGS = ("--room-ttl", str(TTL), "--presence-timeout", "1", "--presence-grace", "0.2")


@pytest.fixture
def server(make_server):
    return make_server(*TTL_ARGS, "--rate", "100", "--burst", "100")


async def forgotten(session, server, room: str) -> None:
    """Wait until the room's history is empty: its TTL ran out."""

    async def empty() -> bool:
        return (await history(session, server, room))["messages"] == []

    await poll(empty, TTL + 10, f"the history of {room} to expire")


def room_keys(request: pytest.FixtureRequest, room: str) -> list[bytes]:
    """The Redis keys of `room`."""
    with request.getfixturevalue("redis_server").client() as client:
        return sorted(client.keys(f"wc:{{{room}}}:*"))


async def test_an_idle_room_is_forgotten_and_a_resume_into_it_gets_a_gap(
    server, session, broker, request
):
    alice = await connect(session, server, name="alice", room="idle")
    sent = await say(alice, "hello", nonce="n1")
    assert (await history(session, server, "idle"))["messages"] == [sent]
    await alice.close()

    await forgotten(session, server, "idle")

    async def unlisted() -> bool:
        status, body = await get_json(session, f"{server.url}/api/rooms")
        assert status == 200, body
        return all(r["room"] != "idle" for r in body["rooms"])

    await poll(unlisted, 10, "the expired room to leave the room list")
    if broker == "redis":  # every key of the room goes: history, nonce, presence
        await poll(lambda: not room_keys(request, "idle"), 10, "the room's keys to expire")

    # PROTOCOL.md: history no longer reaches back to `since` -> a gap frame, then what is held.
    back = await connect(session, server, name="alice", room="idle", since=sent["id"])
    assert await back.recv() == {"type": "gap"}
    # The nonce went with the room: the same send is a new message now, not a duplicate.
    again = await say(back, "hello", nonce="n1")
    assert again["id"] != sent["id"]
    assert (await history(session, server, "idle"))["messages"] == [again]
    await nothing_else(back)


async def test_a_room_with_a_member_is_kept_however_long_it_is_quiet(server, session):
    alice = await connect(session, server, name="alice", room="kept")
    kept = await say(alice, "still here")
    bob = await connect(session, server, name="bob", room="gone")
    await say(bob, "gone soon")
    await bob.close()
    # "gone" had its message later than "kept" and no member: once it is forgotten, "kept"
    # has been quiet for longer than the TTL too.
    await forgotten(session, server, "gone")
    assert (await history(session, server, "kept"))["messages"] == [kept]
    await nothing_else(alice)
    # Once its last member leaves, its TTL runs.
    await alice.close()
    await forgotten(session, server, "kept")


async def test_a_duplicate_of_a_trimmed_message_gets_the_original(make_server, session):
    server = make_server(*TTL_ARGS, "--history-size", "3", "--room-ttl", "600")
    # A name whose length in bytes is not its length in code points: the dedupe key counts
    # code points, and Redis's script must find the same key (redis_scripts.PUBLISH).
    alice = await connect(session, server, name="zoë ✓", room="busy")
    original = await say(alice, "first", nonce="n0")
    later = [await say(alice, f"m{n}", nonce=f"m{n}") for n in range(3)]
    held = (await history(session, server, "busy"))["messages"]
    assert held == later, "the original is trimmed from history"

    # PROTOCOL.md: the original message frame, to the sender only, nothing stored.
    await alice.send("first", nonce="n0")
    assert await alice.expect("message") == original
    await alice.send("a different text, same nonce", nonce="n0")
    assert await alice.expect("message") == original
    await nothing_else(alice)
    assert (await history(session, server, "busy"))["messages"][:2] == later[1:]


async def test_a_duplicate_of_a_trimmed_message_of_a_user_gets_the_original(
    make_server, session, keys
):
    """Authenticated mode keys a nonce on the user's `sub` (Draft.sender), not the display
    name: the script must copy the trimmed message into that key, with its `user`."""
    server = make_server(
        *TTL_ARGS,
        "--history-size",
        "3",
        "--room-ttl",
        "600",
        "--auth-secret-file",
        str(keys.secret_file),
    )
    token = keys.hs(claims("u-zoë", name="Zoë ✓"))
    alice = await connect(session, server, None, "busy", token=token)
    original = await say(alice, "first", nonce="n0")
    assert original["user"] == "u-zoë"
    later = [await say(alice, f"m{n}", nonce=f"m{n}") for n in range(3)]
    assert (await history(session, server, "busy", token=token))["messages"] == later

    # Another tab of the same user (a token of its own): the same sender.
    tab = await connect(session, server, None, "busy", token=keys.hs(claims("u-zoë", name="Zoë ✓")))
    await tab.send("a different text, same nonce", nonce="n0")
    assert await tab.expect("message") == original
    await nothing_else(tab, alice)
