"""PROTOCOL.md "HTTP API": the history endpoint, health, readiness, metrics and the client page."""

from __future__ import annotations

import json
from urllib.parse import quote

from tests.contract.helpers import (
    assert_error_body,
    connect,
    get,
    get_json,
    history,
    metric,
    say,
    until_metric,
)


async def send_some(client, count: int, prefix: str = "m") -> list[dict]:
    return [await say(client, f"{prefix}{n}", nonce=f"{prefix}-{n}") for n in range(count)]


# --- /api/rooms/{room}/messages ------------------------------------------------------------


async def test_history_without_since_is_the_newest_oldest_first(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    # The very frames the clients got, oldest first.
    assert await history(session, server, "r") == {"messages": sent, "gap": False}
    assert await history(session, server, "r", limit="2") == {"messages": sent[3:], "gap": False}
    assert await history(session, server, "r", limit="1") == {"messages": sent[4:], "gap": False}
    assert await history(session, server, "r", limit="500") == {"messages": sent, "gap": False}


async def test_history_of_an_unknown_room_is_empty(server, session):
    assert await history(session, server, "nobody-here") == {"messages": [], "gap": False}


async def test_history_default_limit_is_100(make_server, session):
    server = make_server("--burst", "500", "--rate", "1000")
    alice = await connect(session, server, name="alice", room="r")
    count = 105
    for n in range(count):
        await alice.send(f"m{n}")
    echoes = [await alice.expect("message") for _ in range(count)]
    assert await history(session, server, "r") == {"messages": echoes[-100:], "gap": False}
    assert await history(session, server, "r", limit="500") == {"messages": echoes, "gap": False}
    after = await history(session, server, "r", since=echoes[0]["id"])
    assert after == {"messages": echoes[1:101], "gap": False}  # the first 100 after since


async def test_history_after_since(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    assert await history(session, server, "r", since=sent[1]["id"]) == {
        "messages": sent[2:],
        "gap": False,
    }
    assert await history(session, server, "r", since=sent[1]["id"], limit="2") == {
        "messages": sent[2:4],
        "gap": False,
    }
    assert await history(session, server, "r", since=sent[0]["id"], limit="1") == {
        "messages": sent[1:2],
        "gap": False,
    }
    assert await history(session, server, "r", since=sent[4]["id"]) == {
        "messages": [],
        "gap": False,
    }
    # A since older than the oldest held: a gap, and the oldest `limit` held.
    assert await history(session, server, "r", since="1-0") == {"messages": sent, "gap": True}
    assert await history(session, server, "r", since="1-0", limit="2") == {
        "messages": sent[:2],
        "gap": True,
    }
    # History empty: a gap.
    assert await history(session, server, "empty", since=sent[0]["id"]) == {
        "messages": [],
        "gap": True,
    }


async def test_history_keeps_the_last_history_size(make_server, session):
    server = make_server("--history-size", "3")
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    assert await history(session, server, "r") == {"messages": sent[2:], "gap": False}
    assert await history(session, server, "r", since=sent[0]["id"]) == {
        "messages": sent[2:],
        "gap": True,
    }
    assert await history(session, server, "r", since=sent[2]["id"]) == {
        "messages": sent[3:],
        "gap": False,
    }


CAFE = quote("caf\u00e9")


async def test_history_bad_requests(server, session):
    base = f"{server.url}/api/rooms"
    bad = [
        (f"{base}/{quote('a b')}/messages", {}),
        (f"{base}/a.b/messages", {}),
        (f"{base}/{'x' * 65}/messages", {}),
        (f"{base}/{CAFE}/messages", {}),
    ]
    for since in ["", "abc", "1-", "-1", "1-2-3", "1.5-0", "1" * 21 + "-0", " 1-0"]:
        bad.append((f"{base}/r/messages", {"since": since}))
    for limit in ["", "0", "501", "-1", "+1", "1.5", "1e2", "abc", " 5", "\u00b2", "9" * 5000]:
        bad.append((f"{base}/r/messages", {"limit": limit}))
    for url, params in bad:
        status, body = await get_json(session, url, params=params)
        assert status == 400, (url, params, status, body)
        assert_error_body(body, "bad_request")
    for limit in ["1", "500", "100", "007"]:
        status, body = await get_json(session, f"{base}/r/messages", params={"limit": limit})
        assert status == 200 and body == {"messages": [], "gap": False}
    for room in ["x" * 64, "A-z_0-9", "-"]:
        status, _ = await get_json(session, f"{base}/{room}/messages")
        assert status == 200, room


# --- health, readiness, metrics, the client --------------------------------------------------


async def test_healthz_and_readyz(server, session):
    status, body = await get_json(session, f"{server.url}/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, _, _ = await get(session, f"{server.url}/readyz")
    assert status == 200


async def test_index_serves_the_browser_client(server, session):
    status, content_type, body = await get(session, f"{server.url}/")
    assert status == 200 and content_type == "text/html"
    assert "<html" in body.lower()


async def test_metrics(server, session):
    status, content_type, body = await get(session, f"{server.url}/metrics")
    assert status == 200 and content_type == "text/plain"
    assert "# TYPE webchat_connected_users gauge" in body
    assert "# TYPE webchat_messages_total counter" in body or (
        "# TYPE webchat_messages counter" in body and "webchat_messages_total " in body
    )
    assert await metric(session, server, "webchat_connected_users") == 0
    assert await metric(session, server, "webchat_messages_total") == 0

    alice = await connect(session, server, name="alice", room="r")
    bob = await connect(session, server, name="bob", room="other")
    assert await metric(session, server, "webchat_connected_users") == 2
    first = await say(alice, "one", nonce="n1")
    await say(bob, "two")
    await say(alice, "three")
    await alice.send("one", nonce="n1")  # a duplicate is not a new message
    assert await alice.expect("message") == first
    await alice.ws.send_str(json.dumps({"type": "message", "text": ""}))  # refused
    await alice.expect("error")
    assert await metric(session, server, "webchat_messages_total") == 3
    await bob.close()
    await until_metric(session, server, "webchat_connected_users", 1)
    await alice.close()
    await until_metric(session, server, "webchat_connected_users", 0)
    assert await metric(session, server, "webchat_messages_total") == 3
