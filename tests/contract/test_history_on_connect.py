"""PROTOCOL.md 1.1 `history=n` on connect: the newest n after the welcome, oldest first, then
live messages with no gap and no duplicate between the two, and no `gap` frame."""

from __future__ import annotations

import asyncio

from tests.contract.helpers import connect, history, messages, nothing_else, say


async def send_some(client, count: int, prefix: str = "m") -> list[dict]:
    return [await say(client, f"{prefix}{n}", nonce=f"{prefix}-{n}") for n in range(count)]


async def test_history_replays_the_newest_n_then_live(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    bob = await connect(session, server, name="bob", room="r", history=3)
    # The very frames the others got, oldest first, right after the welcome.
    assert [await bob.expect("message") for _ in range(3)] == sent[2:]
    assert await alice.expect("presence")
    live = await nothing_else(alice, bob)  # no gap frame, nothing else: live follows
    assert live["id"] not in {m["id"] for m in sent}


async def test_history_bounds(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 3)
    everything = await connect(session, server, name="b1", room="r", history=500)
    assert [await everything.expect("message") for _ in range(3)] == sent
    await nothing_else(everything)
    none = await connect(session, server, name="b2", room="r", history=0)
    await nothing_else(none)
    empty = await connect(session, server, name="b3", room="nothing-yet", history=50)
    await nothing_else(empty)  # an empty history: no replay and no gap frame


async def test_history_is_ignored_with_since(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 4)
    bob = await connect(session, server, name="bob", room="r", since=sent[2]["id"], history=4)
    assert await bob.expect("message") == sent[3]  # `since` decides: only what follows it
    await nothing_else(bob)


async def test_history_keeps_to_history_size(make_server, session):
    server = make_server("--history-size", "3")
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    bob = await connect(session, server, name="bob", room="r", history=50)
    assert [await bob.expect("message") for _ in range(3)] == sent[2:]
    await nothing_else(bob)  # fewer than asked, and no gap frame


async def test_history_and_live_stream_meet_without_gap_or_duplicate(make_server, session):
    server = make_server("--burst", "500", "--rate", "1000", "--presence-grace", "0")
    alice = await connect(session, server, name="alice", room="r")
    await send_some(alice, 5)
    batches, per_batch, asked = 15, 10, 7
    readers = []
    echoes: list[dict] = []
    # Readers join while batches are in flight, so that the newest messages reach them both
    # from history and live.
    for batch in range(batches):
        for n in range(per_batch):
            await alice.send(f"live{batch * per_batch + n}")
        if batch % 3 == 1:
            readers.append(
                asyncio.ensure_future(
                    connect(session, server, name=f"r{batch}", room="r", history=asked)
                )
            )
        echoes += await messages(alice, per_batch)
    clients = [await reader for reader in readers]
    held = (await history(session, server, "r", limit="500"))["messages"]
    last = held[-1]["id"]
    for client in clients:
        got = [await client.next_of("message")]
        while got[-1]["id"] != last:
            got.append(await client.next_of("message"))
        # A contiguous end of history: `asked` replayed, then every later one, once each.
        start = next(i for i, m in enumerate(held) if m["id"] == got[0]["id"])
        assert got == held[start:], client.welcome["name"]
        assert len(got) >= asked
    await nothing_else(alice, *clients, skip_presence=True)
