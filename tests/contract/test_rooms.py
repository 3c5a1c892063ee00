"""PROTOCOL.md 1.1 `GET /api/rooms`: rooms with members or a message in the last 24 hours,
most members first, at most 200, with `member_count` and `last_ts`; on Redis across every
instance, and without the members of an instance that died."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import REDIS_BROKERS
from tests.contract.helpers import connect, get_json, say
from tests.support.timing import poll


async def rooms(session, server) -> list[dict]:
    status, body = await get_json(session, f"{server.url}/api/rooms")
    assert status == 200, body
    assert set(body) == {"rooms"}, body
    for room in body["rooms"]:
        assert set(room) == {"room", "member_count", "last_ts"}, room
    return list(body["rooms"])


async def until_rooms(session, server, expected: list[dict]) -> None:
    """The listing is cached for a few seconds (and indexed within a second on Redis)."""

    async def listed() -> bool:
        return await rooms(session, server) == expected

    try:
        await poll(listed, 15, "the expected room list")
    except TimeoutError:
        assert await rooms(session, server) == expected


async def test_rooms_with_members_or_messages_most_members_first(server, session):
    assert await rooms(session, server) == []
    alice = await connect(session, server, name="alice", room="busy")
    # One name connected twice is counted once.
    present = [await connect(session, server, name=n, room="busy") for n in ("alice", "bob")]
    said = await say(alice, "hello")
    present.append(await connect(session, server, name="carol", room="quiet"))  # no message
    dave = await connect(session, server, name="dave", room="chatty")
    left = await say(dave, "bye")
    await dave.close()  # a message and nobody left (after the 0.3 s grace)
    await until_rooms(
        session,
        server,
        [
            {"room": "busy", "member_count": 2, "last_ts": said["ts"]},
            {"room": "quiet", "member_count": 1, "last_ts": None},
            {"room": "chatty", "member_count": 0, "last_ts": left["ts"]},
        ],
    )
    assert all(client.ws.close_code is None for client in present)


async def test_at_most_200_rooms_the_most_recent_first(server, session):
    async def one_message(n: int) -> dict:
        client = await connect(session, server, name="w", room=f"room-{n:03}")
        echo = await say(client, f"in room {n}")
        await client.close()
        return echo

    sent: list[dict] = []
    for start in range(0, 205, 25):
        sent += await asyncio.gather(*(one_message(n) for n in range(start, min(start + 25, 205))))

    async def settled() -> list[dict] | None:
        listed = await rooms(session, server)
        return listed if len(listed) == 200 and not any(r["member_count"] for r in listed) else None

    listed = await poll(settled, 15, "200 rooms without members")
    ts = {m["room"]: m["ts"] for m in sent}
    assert all(r["last_ts"] == ts[r["room"]] for r in listed)
    order = [(-r["last_ts"], r["room"]) for r in listed]
    assert order == sorted(order)  # the most recently active first
    left_out = set(ts) - {r["room"] for r in listed}
    assert len(left_out) == 5
    assert max(ts[room] for room in left_out) <= listed[-1]["last_ts"]


@pytest.fixture
def instances(broker, make_server):
    """Two instances of one service: on Redis two processes, on memory the one process."""
    first = make_server("--presence-grace", "0.3", "--presence-timeout", "3")
    if broker == "memory":
        return [first, first]
    return [first, make_server("--presence-grace", "0.3", "--presence-timeout", "3")]


async def test_every_instance_lists_every_instances_members(instances, session):
    one, two = instances
    present = [
        await connect(session, one, name="alice", room="shared"),
        await connect(session, two, name="bob", room="shared"),
        await connect(session, two, name="alice", room="shared"),  # on both: one name
        await connect(session, one, name="carol", room="solo"),
    ]
    expected = [
        {"room": "shared", "member_count": 2, "last_ts": None},
        {"room": "solo", "member_count": 1, "last_ts": None},
    ]
    await until_rooms(session, one, expected)
    await until_rooms(session, two, expected)
    assert all(client.ws.close_code is None for client in present)


@pytest.mark.parametrize("broker", REDIS_BROKERS, indirect=True)
async def test_a_dead_instances_rooms_leave_the_list(instances, session):
    one, two = instances
    present = [
        await connect(session, one, name="alice", room="doomed"),
        await connect(session, one, name="alice", room="both"),
        await connect(session, two, name="bob", room="both"),
    ]
    await until_rooms(
        session,
        two,
        [
            {"room": "both", "member_count": 2, "last_ts": None},
            {"room": "doomed", "member_count": 1, "last_ts": None},
        ],
    )
    one.kill()  # no leave: its holds expire, and no live instance confirms its counts
    await until_rooms(session, two, [{"room": "both", "member_count": 1, "last_ts": None}])
    assert present[2].ws.close_code is None
