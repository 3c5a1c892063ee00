"""RFC 6455 edges of the server's WebSocket, with a hand-made client (tests/support/rawws.py).

What the contract suite's aiohttp client never sends: fragmented messages (with a ping between
the fragments, and a UTF-8 character cut in two), invalid UTF-8 (1007), fragments adding up to
more than --max-frame (1009), protocol errors (1002, unmasked frames and close codes outside
RFC 6455's ranges included), frames written in the same packet as the upgrade request, many
messages in one write, which must be handled in order, pings that cost rate-limit tokens, and
resets while pongs are being written.
"""

from __future__ import annotations

import json
import struct

import pytest

from tests.support.hostile import assert_quiet_log
from tests.support.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    RawWebSocket,
    encode_client_frame,
)
from tests.support.servers import WebchatProcess


@pytest.fixture
def broker() -> str:
    """Framing does not depend on the broker: these run on the in-memory one only."""
    return "memory"


@pytest.fixture
def server(make_server) -> WebchatProcess:
    return make_server("--max-frame", "1024", "--rate", "1000", "--burst", "1000")


def message(text: str) -> bytes:
    return json.dumps({"type": "message", "text": text}, ensure_ascii=False).encode()


async def join(
    server: WebchatProcess, name: str = "raw", early: bytes = b"", room: str = "ws"
) -> RawWebSocket:
    """A raw client in `room` whose welcome has been read."""
    raw = await RawWebSocket.connect(
        "127.0.0.1", server.port, f"/ws?room={room}&name={name}", rcvbuf=65536, early=early
    )
    assert (await raw.next_frame()).json()["type"] == "welcome"
    return raw


async def expect_close(raw: RawWebSocket, code: int) -> None:
    """The next frame closes the connection with `code`, and the server then ends the TCP
    connection (without the client closing first)."""
    frame = await raw.next_frame()
    assert frame.opcode == OP_CLOSE and frame.close_code == code, frame
    try:
        assert await raw.read_frames() == []  # returns at EOF, fails if the server keeps it open
        assert raw.eof
    finally:
        raw.close()


async def echo(raw: RawWebSocket) -> str:
    frame = await raw.next_frame()
    assert frame.opcode == OP_TEXT, frame
    body = frame.json()
    assert body["type"] == "message", body
    return str(body["text"])


async def test_a_fragmented_text_message_is_one_message(server):
    raw = await join(server)
    data = message("fragmenté")  # the é is cut between its two bytes below
    cut = data.index("é".encode()) + 1
    await raw.send_frame(OP_TEXT, data[:5], fin=False)
    await raw.send_frame(OP_PING, b"between fragments")  # control frames may interleave
    await raw.send_frame(OP_CONT, data[5:cut], fin=False)
    await raw.send_frame(OP_CONT, data[cut:])
    assert await raw.next_frame() == Frame(OP_PONG, b"between fragments")
    assert await echo(raw) == "fragmenté"
    raw.close()


async def test_a_fragmented_binary_message_gets_one_bad_type(server):
    raw = await join(server)
    await raw.send_frame(OP_BINARY, b"\x00\x01", fin=False)
    await raw.send_frame(OP_CONT, b"\x02", fin=False)
    await raw.send_frame(OP_CONT, b"\x03")
    error = (await raw.next_frame()).json()
    assert error["type"] == "error" and error["code"] == "bad_type", error
    await raw.send_frame(OP_TEXT, message("after"))
    assert await echo(raw) == "after"  # one error for the whole message, then the echo
    raw.close()


@pytest.mark.parametrize(
    "frames",
    [
        [(OP_TEXT, b'{"type":"message","text":"\xff"}', True)],
        [(OP_TEXT, message("caf") + b"\xc3", True)],  # a character cut short at the end
        [(OP_TEXT, b'{"type":"message","text":"', False), (OP_CONT, b'\xed\xa0\x80"}', True)],
    ],
    ids=["invalid-byte", "truncated", "surrogate-in-fragment"],
)
async def test_text_that_is_not_utf8_closes_1007(server, frames):
    raw = await join(server)
    for opcode, payload, fin in frames:
        await raw.send_frame(opcode, payload, fin=fin)
    await expect_close(raw, 1007)


async def test_fragments_adding_up_past_the_maximum_close_1009(server):
    raw = await join(server)
    head = b'{"type":"message","text":"big"'
    exactly = head + b" " * (1024 - len(head) - 1) + b"}"
    await raw.send_frame(OP_TEXT, exactly[:400], fin=False)
    await raw.send_frame(OP_CONT, exactly[400:800], fin=False)
    await raw.send_frame(OP_CONT, exactly[800:])
    assert await echo(raw) == "big"  # 1,024 bytes in three fragments: accepted
    await raw.send_frame(OP_TEXT, b" " * 400, fin=False)
    await raw.send_frame(OP_CONT, b" " * 400, fin=False)
    await raw.send_frame(OP_CONT, b" " * 400)
    await expect_close(raw, 1009)


PROTOCOL_ERRORS = {
    "unmasked": encode_client_frame(OP_TEXT, message("hi"), masked=False),
    "reserved-opcode": encode_client_frame(0x3, b"x"),
    "rsv1-without-extension": bytes([0xC1]) + encode_client_frame(OP_TEXT, b"{}")[1:],
    "fragmented-ping": encode_client_frame(OP_PING, b"x", fin=False),
    "ping-over-125-bytes": encode_client_frame(OP_PING, b"x" * 126),
    "continuation-first": encode_client_frame(OP_CONT, b"x"),
    "text-inside-a-fragmented-message": encode_client_frame(OP_TEXT, b"{", fin=False)
    + encode_client_frame(OP_TEXT, b"{}"),
    "close-code-1005-on-the-wire": encode_client_frame(OP_CLOSE, struct.pack("!H", 1005)),
    "close-code-5000": encode_client_frame(OP_CLOSE, struct.pack("!H", 5000)),  # over 4999
    "close-code-999": encode_client_frame(OP_CLOSE, struct.pack("!H", 999)),
}


@pytest.mark.parametrize("data", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_protocol_errors_close_1002(server, data):
    raw = await join(server)
    await raw.send_bytes(data)
    await expect_close(raw, 1002)


async def test_a_client_close_is_answered_and_the_server_ends_the_connection(server):
    raw = await join(server)
    await raw.send_close(1000)
    await expect_close(raw, 1000)


async def test_frames_sent_with_the_upgrade_request_come_after_the_welcome(server):
    early = encode_client_frame(OP_TEXT, message("early")) + encode_client_frame(OP_PING, b"p")
    raw = await join(server, early=early)  # the welcome is the first frame
    frames = [await raw.next_frame() for _ in range(2)]
    assert Frame(OP_PONG, b"p") in frames
    (text,) = [f for f in frames if f.opcode == OP_TEXT]
    assert text.json()["text"] == "early"
    raw.close()


async def test_many_messages_in_one_write_are_handled_in_order(server):
    raw = await join(server)
    texts = [f"m{n}" for n in range(60)]
    data = b"".join(encode_client_frame(OP_TEXT, message(t)) for t in texts[:30])
    data += encode_client_frame(OP_TEXT, b"not json")  # answered in place, does not stop the rest
    data += b"".join(encode_client_frame(OP_TEXT, message(t)) for t in texts[30:])
    await raw.send_bytes(data)
    got, errors = [], []
    while len(got) < len(texts):
        body = (await raw.next_frame()).json()
        (errors if body["type"] == "error" else got).append(body)
    assert [m["text"] for m in got] == texts
    assert [e["code"] for e in errors] == ["bad_json"]
    raw.close()


async def test_a_frame_half_read_or_a_message_in_fragments_waits_while_others_are_read(server):
    """Between messages a socket holds no parser: it borrows one for each read (websocket.py,
    Parsers). One left with half a frame, or with part of a fragmented message, keeps it
    while other clients' reads go on, and its message comes out whole."""
    a = await join(server, "a", room="ws-a")
    b = await join(server, "b", room="ws-b")
    whole = encode_client_frame(OP_TEXT, message("a whole frame"))
    await a.send_bytes(whole[:4])  # the head of a frame, and not all of its mask
    await b.send_frame(OP_TEXT, message("b meanwhile"))
    assert await echo(b) == "b meanwhile"
    await a.send_bytes(whole[4:9])
    await b.send_frame(OP_PING, b"b pings")
    assert await b.next_frame() == Frame(OP_PONG, b"b pings")
    await a.send_bytes(whole[9:])
    assert await echo(a) == "a whole frame"
    data = message("in fragments")
    await a.send_frame(OP_TEXT, data[:7], fin=False)
    await b.send_frame(OP_TEXT, message("b again"))
    assert await echo(b) == "b again"
    await a.send_frame(OP_CONT, data[7:])
    assert await echo(a) == "in fragments"
    a.close()
    b.close()


@pytest.fixture
def strict(make_server) -> WebchatProcess:
    """Tokens refill too slowly to matter (one every 1,000 s): a burst of 4 is all a client has."""
    return make_server("--rate", "0.001", "--burst", "4")


async def test_pings_cost_a_token_and_a_ping_flood_ends_in_1008(strict):
    raw = await join(strict)
    await raw.send_bytes(b"".join(encode_client_frame(OP_PING, b"%d" % n) for n in range(4)))
    assert [await raw.next_frame() for _ in range(4)] == [
        Frame(OP_PONG, b"%d" % n) for n in range(4)
    ]
    # The bucket is empty: a ping gets rate_limited and no pong, as a message would.
    await raw.send_frame(OP_PING, b"refused")
    error = (await raw.next_frame()).json()
    assert error["type"] == "error" and error["code"] == "rate_limited", error
    # The 3 x burst-th refusal in a row closes with 1008 (a pong costs a token too).
    await raw.send_frame(OP_PONG, b"unsolicited")
    await raw.send_bytes(b"".join(encode_client_frame(OP_PING, b"x") for _ in range(10)))
    frames = await raw.read_frames()
    assert all(f.opcode != OP_PONG for f in frames), frames
    codes = [f.json()["code"] for f in frames if f.opcode == OP_TEXT]
    assert codes == ["rate_limited"] * 11, codes
    assert frames[-1].opcode == OP_CLOSE and frames[-1].close_code == 1008, frames[-1]
    raw.close()


async def test_a_reset_while_pongs_are_written_is_a_quiet_disconnect(server):
    pings = b"".join(encode_client_frame(OP_PING, b"p" * 125) for _ in range(200))
    for n in range(10):
        # A small receive window: the pongs back up in the server while it writes them.
        raw = await RawWebSocket.connect("127.0.0.1", server.port, f"/ws?room=ws&name=r{n}")
        assert (await raw.next_frame()).json()["type"] == "welcome"
        await raw.send_bytes(pings)
        raw.abort()  # a TCP reset at once, with pongs still to be written
    alive = await join(server)  # the server goes on
    await alive.send_frame(OP_TEXT, message("after"))
    assert await echo(alive) == "after"
    alive.close()
    assert_quiet_log(server)
