"""PROTOCOL.md 1.1 `before` in the history API: pages of older messages, for scroll-back."""

from __future__ import annotations

from tests.contract.helpers import assert_error_body, connect, get_json, history, say


async def send_some(client, count: int, prefix: str = "m") -> list[dict]:
    return [await say(client, f"{prefix}{n}", nonce=f"{prefix}-{n}") for n in range(count)]


async def test_before_is_the_newest_older_ones_oldest_first(server, session):
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 6)
    page = await history(session, server, "r", before=sent[4]["id"], limit="2")
    assert page == {"messages": sent[2:4], "gap": False}
    assert await history(session, server, "r", before=sent[4]["id"]) == {
        "messages": sent[:4],  # default limit 100: fewer means nothing older is held
        "gap": False,
    }
    assert await history(session, server, "r", before=sent[0]["id"]) == {
        "messages": [],
        "gap": False,
    }
    assert (await history(session, server, "r", before="1-0"))["messages"] == []
    assert (await history(session, server, "r", before="0-0"))["messages"] == []
    beyond = "9" * 20 + "-" + "9" * 20  # after every id: the newest
    assert (await history(session, server, "r", before=beyond, limit="1"))["messages"] == sent[5:]
    assert await history(session, server, "unknown", before=sent[0]["id"]) == {
        "messages": [],
        "gap": False,
    }


async def test_scroll_back_reaches_the_first_of_300_messages(make_server, session):
    server = make_server("--burst", "500", "--rate", "1000")
    alice = await connect(session, server, name="alice", room="r")
    for n in range(300):
        await alice.send(f"m{n}")
    echoes = [await alice.expect("message") for _ in range(300)]
    shown = (await history(session, server, "r", limit="50"))["messages"]
    pages = 0
    while True:
        page = await history(session, server, "r", before=shown[0]["id"], limit="50")
        pages += 1
        shown = page["messages"] + shown
        if len(page["messages"]) < 50:
            break
    assert shown == echoes
    assert pages == 6  # five full pages, then an empty one says it is the beginning


async def test_before_after_trimming_stops_at_the_oldest_held(make_server, session):
    server = make_server("--history-size", "3")
    alice = await connect(session, server, name="alice", room="r")
    sent = await send_some(alice, 5)
    assert await history(session, server, "r", before=sent[4]["id"]) == {
        "messages": sent[2:4],
        "gap": False,
    }
    assert (await history(session, server, "r", before=sent[2]["id"]))["messages"] == []


async def test_before_bad_requests(server, session):
    base = f"{server.url}/api/rooms/r/messages"
    cases = [{"before": b} for b in ["", "abc", "1-", "-1", "1-2-3", "1" * 21 + "-0", " 1-0"]]
    cases += [
        {"before": "1-0", "since": "1-0"},  # one or the other
        {"before": "2-0", "since": "1-0", "limit": "5"},
        {"before": "1-0", "limit": "0"},
        {"before": "1-0", "limit": "501"},
    ]
    for params in cases:
        status, body = await get_json(session, base, params=params)
        assert status == 400, (params, status, body)
        assert_error_body(body, "bad_request")
    status, body = await get_json(session, base, params={"before": "x"})
    assert "before" in body["error"]["message"]
    status, body = await get_json(session, base, params={"before": "1-0", "since": "1-0"})
    assert "since" in body["error"]["message"] and "before" in body["error"]["message"]
