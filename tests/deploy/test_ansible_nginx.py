"""The nginx role's template, rendered with the example inventory's own variables: it passes
`nginx -t`, carries the repository nginx.conf's hardening, and a real nginx started from it
drops unknown hosts, serves the service's names over TLS with HSTS, answers over-limit
clients with PROTOCOL.md's JSON 503 and logs no query strings.

Only what cannot be the deployment's on this machine is rewritten (tests/support/nginx.py
`localize`-style): file paths, the certificate, listen addresses and the upstream.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.ansible import ANSIBLE_DIR, render
from tests.support import nginx as nginxconf
from tests.support.nginx import Config, Directive, make_certificate
from tests.support.servers import WebchatProcess, free_port, require_binary, wait_until
from tests.support.timing import seconds

EXAMPLE = ANSIBLE_DIR / "inventories" / "example"
SERVER_NAME = "chat.example.com"  # the example's nginx_server_name
LB_ADDRESSES = ("10.0.0.10", "203.0.113.10")  # lb1's private address and ansible_host


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """lb1's nginx.conf as deploy.yml would write it for the example inventory."""
    inventory = tmp_path_factory.mktemp("example")
    shutil.copy(EXAMPLE / "hosts.yml", inventory / "hosts.yml")
    # The group_vars as they are; their generated secrets land beside this copy.
    (inventory / "group_vars").symlink_to(EXAMPLE / "group_vars")
    render(inventory / "hosts.yml", inventory / "out", "--limit", "lb")
    return nginxconf.parse((inventory / "out" / "lb1" / "nginx.conf").read_text())


def virtual_servers(config: Config) -> list[Directive]:
    return [d for d in config.one("http").children("server") if d.block is not None]


def location(server: Directive, *args: str) -> Directive:
    (found,) = [d for d in server.walk() if d.name == "location" and d.values == list(args)]
    return found


def named(config: Config, tls: bool) -> Directive:
    (server,) = [
        s
        for s in virtual_servers(config)
        if s.child("server_name").values != ["_"]
        and any(("ssl" in d.values) == tls for d in s.children("listen"))
    ]
    return server


def localized(rendered: Config, tmp: Path, backend: int, http: int, https: int) -> Config:
    """A copy of the rendered file for this machine: paths, certificate, loopback ports, one
    upstream (`backend`)."""
    config = nginxconf.parse(rendered.text())
    cert, key = make_certificate(tmp)
    ports = {"80": http, "443": https, "127.0.0.1:8079": free_port()}
    for d in config.root.walk():
        if d.name == "pid":
            d.args = [str(tmp / "nginx.pid")]
        elif d.name == "error_log":
            d.args = [str(tmp / "error.log"), "info"]
        elif d.name == "user":
            d.args = ["root"]
        elif d.name == "worker_processes":
            d.args = ["1"]
        elif d.name == "worker_connections":
            d.args = ["1024"]
        elif d.name == "worker_rlimit_nofile":
            d.args = ["4096"]
        elif d.name == "proxy_cache_path":
            d.args = [str(tmp / "cache"), *d.args[1:]]
        elif d.name == "access_log":
            d.args = [str(tmp / "access.log"), *d.args[1:]]
        elif d.name == "ssl_certificate":
            d.args = [str(cert)]
        elif d.name == "ssl_certificate_key":
            d.args = [str(key)]
        elif d.name == "listen" and d.values[0] in ports:
            d.args = [f"127.0.0.1:{ports[d.values[0]]}", *d.args[1:]]
    for server in virtual_servers(config):  # no IPv6 listeners on this machine's loopback
        assert server.block is not None
        server.block[:] = [
            d for d in server.block if not (d.name == "listen" and d.values[0].startswith("["))
        ]
    upstream = config.one("upstream")
    assert upstream.block is not None
    upstream.block[:] = [c for c in upstream.block if c.name != "server"]
    upstream.block.insert(0, Directive("server", [f"127.0.0.1:{backend}", "max_fails=3"]))
    for server in virtual_servers(config):  # the lb's addresses become loopback's
        names = server.child("server_name")
        if names.values != ["_"]:
            names.args = [n for n in names.args if n not in LB_ADDRESSES] + ["127.0.0.1"]
    return config


def nginx_t(conf: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("nginx"), "-t", "-p", f"{tmp}/", "-c", str(conf), "-e", f"{tmp}/err.log"],
        capture_output=True,
        text=True,
        timeout=seconds(10),
        check=False,
    )


def test_the_example_renders_a_file_nginx_accepts(rendered: Config, tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(localized(rendered, tmp_path, free_port(), free_port(), free_port()).text())
    result = nginx_t(conf, tmp_path)
    assert result.returncode == 0, result.stderr + conf.read_text()


def test_the_hardening_of_the_repository_nginx_conf(rendered: Config) -> None:
    # Unknown hosts: default servers on both ports that answer nothing (444).
    defaults = [
        s
        for s in virtual_servers(rendered)
        if any("default_server" in d.values for d in s.children("listen"))
    ]
    assert len(defaults) == 1 and defaults[0].child("server_name").values == ["_"]
    default_listens = defaults[0].children("listen")
    assert {(d.values[0], "ssl" in d.values) for d in default_listens} == {
        ("80", False),
        ("443", True),
        ("[::]:80", False),
        ("[::]:443", True),
    }
    assert location(defaults[0], "/").child("return").values == ["444"]
    # The service's names: the example's name and the lb host's own addresses, nothing else.
    for tls in (False, True):
        names = named(rendered, tls).child("server_name").values
        assert sorted(names) == sorted([SERVER_NAME, *LB_ADDRESSES]), names
    assert location(named(rendered, False), "/").child("return").values[0] == "301"
    # HSTS on the TLS server and in every location that sets headers of its own.
    tls = named(rendered, True)
    hsts = ["Strict-Transport-Security", "max-age=31536000", "always"]
    assert tls.child("add_header").values == hsts
    for block in tls.children("location"):
        headers = [d.values for d in block.children("add_header")]
        assert not headers or hsts in headers, block.values
    # Rates per address, and nginx's own refusals as PROTOCOL.md's JSON.
    assert rendered.one("limit_conn_status").values == ["503"]
    assert rendered.one("limit_req_status").values == ["503"]
    assert location(tls, "=", "/ws").child("limit_req").values[0] == "zone=webchat_connects"
    assert location(tls, "/api/").child("limit_req").values[0] == "zone=webchat_api"
    limited = location(tls, "=", "/.errors/limited")
    status, body = limited.child("return").values
    body = body[: body.rindex("}") + 1]  # without the final newline
    assert status == "503" and json.loads(body)["error"]["code"] == "unavailable"
    # Request sizes and header time, and an access log without query strings.
    assert rendered.one("client_header_timeout").values == ["10s"]
    assert rendered.one("large_client_header_buffers").values == ["4", "8k"]
    (log_format,) = rendered.find("log_format")
    text = " ".join(log_format.values[1:])
    assert "$uri" in text and "$request " not in text and "$args" not in text
    assert "$request_uri" not in text and "$query_string" not in text
    assert rendered.one("access_log").values[1] == "webchat"


# --- a real nginx from the rendered file ----------------------------------------------------


@pytest.fixture
def front(rendered: Config, tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """nginx from the rendered file in front of a real webchat; (http, https, access log)."""
    with WebchatProcess() as backend:
        http, https = free_port(), free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(localized(rendered, tmp_path, backend.port, http, https).text())
        assert nginx_t(conf, tmp_path).returncode == 0
        proc = subprocess.Popen(
            [require_binary("nginx"), "-p", f"{tmp_path}/", "-c", str(conf), "-e",
             f"{tmp_path}/err.log", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_until(lambda: _accepts(https), seconds(10), "nginx to accept on its TLS port")
            yield http, https, tmp_path / "access.log"
        finally:
            proc.terminate()
            proc.wait(timeout=seconds(10))


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds(1)):
            return True
    except OSError:
        return False


async def _raw(port: int, request: bytes, tls_name: str | None = None) -> bytes:
    """One request on a fresh connection; everything the server sent before closing."""
    context = None
    if tls_name is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=tls_name if context else None
    )
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), seconds(10))
    finally:
        writer.close()


async def test_a_real_nginx_from_the_rendered_file(front: tuple[int, int, Path]) -> None:
    http, https, access_log = front
    get = b"GET /healthz?key=secret-key&token=secret-token HTTP/1.1\r\nHost: %s\r\n"
    get += b"Connection: close\r\n\r\n"
    # The service's name over TLS: the app answers, with HSTS.
    answer = await _raw(https, get % SERVER_NAME.encode(), tls_name=SERVER_NAME)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"strict-transport-security: max-age=31536000" in answer.lower()
    # By address, without SNI (checks by address): served too.
    answer = await _raw(https, get % b"127.0.0.1", tls_name="")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    # Another name (DNS rebinding), over TLS or not: the connection closes with no answer.
    assert await _raw(https, get % b"evil.example", tls_name="evil.example") == b""
    assert await _raw(http, get % b"evil.example") == b""
    # Plain HTTP for the service's name: a redirect to HTTPS.
    answer = await _raw(http, get % SERVER_NAME.encode())
    assert answer.startswith(b"HTTP/1.1 301"), answer[:200]
    # Over the API rate (10/s, burst 20): PROTOCOL.md's JSON 503 with Retry-After.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = []
        for _ in range(40):
            async with session.get(
                f"https://127.0.0.1:{https}/api/rooms", headers={"Host": SERVER_NAME}
            ) as response:
                statuses.append(response.status)
                if response.status == 503:
                    assert response.headers["Retry-After"] == "1"
                    body = await response.json()
                    assert body["error"]["code"] == "unavailable"
                    assert "max-age" in response.headers["Strict-Transport-Security"]
        assert 200 in statuses and 503 in statuses, statuses
    # The access log has the paths, never the query strings' secrets.
    wait_until(lambda: b"/healthz" in _read(access_log), seconds(10), "the access log")
    logged = _read(access_log)
    assert b"secret" not in logged, logged


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""
