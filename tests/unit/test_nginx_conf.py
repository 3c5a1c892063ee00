"""Static checks of the production nginx.conf: what issue 3 asks of the load balancer.

These read the file only (no nginx): tests/integration/test_nginx.py runs it for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.nginx import Config, Directive, load, parse, render
from webchat.config import Config as WebchatConfig


@pytest.fixture(scope="module")
def conf() -> Config:
    return load()


def seconds_of(value: str) -> float:
    """An nginx time ("75s", "2m", "500ms", "30") in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, f"not an nginx time: {value!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match[2]]
    return int(match[1]) * scale


def headers_set(block: Directive) -> dict[str, str]:
    return {d.values[0].lower(): d.values[1] for d in block.children("proxy_set_header")}


def test_parser_round_trips_and_rejects_bad_nesting() -> None:
    text = "a 1;\nb \"x y\" { c; d ''; }\n"
    parsed = parse(text)
    assert parse(parsed.text()).text() == parsed.text()
    block = parsed.directives[1]
    assert block.values == ["x y"] and block.child("d").values == [""]
    for bad in ("a {", "a; }", "a", "{ }"):
        with pytest.raises(ValueError, match=r"line \d+|end of file"):
            parse(bad)


def test_websocket_upgrade_is_forwarded(conf: Config) -> None:
    ws = conf.location("=", "/ws")
    headers = headers_set(ws)
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"] == "$connection_upgrade"
    mapping = conf.one("map")
    assert mapping.values == ["$http_upgrade", "$connection_upgrade"]
    entries = {d.name: d.values for d in mapping.block or []}
    assert entries["default"] == ["upgrade"]
    # A plain request gets no "Connection: upgrade" (and keeps upstream keep-alive).
    assert entries['""'] in ([""], ["close"])
    assert conf.one("proxy_http_version").values == ["1.1"]


def test_every_proxied_location_preserves_host_with_port(conf: Config) -> None:
    """The app compares Origin with Host (with port): nginx must pass the client's Host."""
    assert headers_set(conf.server)["host"] == "$http_host"
    for location in conf.find("location"):
        if location.children("proxy_pass") and location.children("proxy_set_header"):
            # proxy_set_header in a location replaces, not extends, the server's list.
            assert headers_set(location).get("host") == "$http_host", location.values


def test_websocket_timeouts_outlast_the_heartbeat(conf: Config) -> None:
    heartbeat = WebchatConfig().heartbeat
    ws = conf.location("=", "/ws")
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds_of(ws.child(name).values[0]) >= 2 * heartbeat, name
    assert ws.child("proxy_buffering").values == ["off"]


def test_sized_for_tens_of_thousands_of_sockets(conf: Config) -> None:
    connections = int(conf.one("worker_connections").values[0])
    files = int(conf.one("worker_rlimit_nofile").values[0])
    # A proxied WebSocket is two connections (client and upstream) in one worker.
    assert connections >= 2 * 20_000
    assert files >= connections  # each connection is a descriptor, plus cache and log files
    backlog = [a for a in conf.one("listen").values if a.startswith("backlog=")]
    assert backlog and int(backlog[0].split("=")[1]) >= 1024


def test_passive_health_and_no_sticky_sessions(conf: Config) -> None:
    upstream = conf.one("upstream")
    assert upstream.values == ["webchat"]
    servers = upstream.children("server")
    assert len(servers) >= 2
    for server in servers:
        options = dict(a.split("=", 1) for a in server.values[1:] if "=" in a)
        assert int(options.get("max_fails", "0")) >= 1, server.values
        assert seconds_of(options.get("fail_timeout", "0")) > 0, server.values
    # Any instance serves any client: no affinity by address, cookie or hash.
    names = {d.name for d in upstream.block or []}
    assert not names & {"ip_hash", "hash", "sticky", "sticky_cookie_insert"}
    # A dead (error), hung (timeout) or draining (503) instance: the next one is tried.
    retry = conf.one("proxy_next_upstream").values
    assert {"error", "timeout", "http_503"} <= set(retry)
    for location in conf.find("location"):
        for proxy_pass in location.children("proxy_pass"):
            assert proxy_pass.values == ["http://webchat"]


def test_metrics_are_not_public(conf: Config) -> None:
    metrics = conf.location("=", "/metrics")
    assert metrics.child("return").values[0] in ("403", "404")
    assert not metrics.children("proxy_pass")


def test_per_ip_connection_limit(conf: Config) -> None:
    zone = conf.one("limit_conn_zone")
    assert zone.values[0] == "$binary_remote_addr"
    zone_name = zone.values[1].removeprefix("zone=").split(":")[0]
    limit = conf.one("limit_conn")
    assert limit.values[0] == zone_name and int(limit.values[1]) >= 10
    assert conf.one("limit_conn_status").values == ["429"]


def test_static_files_are_cached(conf: Config) -> None:
    static = conf.location("/static/")
    zone = static.child("proxy_cache").values[0]
    keys_zone = [a for a in conf.one("proxy_cache_path").values if a.startswith("keys_zone=")]
    assert keys_zone and keys_zone[0].removeprefix("keys_zone=").split(":")[0] == zone
    # The app sends Cache-Control: no-cache for its unversioned files; nginx must still cache.
    assert {"Cache-Control"} <= set(static.child("proxy_ignore_headers").values)
    valid = static.child("proxy_cache_valid").values
    assert "200" in valid and seconds_of(valid[-1]) > 0
    assert static.child("add_header").values[:2] == ["X-Cache-Status", "$upstream_cache_status"]


def test_render_changes_only_ports_and_paths(tmp_path: Path, conf: Config) -> None:
    rendered = render(
        load(), port=18080, upstream_ports=[18081, 18082, 18083], prefix=tmp_path, per_ip_limit=7
    )
    assert rendered.one("listen").values[0] == "127.0.0.1:18080"
    servers = rendered.one("upstream").children("server")
    assert [s.values[0] for s in servers] == [f"127.0.0.1:{p}" for p in (18081, 18082, 18083)]
    production = conf.one("upstream").children("server")[0].values[1:]
    assert all(s.values[1:] == production for s in servers)
    assert rendered.one("limit_conn").values[1] == "7"
    for name in ("pid", "error_log", "proxy_temp_path", "client_body_temp_path"):
        assert rendered.one(name).values[0].startswith(str(tmp_path)), name
    assert rendered.one("proxy_cache_path").values[0].startswith(str(tmp_path))
    # Everything in the server block other than listen and limit_conn is the production one.
    keep = {"listen", "limit_conn"}
    ours = [(d.name, d.args) for d in rendered.server.walk() if d.name not in keep]
    theirs = [(d.name, d.args) for d in conf.server.walk() if d.name not in keep]
    assert ours == theirs
