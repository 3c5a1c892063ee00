"""The production nginx.conf, rendered for free ports, in front of two webchat instances.

Real nginx, real webchat processes, one real redis-server: the load balancer serves the page
and cached static files, hides /metrics, upgrades WebSockets with the client's Host intact,
spreads clients over both instances (no stickiness) and the instances behave as one service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import MakeServer
from tests.integration.conftest import parse_metric
from tests.support.client import ChatClient
from tests.support.nginx import NGINX_CONF, NginxServer, connected_users, locate
from tests.support.redis import Recorder, fetch_history, wait_status
from tests.support.redis_traffic import assert_one_order_with_concurrent_senders
from tests.support.servers import WebchatProcess, free_port, require_binary
from tests.support.timing import poll, seconds

# make_server puts every instance of a test on the test's redis-server.
REDIS = pytest.mark.parametrize("broker", ["redis"], indirect=True)

# No drain delay: these tests stop their processes at the end and need no graceful drain.
FAST = ("--drain-delay", "0", "--drain-spread", "0", "--presence-grace", "0.3")


@pytest.fixture
def make_nginx() -> Iterator[object]:
    """`make_nginx(*instances, per_ip_limit=None)`: nginx in front of them, stopped after."""
    started: list[NginxServer] = []

    def make(*servers: WebchatProcess, per_ip_limit: int | None = None) -> NginxServer:
        nginx = NginxServer([s.port for s in servers], per_ip_limit=per_ip_limit)
        started.append(nginx)
        return nginx.start()

    yield make
    for nginx in started:
        nginx.cleanup()


async def connect(session: aiohttp.ClientSession, url: str, name: str, **kw) -> ChatClient:
    return await asyncio.wait_for(
        ChatClient.connect(session, url, room=kw.pop("room", "r"), name=name, **kw),
        seconds(10),
    )


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """One HTTP/1.1 request with the request target exactly as given (no normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        data = await asyncio.wait_for(reader.read(), seconds(5))
    finally:
        writer.close()
        await writer.wait_closed()
    return int(data.split(b" ", 2)[1]), data


def test_rendered_config_passes_nginx_t() -> None:
    nginx = NginxServer([free_port(), free_port()])
    try:
        report = nginx.check()
    finally:
        nginx.cleanup()
    assert "syntax is ok" in report and "test is successful" in report


@REDIS
async def test_pages_static_cache_and_hidden_metrics(make_server: MakeServer, make_nginx, session):
    a, b = make_server(*FAST), make_server(*FAST)
    nginx = make_nginx(a, b)

    async with session.get(nginx.url + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "app.js" in await response.text()
    async with session.get(nginx.url + "/healthz") as response:
        assert response.status == 200

    direct = await (await session.get(a.url + "/static/app.js")).read()
    async with session.get(nginx.url + "/static/app.js") as response:
        assert response.status == 200
        assert response.headers["X-Cache-Status"] == "MISS"
        assert await response.read() == direct
        etag = response.headers["ETag"]
        # Browsers still revalidate (the app's no-cache passes through); nginx caches anyway.
        assert response.headers["Cache-Control"] == "no-cache"
    # nginx stores the response as it finishes relaying it: poll, bounded, for the HIT.

    async def cached() -> bytes | None:
        async with session.get(nginx.url + "/static/app.js") as response:
            return await response.read() if response.headers["X-Cache-Status"] == "HIT" else None

    assert await poll(cached, 5, "a cache HIT for app.js") == direct
    # A revalidation is answered from the cache with 304.
    async with session.get(
        nginx.url + "/static/app.js", headers={"If-None-Match": etag}
    ) as response:
        assert response.status == 304
        assert response.headers["X-Cache-Status"] == "HIT"

    # /metrics: each instance answers Prometheus directly, the public side never does.
    for instance in (a, b):
        async with session.get(instance.url + "/metrics") as response:
            assert response.status == 200
            assert "webchat_connected_users" in await response.text()
    for target in ("/metrics", "/metrics?x=1", "//metrics", "/%6Detrics", "/static/../metrics"):
        status, data = await raw_get(nginx.port, target)
        assert status == 404, (target, data[:200])
        assert b"webchat_" not in data, target


@REDIS
async def test_websocket_upgrade_and_delivery_across_instances(
    make_server: MakeServer, make_nginx, session
):
    a, b = make_server(*FAST), make_server(*FAST)
    instances = [a, b]
    nginx = make_nginx(a, b)

    # Through nginx, clients land on both instances (least connections, no stickiness).
    clients: list[ChatClient] = []
    landed: list[int] = []
    for n in range(4):
        client, where = await locate(
            session, instances, lambda n=n: connect(session, nginx.ws_url, f"n{n}")
        )
        clients.append(client)
        landed.append(where)
    assert sorted(landed) == [0, 0, 1, 1], landed
    # And one client directly on each instance.
    clients.append(await connect(session, a.ws_url, "da"))
    clients.append(await connect(session, b.ws_url, "db"))
    assert [await connected_users(session, s) for s in instances] == [3, 3]
    assert sorted(clients[-1].welcome["members"]) == ["da", "db", "n0", "n1", "n2", "n3"]

    recorders = [Recorder(c) for c in clients]
    for index, client in enumerate(clients):
        await client.send(f"hello from {index}", nonce=f"k{index}")
    for rec in recorders:
        await rec.wait(lambda r=rec: len(r.messages) >= len(clients), 10, "every message")
    first = recorders[0].ids()
    assert len(first) == len(set(first)) == len(clients)
    for rec in recorders:
        assert rec.ids() == first
        assert rec.errors == []
    history = await fetch_history(session, nginx.url, "r")
    assert [m["id"] for m in history] == first
    assert {m["text"] for m in history} == {f"hello from {i}" for i in range(len(clients))}
    for rec in recorders:
        await rec.stop()
        await rec.client.close()


@REDIS
async def test_one_order_for_every_receiver_through_nginx(
    make_server: MakeServer, make_nginx, wide_session
):
    flags = (*FAST, "--rate", "5000", "--burst", "5000", "--history-size", "5000")
    a, b = make_server(*flags), make_server(*flags)
    instances = [a, b]
    nginx = make_nginx(a, b)
    session = wide_session
    per_sender = 250

    senders: list[ChatClient] = []
    landed = []
    for i in range(4):
        client, where = await locate(
            session, instances, lambda i=i: connect(session, nginx.ws_url, f"s{i}")
        )
        senders.append(client)
        landed.append(where)
    assert sorted(landed) == [0, 0, 1, 1], "senders on both instances"
    watchers = [
        await connect(session, nginx.ws_url, "wn1"),
        await connect(session, nginx.ws_url, "wn2"),
        await connect(session, a.ws_url, "wa"),
        await connect(session, b.ws_url, "wb"),
    ]
    recorders = await assert_one_order_with_concurrent_senders(
        session, nginx.url, senders, watchers, per_sender, timeout=30
    )
    for rec in recorders:
        await rec.stop()
        await rec.client.close()


@REDIS
async def test_same_origin_check_through_nginx(make_server: MakeServer, make_nginx, session):
    a, b = make_server(*FAST), make_server(*FAST)
    nginx = make_nginx(a, b)
    # Same origin as the page the browser loaded from nginx: Host (with its port) must reach
    # the instance unchanged for this to pass.
    same = {"Origin": f"http://127.0.0.1:{nginx.port}"}
    # Twice: once per instance (least connections alternates between them).
    accepted = [await connect(session, nginx.ws_url, f"o{i}", headers=same) for i in range(2)]
    assert [await connected_users(session, s) for s in (a, b)] == [1, 1]
    for origin in (f"http://127.0.0.1:{a.port}", "http://127.0.0.1", "https://evil.example"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(session, nginx.ws_url, "o", headers={"Origin": origin})
        assert refused.value.status == 403, origin
    for client in accepted:
        await client.close()


@REDIS
async def test_per_ip_connection_limit(make_server: MakeServer, make_nginx, session):
    a = make_server(*FAST)
    nginx = make_nginx(a, per_ip_limit=3)
    clients = [await connect(session, nginx.ws_url, f"c{i}") for i in range(3)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(session, nginx.ws_url, "c3")
    assert refused.value.status == 503  # with PROTOCOL.md's body (test_nginx_answers_json)
    # A closed connection frees its slot (nginx notices the close asynchronously: poll).
    await clients.pop().close()

    async def admitted():
        try:
            return await connect(session, nginx.ws_url, "c3")
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status != 503:  # anything but the limit still refusing fails the test
                raise
            return None

    clients.append(await poll(admitted, 5, "a freed per-IP slot"))
    for client in clients:
        await client.close()


@REDIS
async def test_a_draining_instance_is_skipped(make_server: MakeServer, make_nginx, session):
    """Upgrades that a draining instance refuses (503) are retried on the other one."""
    a = make_server("--drain-delay", "4", "--drain-spread", "0", "--presence-grace", "0.3")
    b = make_server(*FAST)
    nginx = make_nginx(a, b)
    a.signal(signal.SIGTERM)
    await wait_status(session, a.url + "/readyz", 503, 5)
    clients = [await connect(session, nginx.ws_url, f"c{i}") for i in range(4)]
    assert await connected_users(session, b) == 4
    # nginx did offer clients to a (least connections: a had none) and moved on after its 503.
    async with session.get(a.url + "/metrics") as response:
        refused = parse_metric(
            await response.text(), 'webchat_connections_total{status="unavailable"}'
        )
    assert refused is not None and refused >= 1
    await clients[0].send("still here")
    for client in clients:
        assert (await client.next_of("message"))["text"] == "still here"
    assert a.wait(timeout=seconds(10)) == 0
    for client in clients:
        await client.close()


# --- hardening (issue 12) ---------------------------------------------------------------------

MEMORY = pytest.mark.parametrize("broker", ["memory"], indirect=True)


def test_the_file_as_shipped_passes_nginx_t() -> None:
    """`nginx -t` on nginx.conf itself, not a rendering: Debian's paths and its placeholder
    certificate (ssl-cert's snakeoil, which `make test` generates when missing)."""
    result = subprocess.run(
        [require_binary("nginx"), "-t", "-c", str(NGINX_CONF)],
        capture_output=True,
        text=True,
        timeout=seconds(20),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


async def raw(port: int, request: bytes, tls_name: str | None = None) -> bytes:
    """Send `request` as is (over TLS with SNI `tls_name`) and read until nginx closes."""
    context = None
    if tls_name is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test's self-signed certificate
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=tls_name
    )
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), seconds(10))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def head(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    top, _, body = answer.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@MEMORY
async def test_unknown_hosts_are_dropped_and_tls_answers_carry_hsts(make_server, make_nginx):
    a = make_server(*FAST)
    nginx = make_nginx(a)
    get = b"GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
    # Another name (a scanner by address, a DNS-rebinding page): closed without a word.
    assert await raw(nginx.port, get % b"evil.example") == b""
    status, headers, _ = head(await raw(nginx.port, get % b"127.0.0.1"))
    assert status == 200 and "strict-transport-security" not in headers  # plain HTTP
    status, headers, _ = head(await raw(nginx.tls_port, get % b"localhost", tls_name="localhost"))
    assert status == 200
    assert headers["strict-transport-security"].startswith("max-age=")
    # The app's own headers pass through; nginx names no version.
    assert headers["x-content-type-options"] == "nosniff" and headers["server"] == "nginx"
    # TLS for a name this server has no certificate for is refused in the handshake.
    with pytest.raises(ssl.SSLError):
        await raw(nginx.tls_port, get % b"evil.example", tls_name="evil.example")


@MEMORY
async def test_nginx_answers_json_and_logs_no_secrets(make_server, make_nginx, session):
    a = make_server(*FAST)
    nginx = make_nginx(a)
    # A request line too long for nginx's buffers: PROTOCOL.md's 400, before any Host.
    status, headers, body = head(
        await raw(nginx.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    )
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"

    # The API's rate per address (10/s, burst 20): 60 requests at once, some get the JSON 503
    # (nginx's, or on a slow machine the app's own --api-concurrency answer: both are PROTOCOL's).
    async def api() -> tuple[int, dict, bytes]:
        async with session.get(nginx.url + "/api/rooms") as response:
            return response.status, dict(response.headers), await response.read()

    answers = await asyncio.gather(*(api() for _ in range(60)))
    assert {status for status, _, _ in answers} == {200, 503}
    for status, headers, body in answers:
        if status == 503:
            assert int(headers["Retry-After"]) >= 1, headers
            assert headers["Content-Type"].split(";")[0] == "application/json", headers
            assert json.loads(body)["error"]["code"] == "unavailable"
    # Keys and tokens travel in the query string; the access log has the path and the room.
    secret_key, secret_token = "K" * 20 + "secret", "eyJ.secret-token.sig"
    client = await connect(session, nginx.ws_url, "logged", key=secret_key)
    await client.close()
    async with session.get(f"{nginx.url}/ws?room=r&token={secret_token}") as response:
        assert response.status in (401, 426)  # whatever the app says, it is logged the same
    nginx.stop()  # flushes the buffered access log
    log = nginx.access_log.read_text()
    assert '"GET /ws HTTP/1.1" 101' in log and 'room="r"' in log
    assert "secret" not in log and "key=" not in log and "token=" not in log
