"""Issue 12's socket rows: half-open requests (slowloris), oversized request lines and headers,
and a flood of connections up to the descriptor limit.

Before: 500 half-open requests were held for 100 s; a request line over 8,190 bytes got a
plain-text 400 echoing it plus a traceback; at the descriptor limit asyncio logged about
5,700 tracebacks a second. Now headers must be complete within --header-timeout, lines and
headers are limited (8 KiB, 100 fields) and refused with the JSON `bad_request`, and the
process keeps below its descriptor limit (--max-connections, derived from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.hostile.conftest import Start
from tests.integration.conftest import parse_metric
from tests.support.hostile import (
    Peak,
    assert_quiet_log,
    closed_by_server,
    fd_count,
    http_get,
    non_reader,
    read_answer,
    upgrade_request,
)
from tests.support.rawws import HandshakeError, RawWebSocket
from tests.support.timing import poll, seconds

HEADERS = b"Host: 127.0.0.1\r\nConnection: close\r\n"


async def test_slowloris_connections_are_closed_at_the_header_timeout(start: Start, session):
    server = start("--header-timeout", "1")
    baseline = fd_count(server.proc.pid)
    silent = [await non_reader(server.port) for _ in range(100)]  # not a byte
    partial = [await non_reader(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(100)]
    loop = asyncio.get_running_loop()

    async def dribble() -> None:  # one more header line every 0.2 s, never the blank line
        while True:
            for sock in partial:
                if not closed_by_server(sock):
                    with contextlib.suppress(OSError):  # closed meanwhile
                        await loop.sock_sendall(sock, b"X-Slow: 1\r\n")
            await asyncio.sleep(0.2)  # the attack's pace

    dribbling = asyncio.create_task(dribble())
    try:
        assert (await http_get(server.port, "/healthz"))[0] == 200  # others are served

        async def all_closed() -> bool:
            return all(closed_by_server(s) for s in silent + partial)

        await poll(all_closed, 10, "the server closing 200 half-open connections")
    finally:
        dribbling.cancel()
        for sock in silent + partial:
            sock.close()

    async def released() -> bool:
        return fd_count(server.proc.pid) <= baseline

    await poll(released, 5, "the server's descriptors back to where they were")
    # A WebSocket lives far longer than the header timeout: the clock stops at the headers.
    async with session.ws_connect(server.ws_url) as ws:
        assert (await ws.receive_json())["type"] == "welcome"
        await asyncio.sleep(seconds(1.5))  # longer than --header-timeout, on purpose
        await ws.send_json({"type": "message", "text": "still here"})
        assert (await ws.receive_json())["text"] == "still here"
    # Reported in a few throttled lines, not one per connection.
    assert_quiet_log(server, max_lines=10)


BAD_REQUESTS = {
    "request line": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + HEADERS, "longer than 8192"),
    "header field": (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n" + HEADERS, "longer"),
    "header count": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + HEADERS,
        "more than 100 header fields",
    ),
    "TLS to HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), "malformed"),
}


async def test_oversized_and_malformed_requests_get_json_400(start: Start) -> None:
    server = start()
    for name, (request_bytes, problem) in BAD_REQUESTS.items():
        for _ in range(25):
            sock = await non_reader(server.port, request_bytes + b"\r\n", rcvbuf=65536)
            status, headers, body = await read_answer(sock)
            sock.close()
            assert status == 400, name
            assert headers["content-type"].startswith("application/json"), name
            error = json.loads(body)["error"]
            assert error["code"] == "bad_request" and problem in error["message"], name
            assert b"aaaa" not in body  # the request is not echoed
            # The same security headers as every other answer.
            assert headers["x-content-type-options"] == "nosniff" and headers["server"] == "webchat"
    # The limits are not tighter than promised: 8 KiB of request line, 100 header fields.
    line = b"GET /healthz?" + b"a" * (8192 - len(b"GET /healthz? HTTP/1.1") - 2) + b" HTTP/1.1"
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(98))
    sock = await non_reader(server.port, line + b"\r\n" + fields + HEADERS + b"\r\n", 65536)
    assert (await read_answer(sock))[0] == 200
    sock.close()
    # 100 bad requests, reported in a line a second at most: no traceback, no ERROR.
    assert_quiet_log(server, max_lines=len(BAD_REQUESTS) * 2)


async def test_the_process_stays_below_its_descriptor_limit(start: Start) -> None:
    """Under a limit of 256 descriptors: WebSockets up to the derived cap, then 503; beyond
    the socket cap new connections are closed at once; no accept ever fails."""
    server = start("--header-timeout", "60", nofile=256)
    # limits.budget(0, 256): 112 WebSockets, 128 sockets (128 descriptors kept in reserve).
    websockets, sockets = 112, 128
    peak = Peak(lambda: fd_count(server.proc.pid))
    clients = []
    for n in range(websockets):
        clients.append(await RawWebSocket.connect("127.0.0.1", server.port, f"/ws?name=c{n}"))
    full = fd_count(server.proc.pid)
    with pytest.raises(HandshakeError) as refused:
        await RawWebSocket.connect("127.0.0.1", server.port, "/ws?name=one-more")
    assert refused.value.status == 503
    assert json.loads(refused.value.body)["error"]["code"] == "unavailable"
    status, _, body = await http_get(server.port, "/readyz")
    assert (status, json.loads(body)) == (503, {"status": "full"})
    _, _, body = await http_get(server.port, "/metrics")
    refusals = parse_metric(body.decode(), 'webchat_connections_total{status="unavailable"}')
    assert refusals == 1

    # Plain connections fill the headroom; the ones beyond it are closed as they come.
    await poll(lambda: fd_count(server.proc.pid) == full, 5, "the refused connection gone")
    idle = [await non_reader(server.port) for _ in range(sockets - websockets + 30)]

    async def thirty_closed() -> bool:
        return sum(closed_by_server(s) for s in idle) >= 30

    await poll(thirty_closed, 10, "connections over the socket cap closed")
    assert sum(closed_by_server(s) for s in idle) == 30  # and only those
    assert await peak.stop() < 256 - 64  # descriptors left for Redis, files, accept
    for sock in idle:
        sock.close()

    # A place frees: upgrades are accepted again.
    clients.pop().close()

    async def admitted() -> RawWebSocket | None:
        try:
            return await RawWebSocket.connect("127.0.0.1", server.port, "/ws?name=later")
        except HandshakeError as exc:
            status = exc.status
        assert status == 503  # not yet: still full
        return None

    clients.append(await poll(admitted, 10, "an upgrade accepted under the cap"))
    for client in clients:
        client.close()
    text = assert_quiet_log(server, max_lines=10)
    assert "accept" not in text


async def test_an_explicit_cap_refuses_upgrades_then_connections(start: Start) -> None:
    """--max-connections 2: a third upgrade gets the JSON 503; past the plain-HTTP headroom a
    new connection is closed at once, never left hanging."""
    server = start("--header-timeout", "60", "--max-connections", "2")
    held = [
        await RawWebSocket.connect("127.0.0.1", server.port, f"/ws?name=h{n}") for n in range(2)
    ]
    third = await non_reader(server.port, upgrade_request("/ws?name=third"), rcvbuf=65536)
    status, headers, body = await read_answer(third)
    assert status == 503 and int(headers["retry-after"]) >= 1
    error = json.loads(body)["error"]
    assert error["code"] == "unavailable" and "limit of 2 connections" in error["message"]
    # 2 WebSockets + 16 sockets of headroom (limits.MIN_HEADROOM), `third` being one of them.
    extra = [await non_reader(server.port) for _ in range(15)]
    over = await non_reader(server.port, upgrade_request("/ws?name=over"))
    await poll(lambda: closed_by_server(over), 10, "the connection over the cap closed")
    assert not any(closed_by_server(s) for s in [third, *extra])
    for sock in [third, *extra, over]:
        sock.close()
    for client in held:
        client.close()
    assert_quiet_log(server, max_lines=10)
