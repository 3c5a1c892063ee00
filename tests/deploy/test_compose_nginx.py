"""deploy/compose/nginx.conf: the production server block, in front of Compose's `web` replicas.

Static: everything the public server does is nginx.conf's own (which the Ansible role
templates); the upstream re-resolves `web` through Docker's DNS with a shared zone. Real: the
file, localized for this machine, passes `nginx -t` and serves a real webchat instance, with
stub_status on its own port. Debian 12's nginx (1.22) lacks the upstream `resolve` parameter
(1.27.3+, the Compose image's), so the localized copy drops just that word.
"""

from __future__ import annotations

import re
import resource
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.compose import COMPOSE_NGINX, SECRETS, resolved
from tests.support.nginx import Config, Directive, NginxServer, load, parse
from tests.support.servers import WebchatProcess, free_port, http_status
from tests.support.timing import seconds


@pytest.fixture(scope="module")
def compose() -> Config:
    return parse(COMPOSE_NGINX.read_text())


def servers(config: Config) -> list[Directive]:
    return [d for d in config.one("http").children("server") if d.block is not None]


def public(config: Config) -> Directive:
    (server,) = [s for s in servers(config) if s.child("listen").values[0] == "80"]
    return server


# Where the Compose server may differ from the production one: it listens on plain HTTP for
# any name (one machine; the default server dropping other names and TLS are the Ansible
# deployment's).
PER_DEPLOYMENT = {"listen", "server_name"}
TLS = re.compile(r"ssl_.*")


def shape(block: Directive) -> list[tuple[str, list[str]]]:
    return [
        (d.name, d.args)
        for d in block.walk()
        if d.name not in PER_DEPLOYMENT and not TLS.fullmatch(d.name)
    ]


def test_the_public_server_is_the_production_one(compose: Config) -> None:
    production = load()
    assert shape(public(compose)) == shape(production.server)
    assert public(compose).child("server_name").values == ["_"]
    assert not [d for d in public(compose).walk() if TLS.fullmatch(d.name)]

    # The http-level settings too, but for the upstream and Docker's resolver (next test), and
    # the image's own paths for logs and temporary files.
    def settings(config: Config) -> list[tuple[str, list[str]]]:
        skip = ("server", "upstream", "resolver", "resolver_timeout")
        paths = ("client_body_temp_path", "proxy_temp_path")
        return [
            (d.name, d.args[1:] if d.name == "access_log" else d.args)
            for d in config.one("http").block or []
            if d.name not in skip + paths
        ]

    assert settings(compose) == settings(production)
    assert compose.one("access_log").values[0] == "/dev/stdout"
    assert compose.one("proxy_temp_path").values == ["/var/cache/nginx/proxy_temp"]
    for name in ("worker_connections", "worker_rlimit_nofile", "worker_shutdown_timeout"):
        assert compose.one(name).args == production.one(name).args, name
    # The only other server is stub_status, on a port Compose does not publish.
    (status,) = [s for s in servers(compose) if s is not public(compose)]
    assert status.child("listen").values == ["8081"]


def test_the_upstream_finds_every_replica_and_balances_across_workers(compose: Config) -> None:
    upstream = compose.one("upstream")
    assert upstream.values == ["webchat"]
    # Without a shared zone, least_conn only counts each worker's own connections.
    zone = upstream.child("zone")
    assert zone.values[0] and re.fullmatch(r"\d+[km]", zone.values[1])
    assert upstream.children("least_conn")
    (server,) = upstream.children("server")
    production = load().one("upstream").children("server")[0].values[1:]
    web = resolved(SECRETS)["services"]["web"]
    assert server.values == [f"web:{web['environment']['PORT']}", "resolve", *production]
    resolver = compose.one("resolver").values
    assert resolver[0] == "127.0.0.11" and "valid=5s" in resolver
    image = resolved(SECRETS)["services"]["nginx"]["image"]
    major, minor, patch = map(int, re.findall(r"\d+", image.split(":")[1])[:3])
    assert (major, minor, patch) >= (1, 27, 3), f"{image} has no upstream `resolve`"


def localized(config: Config, tmp: Path, backend: int, port: int, status_port: int) -> str:
    """The Compose file for this machine: ports, paths, user, and no `resolve` (nginx 1.22)."""
    text = config.text()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    replacements = {
        "user nginx;": "user root;",
        "worker_processes auto;": "worker_processes 1;",
        "pid /run/nginx.pid;": f"pid {tmp}/nginx.pid;",
        "error_log /dev/stderr warn;": f"error_log {tmp}/error.log info;",
        "worker_connections 65536;": "worker_connections 1024;",
        "worker_rlimit_nofile 262144;": f"worker_rlimit_nofile {min(262144, hard)};",
        "server web:8080 resolve ": f"server 127.0.0.1:{backend} ",
        "proxy_cache_path /var/cache/nginx-webchat ": f"proxy_cache_path {tmp}/cache ",
        "listen 80 backlog=4096;": f"listen 127.0.0.1:{port} backlog=4096;",
        "listen 8081;": f"listen 127.0.0.1:{status_port};",
        "proxy_temp_path /var/cache/nginx/proxy_temp;": f"proxy_temp_path {tmp}/proxy;",
        "client_body_temp_path /var/cache/nginx/client_temp;": f"client_body_temp_path {tmp}/body;",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def compose_nginx(compose: Config) -> Iterator[tuple[NginxServer, int]]:
    with WebchatProcess() as backend:
        nginx = NginxServer([backend.port])
        status_port = free_port()
        nginx.conf_path.write_text(
            localized(compose, nginx.dir, backend.port, nginx.port, status_port)
        )
        try:
            yield nginx.start(), status_port
        finally:
            nginx.cleanup()


def test_nginx_accepts_it_and_serves_webchat(compose_nginx: tuple[NginxServer, int]) -> None:
    nginx, status_port = compose_nginx
    assert "syntax is ok" in nginx.check()
    assert http_status(nginx.url + "/healthz") == 200
    assert http_status(nginx.url + "/metrics") == 404  # never public
    with urllib.request.urlopen(
        f"http://127.0.0.1:{status_port}/stub_status", timeout=seconds(5)
    ) as response:
        assert response.status == 200
        assert b"Active connections:" in response.read()
    assert http_status(f"http://127.0.0.1:{status_port}/") == 404
