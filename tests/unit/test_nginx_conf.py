"""Static checks of the production nginx.conf: what issue 3 asks of the load balancer.

These read the file only (no nginx): tests/integration/test_nginx.py runs it for real.
"""

from __future__ import annotations

import json
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
    (mapping,) = [m for m in conf.find("map") if m.values[0] == "$http_upgrade"]
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
    # The listen options of a port are given once, on its default server.
    for listen in conf.default_server.children("listen"):
        backlog = [a for a in listen.values if a.startswith("backlog=")]
        assert backlog and int(backlog[0].split("=")[1]) >= 1024, listen.values


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
    # 503 and PROTOCOL.md's JSON body (below), which clients retry with backoff.
    assert conf.one("limit_conn_status").values == ["503"]


def test_static_files_are_cached(conf: Config) -> None:
    static = conf.location("/static/")
    zone = static.child("proxy_cache").values[0]
    keys_zone = [a for a in conf.one("proxy_cache_path").values if a.startswith("keys_zone=")]
    assert keys_zone and keys_zone[0].removeprefix("keys_zone=").split(":")[0] == zone
    # The app sends Cache-Control: no-cache for its unversioned files; nginx must still cache.
    assert {"Cache-Control"} <= set(static.child("proxy_ignore_headers").values)
    valid = static.child("proxy_cache_valid").values
    assert "200" in valid and seconds_of(valid[-1]) > 0
    added = [d.values[:2] for d in static.children("add_header")]
    assert ["X-Cache-Status", "$upstream_cache_status"] in added


def test_render_changes_only_ports_and_paths(tmp_path: Path, conf: Config) -> None:
    rendered = render(
        load(),
        port=18080,
        upstream_ports=[18081, 18082, 18083],
        prefix=tmp_path,
        per_ip_limit=7,
        tls_port=18443,
    )
    for server in rendered.servers:
        addresses = sorted(d.values[0] for d in server.children("listen"))
        assert addresses == ["127.0.0.1:18080", "127.0.0.1:18443"]
    assert rendered.server.child("server_name").values == ["127.0.0.1", "localhost"]
    assert rendered.server.child("ssl_certificate").values[0].startswith(str(tmp_path))
    assert rendered.one("access_log").values[0].startswith(str(tmp_path))
    servers = rendered.one("upstream").children("server")
    assert [s.values[0] for s in servers] == [f"127.0.0.1:{p}" for p in (18081, 18082, 18083)]
    production = conf.one("upstream").children("server")[0].values[1:]
    assert all(s.values[1:] == production for s in servers)
    assert rendered.one("limit_conn").values[1] == "7"
    for name in ("pid", "error_log", "proxy_temp_path", "client_body_temp_path"):
        assert rendered.one(name).values[0].startswith(str(tmp_path)), name
    assert rendered.one("proxy_cache_path").values[0].startswith(str(tmp_path))
    # Everything in the server block other than addresses, names, the certificate and
    # limit_conn is the production one.
    keep = {"listen", "limit_conn", "server_name", "ssl_certificate", "ssl_certificate_key"}
    ours = [(d.name, d.args) for d in rendered.server.walk() if d.name not in keep]
    theirs = [(d.name, d.args) for d in conf.server.walk() if d.name not in keep]
    assert ours == theirs


# --- hardening (issue 12; docs/security.md) ---------------------------------------------------


def json_return(location: Directive) -> tuple[int, dict]:
    """The status and parsed JSON body of a `return <status> '<json>'` location."""
    assert location.child("default_type").values == ["application/json"]
    status, body = location.child("return").args
    # In nginx's quoted strings "\n" is a newline; the JSON is what is between the quotes.
    return int(status), json.loads(body[1:-1].replace("\\n", "\n"))


def test_unknown_hosts_are_dropped_and_the_service_has_a_name(conf: Config) -> None:
    default = conf.default_server
    listens = {tuple(d.values) for d in default.children("listen")}
    assert {listen[:2] for listen in listens} == {("80", "default_server"), ("443", "ssl")}
    assert all("default_server" in listen for listen in listens)
    assert default.child("ssl_reject_handshake").values == ["on"]  # no certificate for them
    (catch_all,) = [d for d in default.children("location") if d.values == ["/"]]
    assert catch_all.child("return").values == ["444"]
    names = conf.server.child("server_name").values
    assert names and "_" not in names and not any("*" in n for n in names)
    assert {d.values[0] for d in conf.server.children("listen")} == {"80", "443"}


def test_tls_with_hsts_on_tls_answers_only(conf: Config) -> None:
    server = conf.server
    assert any(d.values[:2] == ["443", "ssl"] for d in server.children("listen"))
    assert server.child("ssl_certificate").values and server.child("ssl_certificate_key").values
    assert set(server.child("ssl_protocols").values) <= {"TLSv1.2", "TLSv1.3"}
    hsts = [m for m in conf.find("map") if m.values == ["$scheme", "$hsts"]]
    assert hsts, "no map $scheme $hsts"
    entries = {d.name: d.values for d in hsts[0].block or []}
    assert entries["default"] == [""]  # no header over plain HTTP
    assert int(re.fullmatch(r"max-age=(\d+)", entries["https"][0])[1]) >= 180 * 86400
    # On every answer: add_header in a location replaces the server's, so each repeats it.
    blocks = [server, *[loc for loc in server.children("location") if loc.children("add_header")]]
    for block in blocks:
        headers = {d.values[0]: d.values[1:] for d in block.children("add_header")}
        assert headers.get("Strict-Transport-Security") == ["$hsts", "always"], block.values


def test_request_rates_are_limited_per_address(conf: Config) -> None:
    zones = {}
    for zone in conf.find("limit_req_zone"):
        key, name, rate = zone.values
        assert key == "$binary_remote_addr"
        zones[name.removeprefix("zone=").split(":")[0]] = rate
    assert conf.one("limit_req_status").values == ["503"]
    for location in (conf.location("=", "/ws"), conf.location("/api/")):
        (limit,) = location.children("limit_req")
        zone = limit.values[0].removeprefix("zone=")
        assert zone in zones, limit.values
        assert re.fullmatch(r"rate=\d+r/s", zones[zone])
        burst = [a for a in limit.values if a.startswith("burst=")]
        # A page opens up to 10 rooms at once (10 upgrades, and as many checks if refused).
        assert burst and int(burst[0].removeprefix("burst=")) >= 20, limit.values
    assert conf.location("/api/").child("proxy_pass").values == ["http://webchat"]


def test_nginx_answers_like_the_app(conf: Config) -> None:
    """503s nginx makes (limits, no instance) and its 400s carry PROTOCOL.md's JSON."""
    for server in (conf.server, conf.default_server):
        pages = {
            code: d.values[-1]
            for d in server.children("error_page")
            for code in d.values[:-1]
            if code.isdigit()
        }
        for code in ("400", "414", "494"):
            status, body = json_return(conf.location("=", pages[code], server=server))
            assert (status, body["error"]["code"]) == (400, "bad_request")
    pages = {c: d for d in conf.server.children("error_page") for c in d.values[:-1]}
    limited = conf.location("=", pages["503"].values[-1])
    assert json_return(limited)[0] == 503
    assert json_return(limited)[1]["error"]["code"] == "unavailable"
    assert "=503" in pages["502"].values and "=503" in pages["504"].values
    for path in {d.values[-1] for d in conf.server.children("error_page")}:
        assert conf.location("=", path).children("internal"), path  # not reachable from outside


def test_access_log_holds_no_secrets(conf: Config) -> None:
    fmt = conf.one("log_format")
    name, *parts = fmt.values
    line = "".join(parts)
    assert conf.one("access_log").values[1] == name
    # The query string carries key= and token=: only the path and chosen arguments are logged
    # ($request and $request_uri include the query string; a Referer may too).
    variables = set(re.findall(r"\$\w+", line))
    leaky = {"$request", "$request_uri", "$args", "$query_string", "$arg_key", "$arg_token"}
    assert not variables & (leaky | {"$http_referer", "$http_authorization", "$http_cookie"})
    assert "$uri" in variables


def test_request_size_and_time_limits(conf: Config) -> None:
    from webchat.listener import MAX_LINE  # the app refuses longer lines itself

    count, size = conf.one("large_client_header_buffers").values
    assert int(count) * int(size.removesuffix("k")) * 1024 <= 8 * MAX_LINE
    assert int(size.removesuffix("k")) * 1024 <= MAX_LINE
    body = conf.one("client_max_body_size").values[0]
    assert body.endswith("k") and int(body[:-1]) <= 64  # no request of the API has a body
    assert seconds_of(conf.one("client_header_timeout").values[0]) <= WebchatConfig().header_timeout
    assert seconds_of(conf.one("client_body_timeout").values[0]) <= 30


def test_paths_exist_on_debian(conf: Config) -> None:
    """`nginx -t` on the file as shipped creates only the last directory of a path."""
    assert conf.one("proxy_temp_path").values == ["/var/lib/nginx/proxy"]  # Debian's own
    assert conf.one("client_body_temp_path").values == ["/var/lib/nginx/body"]
    cache = Path(conf.one("proxy_cache_path").values[0])
    assert cache.parent in (Path("/var/cache"), Path("/var/lib/nginx")), cache
