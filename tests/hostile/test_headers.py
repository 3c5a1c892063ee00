"""Issue 12's security headers and host names, against a real process.

- The page and its files carry the Content-Security-Policy as a header (a <meta> policy
  cannot forbid framing), nosniff, no referrer, and a Server header without a version.
- DNS rebinding: with --allowed-hosts, a request for another name is refused (421) before
  anything else, and same-origin holds only for allowed names.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from tests.hostile.conftest import Start
from tests.support.hostile import (
    assert_quiet_log,
    http_get,
    non_reader,
    read_answer,
    upgrade_request,
)
from tests.support.rawws import HandshakeError, RawWebSocket
from tests.support.servers import ROOT
from tests.support.timing import seconds
from webchat.web import CSP


async def test_every_answer_carries_the_security_headers(start: Start, session) -> None:
    server = start()
    for path in ("/", "/static/app.js", "/static/style.css", "/api/rooms", "/healthz", "/nope"):
        async with session.get(server.url + path) as response:
            assert response.status in (200, 404), path
            headers = response.headers
            assert headers["Content-Security-Policy"] == CSP, path
            assert "frame-ancestors 'none'" in CSP
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["Referrer-Policy"] == "no-referrer", path
            assert headers["Server"] == "webchat", path  # no aiohttp or Python version


async def test_other_host_names_are_refused_before_anything_else(start: Start) -> None:
    server = start("--allowed-hosts", "chat.example.com")

    async def get(target: str, host: str, **headers: str) -> tuple[int, dict, bytes]:
        extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        sock = await non_reader(server.port, request.encode(), rcvbuf=65536)
        try:
            return await read_answer(sock)
        finally:
            sock.close()

    for target in ("/", "/api/rooms", "/ws?room=r"):
        status, headers, body = await get(target, "evil.example:8080")
        assert status == 421, target
        assert json.loads(body)["error"]["code"] == "unknown_host"
        assert headers["x-content-type-options"] == "nosniff"
    assert (await get("/", "CHAT.example.com:8080"))[0] == 200
    # Probes are answered whatever the name: load balancers and Prometheus use addresses.
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert (await http_get(server.port, probe))[0] == 200, probe

    # WebSockets: a name that is not listed (here the address itself) is refused...
    with pytest.raises(HandshakeError) as refused:
        await RawWebSocket.connect("127.0.0.1", server.port, "/ws?room=r&name=a")
    assert refused.value.status == 421
    # ... the listed one, same-origin, is served.
    sock = await non_reader(
        server.port,
        upgrade_request("/ws?room=r&name=b", host="chat.example.com").replace(
            b"\r\n\r\n", b"\r\nOrigin: https://chat.example.com\r\n\r\n"
        ),
        rcvbuf=65536,
    )
    status, _, _ = await read_answer(sock)  # 101: no body follows the head
    sock.close()
    assert status == 101
    _, _, metrics = await http_get(server.port, "/metrics")
    assert b'webchat_connections_total{status="unknown_host"} 2.0' in metrics
    assert_quiet_log(server)


def test_an_explicit_cap_beyond_the_descriptor_limit_is_refused_at_start() -> None:
    """--max-connections that cannot fit exits 2 with one line, instead of failing later."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    result = subprocess.run(
        [sys.executable, "-m", "webchat", "--port", "0", "--max-connections", "100000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds(20),
        preexec_fn=limit,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("webchat: error: --max-connections:") and "limit is 256" in line
