"""PROTOCOL.md: `message` frames, trimming, the echo as acknowledgement, order, idempotent send."""

from __future__ import annotations

import asyncio
import time

from tests.contract.helpers import (
    ID_RE,
    connect,
    history,
    id_key,
    messages,
    nothing_else,
    say,
    send_raw,
)

# --- the message frame ---------------------------------------------------------------------


async def test_message_frame_fields_and_echo(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    before = time.time() * 1000
    await alice.send("hello", nonce="c-42")
    echo = await alice.expect("message")  # the echo is the acknowledgement
    after = time.time() * 1000
    assert await bob.expect("message") == echo
    assert {"type", "id", "room", "name", "text", "ts", "nonce"} <= set(echo)
    assert (echo["type"], echo["room"], echo["name"]) == ("message", "r", "alice")
    assert (echo["text"], echo["nonce"]) == ("hello", "c-42")
    assert isinstance(echo["id"], str) and ID_RE.fullmatch(echo["id"]), echo
    assert isinstance(echo["ts"], int)
    assert before - 1000 <= echo["ts"] <= after + 1000, (before, echo["ts"], after)

    # Without a nonce the frame has no nonce field; ids are unique and grow.
    await alice.send("again")
    second = await alice.expect("message")
    assert await bob.expect("message") == second
    assert "nonce" not in second and second["text"] == "again"
    assert id_key(second["id"]) > id_key(echo["id"])
    assert second["ts"] >= echo["ts"]


async def test_nonce_is_echoed_exactly(server, session):
    alice = await connect(session, server, name="alice", room="r")
    for nonce in ["", " padded ", "\u3000", "n" * 64, "\U0001f600" * 64, 'q"\\/<>']:
        await send_raw(alice, {"type": "message", "text": "x", "nonce": nonce})
        assert (await alice.expect("message"))["nonce"] == nonce


async def test_unknown_fields_are_ignored(server, session):
    alice = await connect(session, server, name="alice", room="r")
    await send_raw(alice, {"type": "message", "text": "x", "name": "mallory", "room": "other"})
    echo = await alice.expect("message")
    assert (echo["name"], echo["room"], echo["text"]) == ("alice", "r", "x")


async def test_text_is_trimmed_of_unicode_white_space_only(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    cases = [
        (" \t\n\r\x0b\x0chi\u3000\u00a0", "hi"),
        ("\u2028\u2029\u1680\u2000\u200a\u202f\u205f\u0085 a \u3000 b \u2003", "a \u3000 b"),
        ("\u200bzero width\u200b", "\u200bzero width\u200b"),  # not White_Space
        ("\ufeffbom\ufeff", "\ufeffbom\ufeff"),
        ("\x1cseparators\x1f", "\x1cseparators\x1f"),  # str.strip() would remove these
        ("_x_", "_x_"),
    ]
    for sent, stored in cases:
        await send_raw(alice, {"type": "message", "text": sent})
        echo = await alice.expect("message")
        assert echo["text"] == stored, (sent, echo)
        assert await bob.expect("message") == echo
    stored_texts = [m["text"] for m in (await history(session, server, "r"))["messages"]]
    assert stored_texts == [stored for _, stored in cases]


async def test_max_text_counts_code_points(server, session):
    alice = await connect(session, server, name="alice", room="r")
    emoji = "\U0001f600" * 2000  # 8000 bytes of UTF-8, 2000 code points
    await send_raw(alice, {"type": "message", "text": emoji})
    assert (await alice.expect("message"))["text"] == emoji
    padded = "\u3000 " + "x" * 2000 + " \u00a0"  # counted after trimming
    await send_raw(alice, {"type": "message", "text": padded})
    assert (await alice.expect("message"))["text"] == "x" * 2000


# --- order ---------------------------------------------------------------------------------


async def test_every_recipient_gets_the_same_order_as_history(make_server, session):
    server = make_server("--burst", "200", "--rate", "1000")
    senders = [await connect(session, server, name=f"s{i}", room="r") for i in range(3)]
    listener = await connect(session, server, name="listener", room="r")
    clients = [*senders, listener]
    for index, client in enumerate(clients):  # each hears the joins of those after it
        for _ in range(len(clients) - 1 - index):
            await client.expect("presence")
    per_sender = 40

    async def send_all(client, index):
        for n in range(per_sender):
            await client.send(f"{index}:{n}", nonce=f"{index}-{n}")

    await asyncio.gather(*(send_all(c, i) for i, c in enumerate(senders)))
    total = per_sender * len(senders)
    received = await asyncio.gather(*(messages(c, total) for c in clients))
    orders = [[m["id"] for m in frames] for frames in received]
    assert all(order == orders[0] for order in orders)
    assert len(set(orders[0])) == total
    assert [id_key(i) for i in orders[0]] == sorted(id_key(i) for i in orders[0])
    # Each sender's messages keep the order it sent them in.
    for index in range(len(senders)):
        mine = [m["text"] for m in received[0] if m["name"] == f"s{index}"]
        assert mine == [f"{index}:{n}" for n in range(per_sender)]
    held = await history(session, server, "r", limit="500")
    assert held["messages"] == received[0]
    assert all(frames == received[0] for frames in received)
    await nothing_else(senders[0], *clients[1:])


# --- idempotent send -----------------------------------------------------------------------


async def test_resend_with_the_same_nonce_is_not_stored_again(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    original = await say(alice, "first", nonce="n1")
    assert await bob.expect("message") == original
    # The same nonce again, even with other text: the original frame, to the sender only.
    await alice.send("first", nonce="n1")
    assert await alice.expect("message") == original
    await alice.send("changed", nonce="n1")
    assert await alice.expect("message") == original
    marker = await nothing_else(alice, bob)
    held = (await history(session, server, "r"))["messages"]
    assert held == [original, marker]


async def test_resend_on_a_new_connection_is_deduplicated(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    original = await say(alice, "before reconnect", nonce="c-7")
    assert await bob.expect("message") == original
    await alice.close()
    alice = await connect(session, server, name="alice", room="r")
    await alice.send("before reconnect", nonce="c-7")
    assert await alice.expect("message") == original
    marker = await nothing_else(alice, bob)
    assert (await history(session, server, "r"))["messages"] == [original, marker]


async def test_a_resend_never_overtakes_the_original(server, session):
    """Sent back to back, the re-sent original comes after the original's own delivery (a
    client that takes the newest id it saw for `since` must not skip the messages before)."""
    alice = await connect(session, server, name="alice", room="r")
    for round_ in range(5):
        first, second = f"a{round_}", f"b{round_}"
        # Written without waiting: the server reads them together.
        await alice.send(first, nonce=first)
        await alice.send(second, nonce=second)
        await alice.send("again", nonce=second)
        got = [await alice.expect("message") for _ in range(3)]
        assert [m["text"] for m in got] == [first, second, second], got
        assert got[2] == got[1]


async def test_same_nonce_from_another_name_or_room_is_a_new_message(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    alice_elsewhere = await connect(session, server, name="alice", room="r2")
    await alice.expect("presence")
    first = await say(alice, "from alice", nonce="same")
    assert await bob.expect("message") == first
    second = await say(bob, "from bob", nonce="same")
    assert await alice.expect("message") == second
    assert second["id"] != first["id"] and second["nonce"] == "same"
    third = await say(alice_elsewhere, "other room", nonce="same")
    assert third["room"] == "r2"
    assert [m["id"] for m in (await history(session, server, "r"))["messages"]] == [
        first["id"],
        second["id"],
    ]
    assert (await history(session, server, "r2"))["messages"] == [third]


async def test_messages_without_nonce_are_never_deduplicated(server, session):
    alice = await connect(session, server, name="alice", room="r")
    first = await say(alice, "same text")
    second = await say(alice, "same text")
    assert first["id"] != second["id"]
    assert len((await history(session, server, "r"))["messages"]) == 2
