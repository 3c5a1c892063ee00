"""PROTOCOL.md "Connecting": defaults, parameter validation before the upgrade, Origin rules,
and 503 while draining."""

from __future__ import annotations

import asyncio
import re
import signal

import aiohttp
import pytest

from tests.contract.helpers import (
    assert_error_body,
    connect,
    get,
    metric,
    nothing_else,
    say,
    upgrade_refused,
)
from tests.support.timing import poll, seconds

# --- defaults ------------------------------------------------------------------------------


async def test_defaults_are_lobby_and_a_guest_name(server, session):
    client = await connect(session, server, name=None, room=None)
    welcome = client.welcome
    assert welcome is not None
    assert welcome["room"] == "lobby"
    assert re.fullmatch(r"guest-[0-9a-f]{4}", welcome["name"]), welcome
    assert welcome["members"] == [welcome["name"]]
    # The defaults are a real room and a real name: the lobby's messages carry them.
    echo = await say(client, "hi")
    assert (echo["room"], echo["name"]) == ("lobby", welcome["name"])
    other = await connect(session, server, name="bob", room="lobby")
    assert sorted(other.welcome["members"]) == sorted([welcome["name"], "bob"])


# --- bad parameters: HTTP 400 bad_request before the upgrade --------------------------------

BAD_PARAMS = [
    {"room": ""},
    {"room": "a b"},
    {"room": "a.b"},
    {"room": "a/b"},
    {"room": "x" * 65},
    {"room": "caf\u00e9"},
    {"room": "lobby\n"},
    {"name": ""},
    {"name": "   "},
    {"name": "\u3000\u00a0\t"},
    {"name": "x" * 33},
    {"name": "\U0001f600" * 33},
    {"name": " " + "x" * 33 + " "},
    {"name": "a\x07b"},
    {"name": "a\x00b"},
    {"name": "a\x7fb"},
    {"name": "a\nb"},
    {"name": "a\x85b"},
    {"since": ""},
    {"since": "123"},
    {"since": "1-2-3"},
    {"since": "a-b"},
    {"since": "-1"},
    {"since": "1-"},
    {"since": "1" * 21 + "-0"},
    {"since": "0-" + "1" * 21},
    {"room": "ok", "name": "ok", "since": "1.5-0"},
    # 1.1: format characters in a name, history out of range, malformed keys.
    {"name": "\u200b"},
    {"name": "\u200bzw"},  # U+200B is not White_Space: not trimmed, so refused
    {"name": "al\u200dice"},
    {"history": "501"},
    {"history": "-1"},
    {"history": "x"},
    {"history": "5", "since": "x"},
    {"key": "short"},
    {"key": "k" * 129},
    {"key": "k" * 20 + "!"},
]


async def test_bad_parameters_get_400_before_the_upgrade(server, session):
    for params in BAD_PARAMS:
        status, body = await upgrade_refused(session, server, params=params)
        assert status == 400, (params, status, body)
        assert_error_body(body, "bad_request")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await asyncio.wait_for(session.ws_connect(server.ws_url, params=params), seconds(10))
        assert info.value.status == 400, params
    # No connection was ever made.
    assert await metric(session, server, "webchat_connected_users") == 0


async def test_valid_edge_parameters_are_accepted(server, session):
    cases = [
        ({"room": "x" * 64, "name": "x" * 32}, "x" * 64, "x" * 32),
        ({"room": "A-z_0-9", "name": "\U0001f600" * 32}, "A-z_0-9", "\U0001f600" * 32),
        ({"room": "-", "name": "  alice\t"}, "-", "alice"),
        ({"room": "_", "name": "\u3000\u00a0bob\u2003"}, "_", "bob"),
        ({"room": "r", "name": " " + "y" * 32 + " "}, "r", "y" * 32),  # counted after trimming
        ({"room": "r", "name": "a b"}, "r", "a b"),
        ({"room": "r", "name": "\u05e9\u05dc\u05d5\u05dd"}, "r", "\u05e9\u05dc\u05d5\u05dd"),
        ({"room": "r", "name": "n", "history": "500"}, "r", "n"),
        ({"room": "r", "name": "k", "key": "A-z_0-9" * 3}, "r", "k"),
        ({"room": "r", "name": "n", "since": "0-0"}, "r", "n"),
        ({"room": "r", "name": "n", "since": "9" * 20 + "-" + "9" * 20}, "r", "n"),
    ]
    for params, room, name in cases:
        client = await connect(session, server, **params)
        assert (client.welcome["room"], client.welcome["name"]) == (room, name), params
        assert name in client.welcome["members"]
        await client.close()


async def test_trimmed_name_is_the_name_everywhere(server, session):
    bob = await connect(session, server, name="bob", room="r")
    alice = await connect(session, server, name="\u3000 alice \u00a0", room="r")
    assert alice.welcome["name"] == "alice"
    assert sorted(alice.welcome["members"]) == ["alice", "bob"]
    assert await bob.expect("presence") == {
        "type": "presence",
        "room": "r",
        "event": "join",
        "name": "alice",
    }
    echo = await say(alice, "hi")
    assert echo["name"] == "alice"
    assert await bob.next_of("message") == echo


# --- Origin ----------------------------------------------------------------------------------


async def origin_status(session, server, origin: str | None, host: str | None = None) -> int:
    """101 if the upgrade with these headers succeeds, else the refusal status."""
    headers = {}
    if origin is not None:
        headers["Origin"] = origin
    if host is not None:
        headers["Host"] = host
    try:
        ws = await asyncio.wait_for(
            session.ws_connect(server.ws_url, params={"name": "o"}, headers=headers),
            seconds(10),
        )
    except aiohttp.WSServerHandshakeError as exc:
        refused_with = exc.status
    else:
        refused_with = None
    if refused_with is not None:
        status, body = await upgrade_refused(session, server, {"name": "o"}, headers)
        assert status == refused_with
        if status == 403:
            assert_error_body(body, "forbidden_origin")
        return status
    first = await ws.receive_json(timeout=seconds(5))
    assert first["type"] == "welcome"
    await ws.close()
    return 101


async def test_cross_site_origins_are_refused_by_default(server, session):
    port = server.port
    for origin in [
        "http://evil.example",
        "https://evil.example",
        f"http://evil.example:{port}",
        f"http://localhost:{port}",  # Host is 127.0.0.1:port: a different host
        "http://127.0.0.1",  # same host, other port
        f"http://127.0.0.1:{port + 1}",
        f"http://127.0.0.1.evil.example:{port}",
        "null",  # sandboxed frames and file: pages
    ]:
        assert await origin_status(session, server, origin) == 403, origin


async def test_same_origin_is_allowed_whatever_the_scheme(server, session):
    port = server.port
    for origin in [f"http://127.0.0.1:{port}", f"https://127.0.0.1:{port}"]:
        assert await origin_status(session, server, origin) == 101, origin


async def test_same_origin_drops_default_ports(server, session):
    allowed = [
        ("chat.example:80", "https://chat.example"),
        ("chat.example:443", "http://chat.example"),
        ("chat.example", "http://chat.example:80"),
        ("chat.example", "https://chat.example:443"),
        ("chat.example:443", "http://chat.example:80"),
        ("chat.example:8080", "http://chat.example:8080"),
        ("chat.example:8080", "https://chat.example:8080"),
    ]
    for host, origin in allowed:
        assert await origin_status(session, server, origin, host) == 101, (host, origin)
    refused = [
        ("chat.example:8080", "http://chat.example"),
        ("chat.example", "http://chat.example:8080"),
        ("chat.example", "http://www.chat.example"),
        ("chat.example:8443", "https://chat.example"),
    ]
    for host, origin in refused:
        assert await origin_status(session, server, origin, host) == 403, (host, origin)


async def test_no_origin_is_allowed(server, session):
    assert await origin_status(session, server, None) == 101
    assert await origin_status(session, server, None, "anything.example") == 101


async def test_allow_list_entries_are_compared_exactly(make_server, session):
    server = make_server("--allowed-origins", "https://app.example, http://other.example:8080")
    for origin in ["https://app.example", "http://other.example:8080"]:
        assert await origin_status(session, server, origin) == 101, origin
    for origin in [
        "http://app.example",  # the scheme is part of an allow-list entry
        "https://app.example:443",
        "https://app.example:8443",
        "https://www.app.example",
        "http://other.example",
        "https://other.example:8080",
        "https://evil.example",
    ]:
        assert await origin_status(session, server, origin) == 403, origin
    # Same origin and no origin stay allowed besides the list.
    assert await origin_status(session, server, f"http://127.0.0.1:{server.port}") == 101
    assert await origin_status(session, server, None) == 101


async def test_star_allows_any_origin(make_server, session):
    server = make_server("--allowed-origins", "*")
    for origin in ["https://evil.example", "http://localhost:1", "null"]:
        assert await origin_status(session, server, origin) == 101, origin


# --- 503 while draining ----------------------------------------------------------------------


async def test_draining_refuses_new_clients_with_503(make_server, session):
    server = make_server("--drain-delay", str(seconds(1.5)), "--presence-grace", "0")
    alice = await connect(session, server, name="alice", room="r")
    server.signal(signal.SIGTERM)

    async def not_ready() -> bool:
        return (await get(session, f"{server.url}/readyz"))[0] == 503

    await poll(not_ready, 2, "503 from /readyz")
    status, body = await upgrade_refused(session, server, {"room": "r", "name": "bob"})
    assert status == 503
    assert_error_body(body, "unavailable")
    assert (await get(session, f"{server.url}/healthz"))[0] == 200
    # Connected clients are still served during the drain delay.
    await say(alice, "still here")
    await nothing_else(alice)
