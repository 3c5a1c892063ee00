"""Contract cases a Redis implementation could get wrong, run on both brokers alike.

Keys built from names and nonces, text that passes through Lua's JSON encoder, ids beyond
what a Redis stream id can hold, history trimming.
"""

from __future__ import annotations

from tests.contract.helpers import connect, history, messages, nothing_else, say, send_raw

AWKWARD_TEXTS = [
    'quotes " and \\ backslash / slash',
    "unicode: héllo wörld — ✓ 😀 𝄞 \u2028 line separator",
    "control-free tab\tinside",
    '{"k":"p","e":"join"}',
    "x" * 1999 + "é",
    "1e400",
]


async def test_awkward_texts_round_trip_exactly(server, session):
    alice = await connect(session, server, name="alice", room="t")
    bob = await connect(session, server, name="bob", room="t")
    sent = []
    for n, text in enumerate(AWKWARD_TEXTS):
        await send_raw(alice, {"type": "message", "text": text, "nonce": f"ä:{n}"})
        sent.append(await alice.next_of("message"))
    assert [m["text"] for m in sent] == AWKWARD_TEXTS
    assert [m["nonce"] for m in sent] == [f"ä:{n}" for n in range(len(AWKWARD_TEXTS))]
    assert await messages(bob, len(sent)) == sent
    assert (await history(session, server, "t"))["messages"] == sent


async def test_empty_nonce_is_a_nonce(server, session):
    alice = await connect(session, server, name="alice", room="t")
    first = await say(alice, "one", nonce="")
    assert first["nonce"] == ""
    await alice.send("again", nonce="")
    assert await alice.expect("message") == first
    await nothing_else(alice)


async def test_names_and_nonces_that_could_share_a_key_do_not_collide(server, session):
    # ("a:b", "c") and ("a", "b:c") would both be "a:b:c" if simply joined.
    one = await connect(session, server, name="a:b", room="t")
    two = await connect(session, server, name="a", room="t")
    first = await say(one, "from a:b", nonce="c")
    await two.next_of("message")
    second = await say(two, "from a", nonce="b:c")
    assert second["id"] != first["id"]
    await one.next_of("message")
    held = (await history(session, server, "t"))["messages"]
    assert [m["text"] for m in held] == ["from a:b", "from a"]


async def test_since_beyond_any_stream_id(server, session):
    empty = await history(session, server, "nothing", since="99999999999999999999-0")
    assert empty == {"messages": [], "gap": True}
    alice = await connect(session, server, name="alice", room="t")
    sent = [await say(alice, f"m{n}") for n in range(2)]
    for since in (
        "99999999999999999999-0",
        "18446744073709551615-18446744073709551615",
        "18446744073709551615-0",
        f"{sent[-1]['id'].split('-')[0]}-99999999999999999999",
    ):
        assert await history(session, server, "t", since=since) == {"messages": [], "gap": False}
    # A seq too large for a stream id, on an earlier millisecond: everything after it.
    earlier = f"{int(sent[0]['id'].split('-')[0]) - 1}-99999999999999999999"
    assert await history(session, server, "t", since=earlier) == {"messages": sent, "gap": True}
    assert await history(session, server, "t", since="0-0") == {"messages": sent, "gap": True}
    assert await history(session, server, "t", since="0-1") == {"messages": sent, "gap": True}


async def test_history_keeps_the_newest_history_size_messages(make_server, session):
    server = make_server("--history-size", "5", "--rate", "1000", "--burst", "1000")
    alice = await connect(session, server, name="alice", room="t")
    sent = [await say(alice, f"m{n}") for n in range(12)]
    held = await history(session, server, "t")
    assert held == {"messages": sent[-5:], "gap": False}
    assert await history(session, server, "t", limit="2") == {"messages": sent[-2:], "gap": False}
    after = await history(session, server, "t", since=sent[8]["id"], limit="2")
    assert after == {"messages": sent[9:11], "gap": False}
    gap = await history(session, server, "t", since=sent[3]["id"], limit="3")
    assert gap == {"messages": sent[7:10], "gap": True}
