"""Issue 12, last row: clients resuming with `since=0-0` into a long history, never reading.

Before: 40 of them held +315 MB (the whole replay, encoded at once, per client) until the
heartbeat dropped them ~51 s later. Now a replay goes through the connection's send buffer
like live messages, paced to the client: a non-reader holds at most --send-buffer, and is
closed 1013 once its unsent data is older than --send-timeout.
"""

from __future__ import annotations

from tests.hostile.conftest import Start
from tests.integration.conftest import parse_metric
from tests.support.client import ChatClient
from tests.support.hostile import (
    Peak,
    assert_quiet_log,
    closed_by_server,
    fill_room,
    max_text,
    non_reader,
    rss_mib,
    upgrade_request,
)
from tests.support.rawws import OP_CLOSE, OP_TEXT, RawWebSocket
from tests.support.timing import poll

FLAGS = ("--rate", "100000", "--burst", "100000", "--send-timeout", "1")
HISTORY = 1000  # the default --history-size: 8 MB of the largest messages


async def metric(session, server, series: str) -> float | None:
    async with session.get(server.url + "/metrics") as response:
        return parse_metric(await response.text(), series)


async def test_a_reader_gets_a_replay_far_larger_than_its_send_buffer(start: Start, session):
    server = start(*FLAGS)
    texts = [max_text(n) for n in range(HISTORY)]
    await fill_room(session, server, "big", texts)
    client = await ChatClient.connect(session, server.ws_url, room="big", since="0-0")
    replayed = await client.messages(HISTORY, timeout=30)
    assert [m["text"] for m in replayed] == texts  # 8 MB through a 256 KiB buffer, in order
    await client.send("live")
    assert (await client.next_of("message"))["text"] == "live"
    await client.close()
    assert await metric(session, server, 'webchat_disconnections_total{reason="slow_client"}') == 0


async def test_forty_non_readers_of_a_long_replay(start: Start, session):
    server = start(*FLAGS)
    await fill_room(session, server, "big", [max_text(n) for n in range(HISTORY)])
    baseline = rss_mib(server.proc.pid)
    peak = Peak(lambda: rss_mib(server.proc.pid))
    target = "/ws?room=big&since=0-0"
    clients = [await non_reader(server.port, upgrade_request(target)) for _ in range(40)]

    async def all_closed() -> bool:
        return (
            await metric(session, server, 'webchat_disconnections_total{reason="slow_client"}')
            == 40
        )

    # --send-timeout (1 s) after their buffers stopped draining, plus a heartbeat tick or two.
    await poll(all_closed, 20, "40 slow clients closed with 1013")

    async def all_dropped() -> bool:  # the close frame cannot be read: reset after 5 s
        return all(closed_by_server(c) for c in clients)

    await poll(all_dropped, 20, "40 non-readers dropped")
    grown = await peak.stop() - baseline
    # Without the bound each held its own encoded replay: 40 x 8 MB. With it, a send buffer
    # (256 KiB) and a page of frames being written.
    assert grown <= 40 * 0.25 + 24, f"RSS grew by {grown:.0f} MiB"
    for client in clients:
        client.close()
    assert await metric(session, server, "webchat_connected_users") == 0
    assert_quiet_log(server)


async def test_the_close_frame_says_1013(start: Start, session):
    """What a slow resumer reads, once it reads: the start of the replay, then 1013."""
    server = start(*FLAGS)
    await fill_room(session, server, "big", [max_text(n) for n in range(200)])
    slow = await RawWebSocket.connect(
        "127.0.0.1", server.port, "/ws?room=big&since=0-0", rcvbuf=4096, mss=1000
    )

    async def closed() -> bool:
        return (
            await metric(session, server, 'webchat_disconnections_total{reason="slow_client"}') == 1
        )

    await poll(closed, 20, "the slow resumer closed")
    frames = await slow.read_frames(timeout=20)
    slow.close()
    frames, close = frames[:-1], frames[-1]
    assert close.opcode == OP_CLOSE and close.close_code == 1013
    texts = [f.json() for f in frames if f.opcode == OP_TEXT]
    assert texts[0]["type"] == "welcome"
    replayed = [t["text"] for t in texts if t["type"] == "message"]
    assert replayed == [max_text(n) for n in range(len(replayed))]  # in order, none lost
    assert 0 < len(replayed) < 200  # it got part of the replay, not all of it
