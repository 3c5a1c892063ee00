"""PROTOCOL.md 1.1 "Identity", authenticated mode, on both brokers: the token is who a client
is. Presence counts users (by `sub`), not display names; `message` frames carry `user`, also
from history; idempotent sends are keyed on `(room, sub, nonce)`."""

from __future__ import annotations

import pytest

from tests.contract.helpers import connect, get_json, nothing_else
from tests.support.timing import poll
from tests.support.tokens import TestKeys, claims


def auth_args(keys: TestKeys) -> list[str]:
    return ["--auth-secret-file", str(keys.secret_file), "--presence-grace", "0.3"]


async def as_user(session, server, keys: TestKeys, sub: str, name: str, room: str = "r", **kw):
    return await connect(session, server, None, room, token=keys.hs(claims(sub, name=name)), **kw)


def presence(event: str, name: str, user: str) -> dict[str, str]:
    return {"type": "presence", "room": "r", "event": event, "name": name, "user": user}


async def test_the_token_is_who_the_client_is(make_server, session, keys):
    server = make_server(*auth_args(keys))
    token = keys.hs(claims("u-alice", name="Alice"))
    # name and key are ignored in this mode: not even checked (this key is malformed).
    alice = await connect(session, server, "mallory", "r", key="short", token=token)
    assert alice.welcome["name"] == "Alice" and alice.welcome["user"] == "u-alice"
    assert alice.welcome["members"] == ["Alice"] and alice.welcome["users"] == ["u-alice"]
    # The header works as well as the parameter.
    bearer = {"Authorization": f"Bearer {keys.hs(claims('u-bob', name='Bob'))}"}
    bob = await connect(session, server, None, "r", headers=bearer)
    assert bob.welcome["name"] == "Bob" and bob.welcome["member_count"] == 2
    assert dict(zip(bob.welcome["users"], bob.welcome["members"], strict=True)) == {
        "u-bob": "Bob",
        "u-alice": "Alice",
    }
    assert await alice.expect("presence") == presence("join", "Bob", "u-bob")

    await alice.send("hello", nonce="n-1")
    echo = await alice.expect("message")
    assert (echo["name"], echo["user"], echo["nonce"]) == ("Alice", "u-alice", "n-1")
    assert await bob.expect("message") == echo
    # History keeps `user`: the replay and the HTTP API show it too.
    later = await connect(session, server, None, "r", history=5, token=token)
    assert await later.expect("message") == echo
    status, body = await get_json(
        session, f"{server.url}/api/rooms/r/messages", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and body["messages"] == [echo]


async def test_presence_counts_users_not_display_names(make_server, session, keys):
    server = make_server(*auth_args(keys))
    sam = await as_user(session, server, keys, "u-1", "Sam")
    tab = await as_user(session, server, keys, "u-1", "Sam")  # the same user, another tab
    assert tab.welcome["member_count"] == 1 and tab.welcome["members"] == ["Sam"]
    other = await as_user(session, server, keys, "u-2", "Sam")  # another user, the same name
    assert other.welcome["member_count"] == 2
    assert other.welcome["members"] == ["Sam", "Sam"]
    assert other.welcome["users"] == ["u-2", "u-1"]  # this connection's first
    # Both of u-1's connections hear of u-2, although its display name is theirs.
    for client in (sam, tab):
        assert await client.expect("presence") == presence("join", "Sam", "u-2")

    await other.close()
    for client in (sam, tab):
        assert await client.expect("presence") == presence("leave", "Sam", "u-2")
    await tab.close()  # u-1 still has a connection: no leave
    await nothing_else(sam)
    fresh = await as_user(session, server, keys, "u-3", "Kim")
    assert fresh.welcome["member_count"] == 2 and sorted(fresh.welcome["users"]) == ["u-1", "u-3"]


async def test_idempotent_sends_are_keyed_on_the_user(make_server, session, keys):
    server = make_server(*auth_args(keys))
    first = await as_user(session, server, keys, "u-1", "Sam")
    await first.send("once", nonce="n-1")
    original = await first.expect("message")
    # The same user from another tab, even under a new display name: the original comes back
    # to that sender only, nothing new is stored or delivered.
    renamed = await as_user(session, server, keys, "u-1", "Samuel")
    # A member is a user under a display name: "Samuel" is announced as joining.
    assert await first.expect("presence") == presence("join", "Samuel", "u-1")
    await renamed.send("once again", nonce="n-1")
    assert await renamed.expect("message") == original
    # Another user with the same display name and nonce: a message of its own.
    other = await as_user(session, server, keys, "u-2", "Sam")
    for client in (first, renamed):
        assert (await client.expect("presence"))["user"] == "u-2"
    await other.send("mine", nonce="n-1")
    mine = await other.expect("message")
    assert mine["id"] != original["id"] and mine["user"] == "u-2" and mine["name"] == "Sam"
    for client in (first, renamed):
        assert await client.expect("message") == mine
    await nothing_else(first, renamed, other)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
async def test_presence_per_user_across_two_instances(make_server, session, keys):
    one = make_server(*auth_args(keys))
    two = make_server(*auth_args(keys))
    sam = await as_user(session, one, keys, "u-1", "Sam")
    tab = await as_user(session, two, keys, "u-1", "Sam")  # u-1 again, on the other instance
    assert tab.welcome["member_count"] == 1 and tab.welcome["users"] == ["u-1"]
    other = await as_user(session, two, keys, "u-2", "Sam")
    assert other.welcome["member_count"] == 2 and other.welcome["users"] == ["u-2", "u-1"]
    for client in (sam, tab):
        assert await client.expect("presence") == presence("join", "Sam", "u-2")

    # GET /api/rooms counts users too (the index is written once a second).
    token = keys.hs(claims("u-9"))

    async def counted() -> bool:
        status, body = await get_json(
            session, f"{one.url}/api/rooms", headers={"Authorization": f"Bearer {token}"}
        )
        return status == 200 and {"room": "r", "member_count": 2} in [
            {k: r[k] for k in ("room", "member_count")} for r in body["rooms"]
        ]

    await poll(counted, 10, "room r listed with 2 members")

    await tab.close()  # u-1 is still connected on the other instance: no leave
    await other.close()
    assert await sam.expect("presence", timeout=10) == presence("leave", "Sam", "u-2")
    await nothing_else(sam)
