"""PROTOCOL.md: every `error` code with the connection staying open, the rate limit and its
1008 close, and the 1009 close for an oversized frame."""

from __future__ import annotations

import asyncio
import json

from tests.contract.helpers import (
    connect,
    expect_error,
    history,
    messages,
    nothing_else,
    receive_until_close,
    say,
    send_raw,
)

MANY_TOKENS = ("--burst", "500", "--rate", "1000")

BAD_JSON = [
    "",
    "not json",
    "{",
    '{"type": "message", "text": "hi"',
    "[1, 2]",
    '"message"',
    "null",
    "42",
    "true",
    "NaN",
    '[{"type": "message", "text": "hi"}]',
    "[" * 5000,  # deeper than a recursive parser's stack
    "[" * 5000 + "]" * 5000,
    '{"type": "message", "text": ' + "[" * 5000 + "]" * 5000 + "}",
]

BAD_TYPE = [
    {},
    {"text": "hi"},
    {"type": "nope", "text": "hi"},
    {"type": "Message", "text": "hi"},
    {"type": "welcome"},
    {"type": "presence", "event": "join", "name": "x"},
    {"type": None, "text": "hi"},
    {"type": 1, "text": "hi"},
    {"type": ["message"], "text": "hi"},
]

BAD_MESSAGE = [
    {"type": "message"},
    {"type": "message", "text": None},
    {"type": "message", "text": 42},
    {"type": "message", "text": True},
    {"type": "message", "text": ["hi"]},
    {"type": "message", "text": {"t": "hi"}},
    {"type": "message", "text": ""},
    {"type": "message", "text": " \t\r\n"},
    {"type": "message", "text": "\u3000\u00a0\u2003\u2028\u0085"},
    {"type": "message", "text": "x" * 2001},
    {"type": "message", "text": "\U0001f600" * 2001},
    {"type": "message", "text": "e\u0301" * 1001},  # 2002 code points
    {"type": "message", "text": "hi", "nonce": 5},
    {"type": "message", "text": "hi", "nonce": None},
    {"type": "message", "text": "hi", "nonce": ["n"]},
    {"type": "message", "text": "hi", "nonce": "n" * 65},
    {"type": "message", "text": "hi", "nonce": "\U0001f600" * 65},
]


async def check_errors(session, server, code, frames) -> None:
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    for frame in frames:
        await send_raw(alice, frame)
        got = await expect_error(alice, code)
        assert set(got) >= {"type", "code", "message"}, got
        # The connection stays open and usable.
        await nothing_else(alice, bob)
    # Nothing bad was stored: history holds the markers only.
    held = (await history(session, server, "r", limit="500"))["messages"]
    assert len(held) == len(frames)
    assert all(m["text"].startswith("marker-") for m in held), held


async def test_bad_json(make_server, session):
    await check_errors(session, make_server(*MANY_TOKENS), "bad_json", BAD_JSON)


async def test_bad_type(make_server, session):
    await check_errors(session, make_server(*MANY_TOKENS), "bad_type", BAD_TYPE)


async def test_binary_frames_are_bad_type(server, session):
    alice = await connect(session, server, name="alice", room="r")
    for data in (b'{"type": "message", "text": "hi"}', b"", b"\xff\x00"):
        await alice.ws.send_bytes(data)
        await expect_error(alice, "bad_type")
        await nothing_else(alice)
    assert len((await history(session, server, "r"))["messages"]) == 3


async def test_bad_message(make_server, session):
    await check_errors(session, make_server(*MANY_TOKENS), "bad_message", BAD_MESSAGE)


async def test_lone_surrogates_are_bad_messages(server, session):
    # JSON can spell a lone surrogate, which no UTF-8 frame can carry: such a message could be
    # stored but never delivered, so it must be refused, and must not stop the room.
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    for raw in (
        '{"type": "message", "text": "a\\ud800b"}',
        '{"type": "message", "text": "\\udc00"}',
        '{"type": "message", "text": "hi", "nonce": "\\ud83d"}',
    ):
        await send_raw(alice, raw)
        await expect_error(alice, "bad_message")
        await nothing_else(alice, bob)
    # A surrogate pair is one character and fine.
    await send_raw(alice, '{"type": "message", "text": "\\ud83d\\ude00"}')
    assert (await alice.expect("message"))["text"] == "\U0001f600"
    assert len((await history(session, server, "r"))["messages"]) == 4


async def test_max_text_follows_the_flag(make_server, session):
    server = make_server("--max-text", "5")
    alice = await connect(session, server, name="alice", room="r")
    await say(alice, "12345")
    await send_raw(alice, {"type": "message", "text": "123456"})
    await expect_error(alice, "bad_message")
    await say(alice, "\U0001f600" * 5)


# --- rate limit ----------------------------------------------------------------------------


def kinds(frames) -> list[str]:
    return sorted(f.get("code", f["type"]) for f in frames)


async def test_burst_then_rate_limited_and_not_processed(make_server, session):
    server = make_server("--burst", "3", "--rate", "0.1")  # a token every 10 s: none in the test
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    for n in range(4):
        await alice.send(f"m{n}", nonce=f"n{n}")
    # The error may overtake the echoes: only the multiset of frames is specified.
    frames = [await alice.recv() for _ in range(4)]
    assert kinds(frames) == ["message", "message", "message", "rate_limited"], frames
    assert [f["text"] for f in frames if f["type"] == "message"] == ["m0", "m1", "m2"]
    assert [f["text"] for f in await messages(bob, 3)] == ["m0", "m1", "m2"]
    # A frame finding the bucket empty gets rate_limited and nothing else, even bad JSON.
    await send_raw(alice, "not json")
    await expect_error(alice, "rate_limited")
    marker = await nothing_else(bob, alice)
    held = [m["text"] for m in (await history(session, server, "r"))["messages"]]
    assert held == ["m0", "m1", "m2", marker["text"]]


async def test_every_frame_costs_a_token(make_server, session):
    server = make_server("--burst", "4", "--rate", "0.1")
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    await send_raw(alice, "garbage")
    await expect_error(alice, "bad_json")
    await alice.ws.send_bytes(b"binary")
    await expect_error(alice, "bad_type")
    original = await say(alice, "once", nonce="n")
    await alice.send("once", nonce="n")  # a resend is a frame too
    assert await alice.expect("message") == original
    await alice.send("one too many")
    await expect_error(alice, "rate_limited")
    assert await bob.expect("message") == original
    await nothing_else(bob, alice)


async def test_tokens_refill_at_the_rate(make_server, session):
    server = make_server("--burst", "2", "--rate", "1")
    alice = await connect(session, server, name="alice", room="r")
    for n in range(3):
        await alice.send(f"a{n}")
    assert kinds([await alice.recv() for _ in range(3)]) == ["message", "message", "rate_limited"]
    # Time itself is under test here: after 1.1 s at 1 token/s exactly one token is back.
    await asyncio.sleep(1.1)  # time under test: tokens come back at the configured rate
    for n in range(2):
        await alice.send(f"b{n}")
    frames = [await alice.recv() for _ in range(2)]
    assert kinds(frames) == ["message", "rate_limited"], frames
    assert [f["text"] for f in frames if f["type"] == "message"] == ["b0"]


async def test_repeated_rate_limit_abuse_closes_1008(make_server, session):
    burst = 2
    server = make_server("--burst", str(burst), "--rate", "0.1")
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    for n in range(burst + 3 * burst - 1):
        await alice.send(f"m{n}")
    frames = [await alice.recv() for _ in range(burst + 3 * burst - 1)]
    assert kinds(frames) == ["message"] * burst + ["rate_limited"] * (3 * burst - 1)
    assert len(await messages(bob, burst)) == burst
    # One short of 3 x burst: still open.
    await nothing_else(bob, alice)
    await alice.send("the last straw")
    frames, code = await receive_until_close(alice)
    assert [f.get("code") for f in frames] == ["rate_limited"]  # sent, then the close
    assert code == 1008
    # The others carry on.
    await nothing_else(bob)


async def test_an_accepted_message_restarts_the_abuse_count(make_server, session):
    burst = 2
    server = make_server("--burst", str(burst), "--rate", "1")
    alice = await connect(session, server, name="alice", room="r")
    for n in range(burst + 3 * burst - 1):
        await alice.send(f"m{n}")
    frames = [await alice.recv() for _ in range(burst + 3 * burst - 1)]
    assert kinds(frames) == ["message"] * burst + ["rate_limited"] * (3 * burst - 1)
    await asyncio.sleep(1.1)  # time under test: one token comes back
    await say(alice, "accepted")
    for n in range(3 * burst - 1):
        await alice.send(f"again{n}")
    frames = [await alice.recv() for _ in range(3 * burst - 1)]
    assert kinds(frames) == ["rate_limited"] * (3 * burst - 1)
    await alice.send("the last straw")
    frames, code = await receive_until_close(alice)
    assert [f.get("code") for f in frames] == ["rate_limited"] and code == 1008


# --- frame size ----------------------------------------------------------------------------


def frame_of_size(size: int) -> str:
    """A valid message frame of exactly `size` bytes, padded with JSON whitespace."""
    head = '{"type":"message","text":"big"'
    frame = head + " " * (size - len(head) - 1) + "}"
    assert len(frame.encode()) == size and json.loads(frame)["text"] == "big"
    return frame


async def test_a_frame_of_exactly_the_maximum_is_accepted(server, session):
    alice = await connect(session, server, name="alice", room="r")
    await send_raw(alice, frame_of_size(16384))
    assert (await alice.expect("message"))["text"] == "big"


async def test_a_frame_over_the_maximum_closes_1009(server, session):
    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="r")
    await alice.expect("presence")
    await send_raw(alice, frame_of_size(16385))
    frames, code = await receive_until_close(alice)
    assert frames == [] and code == 1009
    await nothing_else(bob)
    assert len((await history(session, server, "r"))["messages"]) == 1


async def test_max_frame_follows_the_flag(make_server, session):
    server = make_server("--max-frame", "1024")
    alice = await connect(session, server, name="alice", room="r")
    await send_raw(alice, frame_of_size(1024))
    assert (await alice.expect("message"))["text"] == "big"
    await send_raw(alice, frame_of_size(1025))
    assert (await receive_until_close(alice))[1] == 1009
