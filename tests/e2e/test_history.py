"""History in the browser: a reload shows the same conversation, a late joiner sees the last
50 messages, and scrolling up pages back (`before=`) to the first message of the room."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, WebSocketRoute, expect

from tests.e2e.chat import ChatPage, chat_page, start_server
from tests.support.client import ChatClient
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

ROOM = "history"


async def held(session: aiohttp.ClientSession, base_url: str) -> list[dict[str, Any]]:
    async with session.get(f"{base_url}/api/rooms/{ROOM}/messages?limit=500") as response:
        assert response.status == 200
        return list((await response.json())["messages"])


async def post(session: aiohttp.ClientSession, server: Any, count: int) -> None:
    """`count` messages from a plain WebSocket client (the browser is not needed for that)."""
    client = await ChatClient.connect(session, server.ws_url, room=ROOM, name="feeder")
    for n in range(count):
        await client.send(f"message {n + 1} of {count}")
    for _ in range(count):
        await client.next_of("message")
    await client.close()


async def test_a_reload_shows_the_same_conversation(make_server, browser: Browser, session):
    server = start_server(make_server)
    async with (
        TcpProxy(server.port) as proxy,
        chat_page(browser, proxy.url, "alice", ROOM) as alice,
    ):
        dead = False

        def route(ws: WebSocketRoute) -> None:
            if not dead:  # pass through to the server; else a socket that never answers
                ws.connect_to_server()

        await alice.page.route_web_socket("**/ws?*", route)
        await alice.wait_open()
        for text in ["one", "two", "three", "four https://example.com/4"]:
            await alice.type_and_enter(text)
        await alice.expect_count(4)
        before = await alice.ids()

        # The link breaks and the next connection never gets an answer: what alice writes
        # now stays pending. She also leaves a draft in the composer.
        dead = True
        proxy.cut()
        await expect(alice.status).not_to_have_attribute("data-state", "open")
        proxy.restore()
        await alice.type_and_enter("written offline")
        await expect(alice.pending).to_have_count(1)
        await expect(alice.pending).to_contain_text("pending")
        await alice.input.fill("a draft, not sent")

        # A reload: the same messages, the pending one is sent (once), the draft is kept.
        dead = False
        await alice.page.reload()
        await alice.wait_open()
        await alice.expect_count(5)
        assert (await alice.ids())[:4] == before
        assert (await alice.texts())[4] == "written offline"
        await expect(alice.pending).to_have_count(0)
        await expect(alice.input).to_have_value("a draft, not sent")
        await expect(alice.messages.nth(3).get_by_role("link")).to_have_attribute(
            "href", "https://example.com/4"
        )
        texts = [m["text"] for m in await held(session, server.url)]
        assert texts == ["one", "two", "three", "four https://example.com/4", "written offline"]
        # The first connection after the reload asked for recent history, not `since`.
        query = parse_qs(urlsplit(alice.frames.urls[-1]).query)
        assert query["history"] == ["50"] and "since" not in query
        # A small room fits on the screen: the client paged back and found its beginning.
        await expect(alice.history_start).to_have_attribute("data-state", "beginning")
        assert alice.errors == []


async def test_a_late_joiner_sees_the_last_50(make_server, browser: Browser, session):
    server = start_server(make_server, "--burst", "500", "--rate", "1000")
    await post(session, server, 60)
    async with chat_page(browser, server.url, "bob", ROOM) as bob:
        await bob.wait_open()
        await bob.expect_count(50)
        everything = await held(session, server.url)
        assert await bob.ids() == [m["id"] for m in everything[-50:]]
        # Earlier ones are there to load; the newest is in view; days are marked.
        await expect(bob.history_start).to_have_attribute("data-state", "more")
        await expect(bob.history_start.get_by_role("button")).to_have_text("Load earlier messages")
        await expect(bob.messages.last).to_be_in_viewport()
        await expect(bob.messages.first.get_by_role("separator")).to_have_text("Today")
        # Consecutive messages of one author share one header.
        assert await bob.list.locator(".message.grouped").count() == 49
        # Then live ones follow.
        await post(session, server, 1)
        await bob.expect_count(51)
        await expect(bob.messages.last).to_contain_text("message 1 of 1")
        await expect(bob.messages.last).to_be_in_viewport()
        assert bob.errors == []


async def scroll_to_top(page: ChatPage) -> None:
    await page.conversation.evaluate("e => { e.scrollTop = 0; }")


async def test_scrolling_up_reaches_the_first_of_300_messages(
    make_server, browser: Browser, session
):
    server = start_server(make_server, "--burst", "500", "--rate", "1000")
    await post(session, server, 300)
    async with chat_page(browser, server.url, "carol", ROOM) as carol:
        await carol.wait_open()
        await carol.expect_count(50)
        shown = 50
        while shown < 300:
            await scroll_to_top(carol)
            shown += 50
            await carol.expect_count(shown)
            # The messages that were at the top are still where the reader left them: the
            # page did not jump to the new top.
            assert await carol.scroll_top() > 0
        await scroll_to_top(carol)
        await expect(carol.history_start).to_have_attribute("data-state", "beginning")
        await expect(carol.history_start).to_have_text(f"This is the beginning of #{ROOM}.")
        everything = await held(session, server.url)
        assert await carol.ids() == [m["id"] for m in everything]
        await expect(carol.messages.first).to_contain_text("message 1 of 300")
        assert carol.errors == []


async def test_pages_cut_short_by_the_size_bound_still_reach_the_first_message(
    make_server, browser: Browser, session
):
    """A service with a small --api-max-bytes answers shorter pages, marked truncated: the
    client keeps paging instead of taking a short page for the beginning of the room."""
    server = start_server(
        make_server, "--burst", "500", "--rate", "1000", "--api-max-bytes", "64KiB"
    )
    client = await ChatClient.connect(session, server.ws_url, room=ROOM, name="feeder")
    count = 120
    for n in range(count):  # about 2 KB each: a page of 50 is cut to about 30
        await client.send(f"long {n + 1} of {count} " + "x" * 1900)
    for _ in range(count):
        await client.next_of("message")
    await client.close()
    async with session.get(
        f"{server.url}/api/rooms/{ROOM}/messages?before=9999999999999-0&limit=50"
    ) as r:
        assert (await r.json())["truncated"] is True  # the bound does cut these pages
    async with chat_page(browser, server.url, "dora", ROOM) as dora:
        await dora.wait_open()
        await dora.expect_count(50)
        pages = 0
        while (shown := await dora.messages.count()) < count:
            if shown > 50:  # a short page came, yet the client knows there is more
                state = await dora.history_start.get_attribute("data-state")
                assert state != "beginning", shown
            await scroll_to_top(dora)
            await expect(dora.messages).not_to_have_count(shown)
            pages += 1
        assert pages >= 3  # 70 older messages in pages of about 30
        await scroll_to_top(dora)
        await expect(dora.history_start).to_have_attribute("data-state", "beginning")
        await expect(dora.messages.first).to_contain_text(f"long 1 of {count}")
        assert dora.errors == []
