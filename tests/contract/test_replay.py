"""PROTOCOL.md: `since` replay after the welcome, the `gap` frame, and the seam between the
replay and the live stream (no gap, no duplicate)."""

from __future__ import annotations

import asyncio

from tests.contract.helpers import connect, history, messages, nothing_else, say


async def send_some(client, count: int, prefix: str = "m") -> list[dict]:
    return [await say(client, f"{prefix}{n}", nonce=f"{prefix}-{n}") for n in range(count)]


async def test_replay_after_since_then_live(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    bob = await connect(session, server, name="bob", room="r", since=sent[1]["id"])
    assert bob.welcome["type"] == "welcome"  # always first
    # Replayed as ordinary message frames, identical to the originals, oldest first.
    assert [await bob.expect("message") for _ in range(3)] == sent[2:]
    assert await alice.expect("presence")
    live = await nothing_else(alice, bob)  # no gap frame, nothing else
    assert live["id"] not in {m["id"] for m in sent}


async def test_replay_and_live_stream_meet_without_gap_or_duplicate(make_server, session):
    server = make_server("--burst", "500", "--rate", "1000", "--presence-grace", "0")
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    since = sent[1]["id"]
    batches, per_batch = 15, 10
    total = batches * per_batch
    readers = []
    echoes: list[dict] = []
    # Readers join while batches are in flight, at several points, so that some of the
    # messages reach them both from history and live.
    for batch in range(batches):
        for n in range(per_batch):
            await alice.send(f"live{batch * per_batch + n}")
        if batch % 3 == 1:
            readers.append(
                asyncio.ensure_future(
                    connect(session, server, name=f"r{batch}", room="r", since=since)
                )
            )
        echoes += await messages(alice, per_batch)
    assert [m["text"] for m in echoes] == [f"live{n}" for n in range(total)]
    clients = [await reader for reader in readers]
    expected = sent[2:] + echoes
    held = await history(session, server, "r", since=since, limit="500")
    assert held == {"messages": expected, "gap": False}
    for client in clients:
        got = await messages(client, len(expected))
        assert [m["id"] for m in got] == [m["id"] for m in expected], client.welcome["name"]
        assert got == expected
    await nothing_else(alice, *clients, skip_presence=True)


async def test_since_older_than_history_gives_a_gap(make_server, session):
    server = make_server("--history-size", "3")
    for case in range(3):  # one room per case: each marker adds to the room's history
        room = f"r{case}"
        alice = await connect(session, server, name="alice", room=room)
        sent = await send_some(alice, 5)  # history holds m2, m3, m4
        since = [sent[0]["id"], sent[1]["id"], "1-0"][case]
        bob = await connect(session, server, name="bob", room=room, since=since)
        assert await bob.expect("gap") == {"type": "gap"}
        assert [await bob.expect("message") for _ in range(3)] == sent[2:]
        await nothing_else(bob)


async def test_since_at_the_oldest_held_gives_no_gap(make_server, session):
    server = make_server("--history-size", "3")
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    bob = await connect(session, server, name="bob", room="r", since=sent[2]["id"])
    assert [await bob.expect("message") for _ in range(2)] == sent[3:]
    await nothing_else(bob)


async def test_since_at_the_newest_replays_nothing(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 3)
    bob = await connect(session, server, name="bob", room="r", since=sent[-1]["id"])
    await nothing_else(bob)  # no gap, no replay: bob's own echo comes first


async def test_since_after_the_newest_replays_nothing(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 2)
    ms, seq = sent[-1]["id"].split("-")
    bob = await connect(session, server, name="bob", room="r", since=f"{ms}-{int(seq) + 1}")
    await nothing_else(bob)


async def test_since_on_an_empty_history_gives_a_gap(server, session):
    bob = await connect(session, server, name="bob", room="r", since="1-0")
    assert await bob.expect("gap") == {"type": "gap"}
    await nothing_else(bob)


async def test_replay_is_per_room(server, session):
    alice = await connect(session, server, name="alice", room="r")
    other = await connect(session, server, name="other", room="elsewhere")
    sent = await send_some(alice, 3)
    await send_some(other, 3, prefix="x")
    bob = await connect(session, server, name="bob", room="r", since=sent[0]["id"])
    assert [await bob.expect("message") for _ in range(2)] == sent[1:]
    await nothing_else(bob)


async def test_without_since_there_is_no_replay(server, session):
    alice = await connect(session, server, name="alice", room="r")
    await send_some(alice, 3)
    bob = await connect(session, server, name="bob", room="r")
    await nothing_else(bob)


async def test_live_messages_follow_a_since_ahead_of_every_id(server, session):
    # E.g. a client of an instance whose history was lost, on a host whose clock is behind:
    # "at or after the newest" replays nothing, and live messages still follow.
    alice = await connect(session, server, name="alice", room="r")
    await send_some(alice, 2)
    ahead = "99999999999999-0"
    bob = await connect(session, server, name="bob", room="r", since=ahead)
    await nothing_else(alice, bob, skip_presence=True)
    # The same with an empty history: a gap, then live messages.
    carol = await connect(session, server, name="carol", room="empty", since=ahead)
    assert await carol.expect("gap") == {"type": "gap"}
    dave = await connect(session, server, name="dave", room="empty")
    assert await carol.expect("presence")
    await nothing_else(dave, carol)
