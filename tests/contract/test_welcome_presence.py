"""PROTOCOL.md: the `welcome` frame, `presence` frames, the presence grace and presence_limit."""

from __future__ import annotations

import asyncio

from tests.contract.helpers import connect, nothing_else, until_metric
from tests.support.timing import poll, seconds


def presence(room: str, event: str, name: str) -> dict[str, str]:
    return {"type": "presence", "room": room, "event": event, "name": name}


# --- welcome -------------------------------------------------------------------------------


async def test_welcome_is_first_and_lists_members_including_self(server, session):
    alice = await connect(session, server, name="alice", room="r")
    assert alice.welcome == {
        "type": "welcome",
        "room": "r",
        "name": "alice",
        "members": ["alice"],
        "member_count": 1,
        "limits": {"max_text": 2000, "rate_per_s": 10, "burst": 20},
    }
    bob = await connect(session, server, name="bob", room="r")
    assert bob.welcome["name"] == "bob" and bob.welcome["room"] == "r"
    assert sorted(bob.welcome["members"]) == ["alice", "bob"]
    assert bob.welcome["member_count"] == 2
    # Other rooms are not members.
    carol = await connect(session, server, name="carol", room="other")
    assert carol.welcome["members"] == ["carol"] and carol.welcome["member_count"] == 1


async def test_a_name_connected_twice_is_listed_once(server, session):
    await connect(session, server, name="alice", room="r")
    alice2 = await connect(session, server, name="alice", room="r")
    assert alice2.welcome["members"] == ["alice"] and alice2.welcome["member_count"] == 1
    bob = await connect(session, server, name="bob", room="r")
    assert sorted(bob.welcome["members"]) == ["alice", "bob"]
    assert bob.welcome["member_count"] == 2


async def test_limits_reflect_the_flags(make_server, session):
    server = make_server("--max-text", "50", "--rate", "2.5", "--burst", "7")
    client = await connect(session, server, name="a", room="r")
    assert client.welcome["limits"] == {"max_text": 50, "rate_per_s": 2.5, "burst": 7}
    server2 = make_server("--max-text", "3000", "--rate", "4", "--burst", "30")
    client2 = await connect(session, server2, name="a", room="r")
    assert client2.welcome["limits"] == {"max_text": 3000, "rate_per_s": 4, "burst": 30}


# --- join ----------------------------------------------------------------------------------


async def test_join_goes_to_the_others_not_to_self(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    assert await alice.expect("presence") == presence("r", "join", "bob")
    carol = await connect(session, server, name="carol", room="r")
    assert await alice.expect("presence") == presence("r", "join", "carol")
    assert await bob.expect("presence") == presence("r", "join", "carol")
    # Nobody got a join for themselves, nor a second one; other rooms hear nothing.
    elsewhere = await connect(session, server, name="dave", room="elsewhere")
    await nothing_else(carol, alice, bob)
    await nothing_else(elsewhere)


async def test_no_join_for_a_second_connection_of_the_same_name(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    assert await alice.expect("presence") == presence("r", "join", "bob")
    bob2 = await connect(session, server, name="bob", room="r")
    assert sorted(bob2.welcome["members"]) == ["alice", "bob"]
    await nothing_else(alice, bob, bob2)


# --- leave and the grace period ------------------------------------------------------------


async def test_leave_after_the_grace_period(server, session):
    # `server` runs with --presence-grace 0.3.
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    assert await alice.expect("presence") == presence("r", "join", "bob")
    loop = asyncio.get_running_loop()
    closed_at = loop.time()
    await bob.close()
    assert await alice.expect("presence") == presence("r", "leave", "bob")
    assert loop.time() - closed_at >= 0.25, "leave came before the grace period ended"
    # After the leave, bob is gone: a newcomer's welcome no longer lists him.
    carol = await connect(session, server, name="carol", room="r")
    assert sorted(carol.welcome["members"]) == ["alice", "carol"]
    assert await alice.expect("presence") == presence("r", "join", "carol")
    # And a name that comes back after its leave joins again.
    bob = await connect(session, server, name="bob", room="r")
    assert await alice.expect("presence") == presence("r", "join", "bob")
    assert await carol.expect("presence") == presence("r", "join", "bob")


async def test_no_leave_while_another_connection_of_the_name_remains(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    bob2 = await connect(session, server, name="bob", room="r")
    assert await alice.expect("presence") == presence("r", "join", "bob")
    await bob2.close()
    # carol's visit outlasts a grace period begun after bob2 closed: a leave for bob would
    # have come before carol's.
    carol = await connect(session, server, name="carol", room="r")
    assert await alice.expect("presence") == presence("r", "join", "carol")
    await carol.close()
    assert await alice.expect("presence") == presence("r", "leave", "carol")
    assert await bob.expect("presence") == presence("r", "join", "carol")
    assert await bob.expect("presence") == presence("r", "leave", "carol")
    await nothing_else(bob, alice)


async def test_reconnecting_within_the_grace_period_causes_no_flicker(make_server, session):
    server = make_server("--presence-grace", str(seconds(30)))
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    assert await alice.expect("presence") == presence("r", "join", "bob")
    await bob.close()
    await until_metric(session, server, "webchat_connected_users", 1)
    # Within its grace period bob is still a member: listed in a newcomer's welcome.
    carol = await connect(session, server, name="carol", room="r")
    assert sorted(carol.welcome["members"]) == ["alice", "bob", "carol"]
    assert carol.welcome["member_count"] == 3
    assert await alice.expect("presence") == presence("r", "join", "carol")
    bob = await connect(session, server, name="bob", room="r")
    assert sorted(bob.welcome["members"]) == ["alice", "bob", "carol"]
    # Neither a leave nor a join for bob reached anyone.
    await nothing_else(bob, alice, carol)


# --- presence_limit ------------------------------------------------------------------------


async def test_large_rooms_get_no_presence_frames(make_server, session):
    server = make_server("--presence-limit", "3", "--presence-grace", "0")
    names = [f"u{i}" for i in range(1, 6)]
    clients = [await connect(session, server, name=names[0], room="big")]
    for name in names[1:3]:  # up to 3 names the room is small: joins are sent
        clients.append(await connect(session, server, name=name, room="big"))
        for earlier in clients[:-1]:
            assert await earlier.expect("presence") == presence("big", "join", name)
    for name in names[3:]:  # 4 and 5 names: no presence frames
        clients.append(await connect(session, server, name=name, room="big"))
    await nothing_else(clients[-1], *clients[:-1])

    for count, client in enumerate(clients, 1):
        welcome = client.welcome
        assert welcome["member_count"] == count
        members = welcome["members"]
        assert len(members) == min(count, 3), welcome
        assert welcome["name"] in members
        assert len(set(members)) == len(members) and set(members) <= set(names)

    # Another connection of a present name does not change the count.
    again = await connect(session, server, name="u1", room="big")
    assert again.welcome["member_count"] == 5 and "u1" in again.welcome["members"]
    assert len(again.welcome["members"]) == 3
    await again.close()

    # A name leaving a room of 5 names sends no leave either (4 names remain).
    await clients.pop().close()
    await until_welcome_count(session, server, "u1", "big", 4)
    await nothing_else(clients[0], *clients[1:])


async def until_welcome_count(session, server, name, room, count) -> None:
    """Wait (bounded) until a welcome in `room` counts `count` names; `name` is present."""

    async def counted() -> bool:
        probe = await connect(session, server, name=name, room=room)
        await probe.close()
        return probe.welcome["member_count"] == count

    await poll(counted, 10, f"a welcome counting {count} names")
