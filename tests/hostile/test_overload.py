"""Issue 8's admission control and slow clients.

- An instance whose event loop lags past --max-loop-lag refuses new upgrades (503 with
  Retry-After) before they cost anything and says so on /readyz; its connected clients keep
  getting messages. The stall here is real: the process is stopped (SIGSTOP) while requests
  queue in its listen backlog, as a long fan-out or a GC pause would hold it.
- A client whose unsent data is older than --send-timeout is closed with 1013, however
  little it holds: a slow reader on a quiet room is found like one on a busy room.
"""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp

from tests.hostile.conftest import Start
from tests.integration.conftest import parse_metric
from tests.support.client import ChatClient
from tests.support.hostile import (
    assert_quiet_log,
    max_text,
    non_reader,
    read_answer,
    upgrade_request,
)
from tests.support.rawws import OP_CLOSE, OP_TEXT, RawWebSocket
from tests.support.timing import poll, seconds

STALL = 1.5  # seconds the process is stopped: three times --max-loop-lag


async def metric(session, server, series: str) -> float | None:
    async with session.get(server.url + "/metrics") as response:
        return parse_metric(await response.text(), series)


async def test_a_lagging_instance_refuses_new_clients_and_keeps_its_own(start: Start, session):
    server = start("--max-loop-lag", "0.5")
    reader = await ChatClient.connect(session, server.ws_url, room="r", name="reader")
    sender = await ChatClient.connect(session, server.ws_url, room="r", name="sender")
    await reader.next_of("presence")  # the sender's join

    server.signal(signal.SIGSTOP)
    try:
        # Queued while the loop cannot run: an upgrade, a readiness probe.
        upgrade = await non_reader(server.port, upgrade_request("/ws?room=r&name=late"), 65536)
        probe = await non_reader(
            server.port, b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 65536
        )
        await asyncio.sleep(seconds(STALL))  # the stall itself, not a wait for an event
    finally:
        server.signal(signal.SIGCONT)

    status, headers, body = await read_answer(upgrade)
    upgrade.close()
    assert status == 503, body
    assert 1 <= int(headers["retry-after"]) <= 30
    error = json.loads(body)["error"]
    assert error["code"] == "unavailable" and "overloaded" in error["message"]
    status, _, body = await read_answer(probe)
    probe.close()
    assert (status, json.loads(body)) == (503, {"status": "overloaded"})

    # Connected clients are served throughout.
    await sender.send("during the overload")
    assert (await reader.next_of("message"))["text"] == "during the overload"

    # Once the loop keeps time again, new clients are accepted (within a window or two).
    async def accepted() -> ChatClient | None:
        try:
            return await ChatClient.connect(session, server.ws_url, room="r", name="late")
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
        assert status == 503  # still refused
        return None

    late = await poll(accepted, 10, "an upgrade accepted after the stall")
    refused = await metric(session, server, 'webchat_connections_total{status="unavailable"}')
    assert refused is not None and refused >= 1
    for client in (reader, sender, late):
        await client.close()
    assert_quiet_log(server)


async def test_a_slow_reader_on_a_quiet_room_is_closed_by_age(start: Start, session):
    """30 messages of 8 KB (240 KB) are far below the 4 MiB send buffer, but a client that
    stops reading leaves some of them unsent: after --send-timeout it is closed with 1013."""
    server = start(
        "--send-buffer", "4MiB", "--send-timeout", "1", "--heartbeat", "4",
        "--rate", "1000", "--burst", "1000",
    )  # fmt: skip
    slow = await RawWebSocket.connect(
        "127.0.0.1", server.port, "/ws?room=quiet&name=slow", rcvbuf=4096, mss=1000
    )
    reader = await ChatClient.connect(session, server.ws_url, room="quiet", name="reader")
    texts = [max_text(n) for n in range(30)]
    for text in texts:
        await reader.ws.send_str(json.dumps({"type": "message", "text": text}, ensure_ascii=False))
    assert [m["text"] for m in await reader.messages(len(texts))] == texts
    # The room is quiet from here on: nothing more is sent to anyone.

    async def closed_slow() -> bool:
        series = 'webchat_disconnections_total{reason="slow_client"}'
        return await metric(session, server, series) == 1

    await poll(closed_slow, 15, "the slow reader closed by the age of its unsent data")
    frames = await slow.read_frames(timeout=20)
    slow.close()
    assert frames[-1].opcode == OP_CLOSE and frames[-1].close_code == 1013
    got = [f.json() for f in frames if f.opcode == OP_TEXT]
    # What was queued before the close is still delivered, in order, then the close.
    messages = [f["text"] for f in got if f["type"] == "message"]
    assert messages == texts[: len(messages)]

    # The reader, same room, same messages, was not touched.
    await reader.send("after")
    assert (await reader.next_of("message"))["text"] == "after"
    assert await metric(session, server, 'webchat_disconnections_total{reason="slow_client"}') == 1
    await reader.close()
    assert_quiet_log(server)
