"""PROTOCOL.md "Draining": SIGTERM or SIGINT to a real webchat process.

At once: /readyz and new upgrades answer 503. For the drain delay, connected clients go on
chatting; then each is closed with 1012, spread over the drain spread; the process exits 0
within 10 s of the signal, even when a client never reads.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import aiohttp
import pytest

from tests.support.client import ChatClient
from tests.support.rawws import OP_CLOSE, OP_TEXT, HandshakeError, RawWebSocket
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

ROOM = "drain"
EXIT_WITHIN = 10.0  # PROTOCOL.md: an instance exits within 10 s of the signal

SIGNALS = pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=seconds(2))) as response:
        return response.status


async def poll_status(
    session: aiohttp.ClientSession, url: str, wanted: int, deadline: float
) -> float:
    """Poll `url` until it answers `wanted` (before the monotonic `deadline`); return when."""

    async def answered() -> bool:
        return await status_of(session, url) == wanted

    await poll(answered, max(0.0, deadline - time.monotonic()) / seconds(1), f"{wanted} from {url}")
    return time.monotonic()


async def wait_exit(server: WebchatProcess, deadline: float) -> tuple[int, float]:
    """Poll until the process exits; return its status and the monotonic time it was seen."""
    assert server.proc is not None
    try:
        code = await asyncio.to_thread(server.proc.wait, max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"webchat did not exit in time:\n{server.log()}") from None
    return code, time.monotonic()


async def close_of(client: ChatClient, timeout: float) -> tuple[int | None, float]:
    """Read until the server closes `client`: the close code and when it came."""
    code = await client.closed(timeout=timeout)
    return code, time.monotonic()


async def assert_upgrade_refused_503(server: WebchatProcess) -> None:
    with pytest.raises(HandshakeError) as refused:
        await RawWebSocket.connect("127.0.0.1", server.port, f"/ws?room={ROOM}&name=late")
    assert refused.value.status == 503
    assert json.loads(refused.value.body)["error"]["code"] == "unavailable"


@SIGNALS
async def test_drain_refuses_new_clients_then_closes_1012_spread_out_and_exits_0(
    make_server, wide_session: aiohttp.ClientSession, signum: int
) -> None:
    delay, spread, count = 1.0, 1.5, 20
    server = make_server("--drain-delay", str(delay), "--drain-spread", str(spread))
    clients = await asyncio.gather(
        *(
            ChatClient.connect(wide_session, server.ws_url, room=ROOM, name=f"c{i:02d}")
            for i in range(count)
        )
    )
    try:
        signalled = time.monotonic()
        server.signal(signum)

        # At once (well before the drain delay ends): not ready, and no new clients.
        not_ready_at = await poll_status(
            wide_session, server.url + "/readyz", 503, signalled + seconds(delay)
        )
        await assert_upgrade_refused_503(server)
        assert await status_of(wide_session, server.url + "/healthz") == 200

        # During the drain delay, connected clients still send and receive.
        await clients[-1].send("still here", nonce="during-drain")
        got = await asyncio.gather(*(c.next_of("message") for c in clients))
        assert {(m["text"], m["nonce"]) for m in got} == {("still here", "during-drain")}
        checked_at = time.monotonic()
        assert checked_at - signalled < delay, "the checks took longer than the drain delay"

        # Then every client is closed with 1012, the closes spread over the drain spread.
        closes = await asyncio.gather(*(close_of(c, delay + spread + 5) for c in clients))
        assert [code for code, _ in closes] == [1012] * count
        times = sorted(at for _, at in closes)
        assert times[0] > not_ready_at
        assert times[0] - signalled >= delay - 0.05, "closed before the drain delay ended"
        # Evenly spread, the last close comes (count-1)/count * spread after the first.
        assert times[-1] - times[0] >= spread / 3, f"closes not spread out: {times}"
        assert times[-1] - signalled <= delay + spread + seconds(2)

        code, exited = await wait_exit(server, signalled + EXIT_WITHIN)
        assert code == 0, server.log()
        assert exited - signalled <= EXIT_WITHIN
        assert "Traceback" not in server.log(), server.log()
    finally:
        await asyncio.gather(*(c.close() for c in clients))


@SIGNALS
async def test_drain_with_no_clients_exits_0_after_the_delay(
    make_server, wide_session: aiohttp.ClientSession, signum: int
) -> None:
    server = make_server("--drain-delay", "0.3", "--drain-spread", "5")
    signalled = time.monotonic()
    server.signal(signum)
    await poll_status(wide_session, server.url + "/readyz", 503, signalled + seconds(2))
    code, exited = await wait_exit(server, signalled + EXIT_WITHIN)
    assert code == 0, server.log()
    # Nobody to close: the spread does not apply, only the delay and the shutdown.
    assert exited - signalled < 0.3 + seconds(3)


async def test_drain_exit_is_not_held_up_by_a_client_that_never_reads(
    make_server, wide_session: aiohttp.ClientSession
) -> None:
    # A large send buffer: the stuck client is not closed 1013 before the drain.
    server = make_server(
        *("--drain-delay", "0.2", "--drain-spread", "0.5", "--send-buffer", "4MiB"),
        *("--rate", "100000", "--burst", "100000"),
    )
    stuck = await RawWebSocket.connect(
        "127.0.0.1", server.port, f"/ws?room={ROOM}&name=stuck", rcvbuf=4096, mss=1000
    )
    sender = await ChatClient.connect(wide_session, server.ws_url, room=ROOM, name="sender")
    try:
        # Fill the stuck client's kernel buffers and part of the server's own (~300 KB).
        for start in range(0, 200, 20):
            for i in range(start, start + 20):
                await sender.send(f"{i:04d} " + "y" * 1500)
            await sender.messages(20)

        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        assert await sender.closed(timeout=5) == 1012
        code, exited = await wait_exit(server, signalled + EXIT_WITHIN)
        assert code == 0, server.log()
        assert exited - signalled <= EXIT_WITHIN

        # What the stuck client finally reads is the start of the room's stream, in order;
        # the close 1012 may have been dropped with the rest of the server's buffer.
        frames = await stuck.read_frames(timeout=10)
        texts = [f.json() for f in frames if f.opcode == OP_TEXT]
        assert texts[0]["type"] == "welcome"
        numbers = [int(m["text"][:4]) for m in texts if m["type"] == "message"]
        assert numbers == list(range(len(numbers)))
        assert [f.close_code for f in frames if f.opcode != OP_TEXT] in ([], [1012])
        assert stuck.eof or frames[-1].opcode == OP_CLOSE
    finally:
        stuck.close()
        await sender.close()
