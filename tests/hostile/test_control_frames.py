"""Issue 12's control-frame rows: a ping (or pong) flood on one socket, and pings followed by
a TCP reset.

Before: pings and pongs were never rate limited (115k/s on one socket; four such sockets took
others' echo p50 from 0.9 to 132 ms), and a reset while the server answered a ping logged a
`ClientConnectionResetError` traceback (20 of 20 tries). Now every frame costs a token as
PROTOCOL.md says, so a flood ends in `rate_limited` and 1008 like a message flood, and a reset
during a pong is an ordinary disconnect.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest

from tests.hostile.conftest import Start
from tests.integration.conftest import parse_metric
from tests.support.hostile import assert_quiet_log, http_get
from tests.support.rawws import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    encode_client_frame,
)
from tests.support.servers import WebchatProcess
from tests.support.timing import poll

BURST = 20


async def metric(server: WebchatProcess, series: str) -> float | None:
    status, _, body = await http_get(server.port, "/metrics")
    assert status == 200
    return parse_metric(body.decode(), series)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG], ids=["pings", "pongs"])
async def test_a_control_frame_flood_is_rate_limited_and_closed_1008(start: Start, opcode: int):
    server = start("--rate", "10", "--burst", str(BURST))
    ws = await RawWebSocket.connect("127.0.0.1", server.port, "/ws?room=r&name=flood")
    try:
        # 300 frames at once: far more than the bucket (20, refilled at 10/s) allows.
        flood = encode_client_frame(opcode, b"x") * 300
        ws.sock.setblocking(True)
        ws.sock.sendall(flood)
        ws.sock.setblocking(False)
        frames = await ws.read_frames(timeout=10)
    finally:
        ws.close()
    assert frames[0].opcode == OP_TEXT and frames[0].json()["type"] == "welcome"
    pongs = [f for f in frames if f.opcode == OP_PONG]
    texts = [f.json() for f in frames[1:] if f.opcode == OP_TEXT]
    errors = [t["code"] for t in texts if t["type"] == "error"]
    # The burst is served (a few more tokens may refill meanwhile), the rest refused.
    if opcode == OP_PING:
        assert BURST <= len(pongs) < BURST + 10, len(pongs)
    else:
        assert pongs == []
    assert errors == ["rate_limited"] * (3 * BURST), errors[:5]
    assert frames[-1].opcode == OP_CLOSE and frames[-1].close_code == 1008
    abuse = 'webchat_disconnections_total{reason="rate_limit_abuse"}'
    assert await metric(server, abuse) == 1
    assert_quiet_log(server)


async def test_a_reset_while_pings_are_answered_is_a_normal_disconnect(start: Start):
    server = start("--rate", "1000", "--burst", "1000")
    for n in range(20):
        ws = await RawWebSocket.connect("127.0.0.1", server.port, f"/ws?room=r&name=p{n}")
        # Many pings, then a reset (SO_LINGER 0) while the server is still answering them.
        ws.sock.setblocking(True)
        ws.sock.sendall(encode_client_frame(OP_PING, b"y" * 100) * 500)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close()

    # Every session ended, as the client's; nothing in the log.
    async def all_ended() -> bool:
        return await metric(server, "webchat_connected_users") == 0

    await poll(all_ended, 10, "every session to end")
    ended = await metric(server, 'webchat_disconnections_total{reason="client"}')
    assert ended == 20
    assert_quiet_log(server)


async def test_answering_the_servers_pings_costs_no_token(start: Start):
    """A client at its rate is not limited for the server's keep-alive: the pong answering a
    heartbeat ping is free (an unsolicited one costs a token, as above)."""
    server = start("--heartbeat", "1", "--rate", "0.01", "--burst", "2")
    ws = await RawWebSocket.connect("127.0.0.1", server.port, "/ws?room=r&name=keepalive")
    try:
        pings = 0
        for _ in range(40):  # a ping comes every second (at a random phase)
            for frame in await ws.read_frames(until_close=False, timeout=1):
                assert frame.opcode != OP_CLOSE, frame
                if frame.opcode == OP_PING:
                    pings += 1
                    await ws.send_frame(OP_PONG, frame.payload)
            if pings >= 3:
                break
        assert pings >= 3
        # The whole burst is still there: both messages are accepted.
        for n in range(2):
            await ws.send_frame(OP_TEXT, json.dumps({"type": "message", "text": f"m{n}"}).encode())
        texts: list[dict] = []
        while len(texts) < 2:
            frames = await ws.read_frames(until_close=False, timeout=5)
            assert frames, "no answer to the two messages"
            texts += [f.json() for f in frames if f.opcode == OP_TEXT]
        assert [t.get("text") for t in texts] == ["m0", "m1"], texts
    finally:
        ws.close()
