"""PROTOCOL.md "Slow clients": a client that stops reading is closed 1013; nobody else waits.

The slow client is a real socket that stops calling recv (tests/support/rawws.py), with a small
receive buffer and a small MSS so the kernel buffers on both ends hold little and the server's
own send buffer (--send-buffer 64KiB) overflows after about a hundred 1.5 KB messages. The
overflow is seen in /metrics (webchat_disconnections_total{reason="slow_client"}); whether the
server process still holds the slow socket is read from /proc (its file descriptors).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import ReadMetric
from tests.support.client import ChatClient
from tests.support.rawws import OP_CLOSE, OP_PING, OP_TEXT, Frame, RawWebSocket, process_has_socket
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

ROOM = "busy"
FILLER = "x" * 1500
ROUND = 20  # messages per round; the sender waits for its echoes after each round
MAX_ROUNDS = 100  # 2,000 messages, ~3 MB: far beyond any kernel buffer with the small MSS
ROUNDS_AFTER_OVERFLOW = 3
SLOW_CLOSES = 'webchat_disconnections_total{reason="slow_client"}'
CONNECTED = "webchat_connected_users"
SLOW_CLOSE_GRACE = 5.0  # PROTOCOL.md: the connection is kept up to 5 s, then dropped

SERVER_FLAGS = ("--rate", "100000", "--burst", "100000", "--send-buffer", "64KiB")


async def connect_slow(server: WebchatProcess) -> RawWebSocket:
    """A client that completes the handshake and then reads nothing until told to."""
    return await RawWebSocket.connect(
        "127.0.0.1", server.port, f"/ws?room={ROOM}&name=slow", rcvbuf=4096, mss=1000
    )


async def publish_until_overflow(
    sender: ChatClient,
    server: WebchatProcess,
    read_metric: ReadMetric,
    *,
    one_at_a_time: bool = False,
) -> tuple[list[dict[str, Any]], float, float]:
    """Send rounds until the server reports the slow close, then a few more rounds.

    With `one_at_a_time`, the sender waits for each echo before the next message, so the
    server delivers one message per write and overflows only with a full buffer.
    Returns the echoed messages in order, and the monotonic times just before and just after
    the round during which the overflow happened.
    """
    sent: list[dict[str, Any]] = []
    before = after = 0.0
    rounds_left = None
    for _ in range(MAX_ROUNDS):
        round_started = time.monotonic()
        texts = [f"{len(sent) + i:05d} {FILLER}" for i in range(ROUND)]
        echoes = []
        for text in texts:
            await sender.send(text)
            if one_at_a_time:
                echoes += await sender.messages(1)
        echoes += await sender.messages(ROUND - len(echoes))
        assert [e["text"] for e in echoes] == texts, (
            "the sender's echoes are its messages, in order"
        )
        sent += echoes
        if rounds_left is None:
            if await read_metric(server, SLOW_CLOSES):
                before, after = round_started, time.monotonic()
                rounds_left = ROUNDS_AFTER_OVERFLOW
        else:
            rounds_left -= 1
            if rounds_left == 0:
                return sent, before, after
    raise AssertionError(f"the slow client was not closed after {len(sent)} messages")


async def collect_until(client: ChatClient, last_text: str) -> list[dict[str, Any]]:
    """Message frames (presence skipped) up to and including the one with `last_text`."""
    got: list[dict[str, Any]] = []
    for _ in range(MAX_ROUNDS * ROUND + 1):
        frame = await client.next_of("message", timeout=15)
        got.append(frame)
        if frame["text"] == last_text:
            return got
    raise AssertionError(f"{last_text!r} never came")


def split_frames(frames: list[Frame]) -> tuple[list[dict[str, Any]], list[Frame]]:
    """The JSON text frames, and the rest but keep-alive pings, of what the slow client read.

    The heartbeat pings every socket at a random phase, so a ping may precede the close.
    """
    texts = [f.json() for f in frames if f.opcode == OP_TEXT]
    return texts, [f for f in frames if f.opcode not in (OP_TEXT, OP_PING)]


def assert_prefix_of(received: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    """What the slow client got is the first messages, in order, each once, unchanged."""
    messages = [f for f in received if f["type"] == "message"]
    assert [f["type"] for f in received if f["type"] != "message"] == ["welcome"]
    assert received[0]["type"] == "welcome"
    assert messages == sent[: len(messages)]


async def wait_for_metric(
    read_metric: ReadMetric, server: WebchatProcess, series: str, value: float, timeout: float
) -> float:
    """Poll /metrics until `series` equals `value`; return the monotonic time it did."""

    async def reached() -> bool:
        return await read_metric(server, series) == value

    await poll(reached, timeout, f"{series} == {value}")
    return time.monotonic()


async def wait_until_dropped(server: WebchatProcess, inode: int, deadline: float) -> float:
    """Poll until the server process no longer holds the socket `inode`; return when."""
    assert server.proc is not None
    pid = server.proc.pid
    # /proc is the only witness: the client never reads, so no event reports the drop.
    await poll(
        lambda: not process_has_socket(pid, inode),
        max(0.0, deadline - time.monotonic()) / seconds(1),
        f"the drop of the slow client's socket, {SLOW_CLOSE_GRACE:g} s after the overflow",
    )
    return time.monotonic()


async def test_slow_client_is_closed_1013_while_100_others_get_every_message(
    make_server, wide_session: aiohttp.ClientSession, read_metric: ReadMetric
) -> None:
    server = make_server(*SERVER_FLAGS)
    receivers = await asyncio.gather(
        *(
            ChatClient.connect(wide_session, server.ws_url, room=ROOM, name=f"r{i:03d}")
            for i in range(100)
        )
    )
    sender = await ChatClient.connect(wide_session, server.ws_url, room=ROOM, name="sender")
    slow = await connect_slow(server)
    try:
        assert slow.rcvbuf() <= 16384, "the kernel did not honour the small receive buffer"
        # Every receiver reads in the background while the sender publishes.
        last_text = "end of test"
        collectors = [asyncio.create_task(collect_until(r, last_text)) for r in receivers]
        try:
            sent, _, overflow_seen = await publish_until_overflow(sender, server, read_metric)
            await sender.send(last_text)
            sent += await sender.messages(1)

            # The slow client starts reading well within the 5 s the server keeps it: it finds
            # the frames it had, in order, then a close 1013 and nothing after it.
            frames = await slow.read_frames(timeout=10)
            read_at = time.monotonic()
            assert read_at - overflow_seen < SLOW_CLOSE_GRACE - 1, "test too slow to be valid"
            received, others = split_frames(frames)
            assert [f.opcode for f in others] == [OP_CLOSE], others
            assert others[0].close_code == 1013, others[0]
            assert_prefix_of(received, sent)
            assert 0 < len(received) - 1 < len(sent) - ROUND * ROUNDS_AFTER_OVERFLOW
            await slow.send_close(1013)
            assert await slow.read_frames(timeout=5) == [], "nothing may follow the close frame"
            assert slow.eof

            results = await asyncio.gather(*collectors)
        finally:
            for task in collectors:
                task.cancel()
            await asyncio.gather(*collectors, return_exceptions=True)

        ids = [m["id"] for m in sent]
        assert len(set(ids)) == len(ids)
        for index, got in enumerate(results):
            assert [m["id"] for m in got] == ids, f"receiver r{index:03d} missed or reordered"
            assert got == sent, f"receiver r{index:03d} got altered frames"

        assert await read_metric(server, SLOW_CLOSES) == 1.0
        # The slow connection is gone; the other 101 are all still there.
        await wait_for_metric(read_metric, server, CONNECTED, 101.0, timeout=5)
        assert "Traceback" not in server.log(), server.log()
    finally:
        slow.close()
        await asyncio.gather(*(c.close() for c in [*receivers, sender]))


@pytest.mark.parametrize("send_buffer", ["64KiB", "256KiB"])
async def test_slow_client_that_never_reads_is_dropped_after_5_seconds(
    make_server, wide_session: aiohttp.ClientSession, read_metric: ReadMetric, send_buffer: str
) -> None:
    server = make_server("--rate", "100000", "--burst", "100000", "--send-buffer", send_buffer)
    receivers = [
        await ChatClient.connect(wide_session, server.ws_url, room=ROOM, name=f"r{i}")
        for i in range(3)
    ]
    sender = await ChatClient.connect(wide_session, server.ws_url, room=ROOM, name="sender")
    slow = await connect_slow(server)
    try:
        assert await read_metric(server, CONNECTED) == 5.0
        assert server.proc is not None
        inode = slow.server_socket_inode()
        collectors = [asyncio.create_task(collect_until(r, "end")) for r in receivers]
        try:
            # One message per write: the buffer overflows full, so the kernel's send buffer,
            # which may still grow a little, cannot take all that is left (it would then be
            # right for the process to let go of the socket at once).
            sent, overflow_before, overflow_seen = await publish_until_overflow(
                sender, server, read_metric, one_at_a_time=True
            )
            await sender.send("end")
            sent += await sender.messages(1)
            results = await asyncio.gather(*collectors)
        finally:
            for task in collectors:
                task.cancel()
            await asyncio.gather(*collectors, return_exceptions=True)
        for got in results:
            assert got == sent

        # The server keeps its socket (so the close could still be read) and drops it about
        # 5 s after the overflow, although the client never reads a byte.
        assert process_has_socket(server.proc.pid, inode), "dropped at once: no close to read"
        deadline = overflow_seen + SLOW_CLOSE_GRACE + seconds(2)
        dropped_at = await wait_until_dropped(server, inode, deadline)
        assert dropped_at - overflow_before >= SLOW_CLOSE_GRACE - 1, "dropped too early"
        assert await read_metric(server, CONNECTED) == 4.0

        # Reading now yields what the kernels still held (the first messages, in order) and
        # then the end of the stream: the rest of the server's buffer, usually the close frame
        # too, died with the socket.
        frames = await slow.read_frames(timeout=10)
        received, others = split_frames(frames)
        assert slow.eof
        assert [f.close_code for f in others] in ([], [1013]), others
        assert_prefix_of(received, sent)
        assert await read_metric(server, SLOW_CLOSES) == 1.0
    finally:
        slow.close()
        await asyncio.gather(*(c.close() for c in [*receivers, sender]))
