"""The browser client, end to end: two Chromium pages chat through a real webchat process.

Bob's page (HTTP and WebSocket alike) goes through a TCP proxy that the test stalls and cuts,
so his client must reconnect by itself, replay what it missed with `since`, resend its outbox
with the same nonces, and still show every message exactly once, in the room's order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.e2e.chat import LAPTOP, PHONE, chat_page, start_server
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

ROOM = "release"
HTML_TEXT = 'Ready! <b>bold?</b> & <script>alert("x")</script> stay plain text'


async def history(session: aiohttp.ClientSession, base_url: str) -> list[dict[str, Any]]:
    async with session.get(f"{base_url}/api/rooms/{ROOM}/messages?limit=500") as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["gap"] is False
    return list(body["messages"])


async def test_two_browsers_chat_through_an_outage(
    make_server: Callable[..., Any], browser: Browser, session: aiohttp.ClientSession
) -> None:
    server = start_server(make_server)
    async with (
        TcpProxy(server.port) as proxy,
        chat_page(browser, server.url, "alice", ROOM, LAPTOP) as alice,
        chat_page(browser, proxy.url, "bob", ROOM, PHONE) as bob,
    ):
        # Both connect; presence shows both names on both pages.
        await alice.wait_open()
        await bob.wait_open()
        for page in (alice, bob):
            await expect(page.members).to_contain_text("alice")
            await expect(page.members).to_contain_text("bob")
            await expect(page.member_count).to_have_text("2")
        # No maxlength: it would cut a long paste silently (the counter says what is wrong).
        assert await alice.input.get_attribute("maxlength") is None

        # They chat; markup in a message is shown as text, never parsed.
        await alice.type_and_enter("Hi Bob! Is the release branch ready?")
        await bob.expect_count(1)
        await bob.input.fill(HTML_TEXT)
        await bob.send_button.click()
        await alice.expect_count(2)
        await expect(alice.messages.nth(1).locator(".text")).to_have_text(HTML_TEXT)
        assert await alice.list.locator("b, script").count() == 0
        assert await bob.list.locator("b, script").count() == 0
        await expect(bob.messages.nth(1)).to_have_class("message own")
        await expect(alice.messages.nth(1)).to_have_class("message")
        # Alice's message to bob is grouped under her header; bob's is a new author.
        last_seen_by_bob = (await bob.ids())[-1]

        # Bob's link goes quiet: his next message reaches the server (alice gets it), but its
        # echo does not reach him, so it stays pending in his outbox.
        proxy.stall()
        unechoed = "Deploying now, will report back"
        await bob.type_and_enter(unechoed)
        await alice.expect_count(3)
        await expect(bob.pending).to_have_count(1)
        await expect(bob.messages).to_have_count(2)
        unechoed_nonce = await bob.pending.get_attribute("data-nonce")

        # Then it breaks. Alice keeps writing; Bob writes too, which stays pending. His page
        # shows the members as last known, and counts down to the next attempt.
        proxy.cut()
        await expect(bob.status).not_to_have_attribute("data-state", "open")
        await expect(bob.members_panel).to_have_attribute("data-stale", "true")
        await expect(bob.members_panel).to_contain_text("Last known")
        while_away = [
            "Bob? You went quiet.",
            "The deploy looks green from here.",
            "Metrics are fine, latency is flat.",
            "Ping me when you are back!",
        ]
        for count, text in enumerate(while_away, start=4):
            await alice.type_and_enter(text)
            await alice.expect_count(count)
        offline = "Sorry, lost my connection in a tunnel. Back now!"
        await bob.type_and_enter(offline)
        await expect(bob.pending).to_have_count(2)
        await expect(bob.pending.last).to_contain_text(offline)
        await expect(bob.pending.last).to_contain_text("pending")
        offline_nonce = await bob.pending.last.get_attribute("data-nonce")
        await expect(bob.messages).to_have_count(2)

        # The link comes back; Bob's client reconnects by itself (backoff is capped at 30 s).
        proxy.restore()
        await bob.wait_open(timeout=40)
        await expect(bob.pending).to_have_count(0)
        await expect(bob.members_panel).to_have_attribute("data-stale", "false")
        total = 3 + len(while_away) + 1
        await alice.expect_count(total)
        await bob.expect_count(total)

        # Every message exactly once, in the room's order, on both pages and in history.
        held = await history(session, server.url)
        assert [m["id"] for m in held] == await alice.ids() == await bob.ids()
        texts = [m["text"] for m in held]
        assert texts == await alice.texts() == await bob.texts()
        assert texts.count(unechoed) == 1
        assert texts.count(offline) == 1
        assert texts[-1] == offline
        assert texts[3:-1] == while_away
        nonces = {m["text"]: m.get("nonce") for m in held}
        assert nonces[unechoed] == unechoed_nonce
        assert nonces[offline] == offline_nonce

        # How it got there: the reconnect asked for what came after the last id Bob saw,
        # the unechoed message was resent with its nonce and came back twice (replayed, then
        # re-sent as a duplicate) yet is shown once.
        assert len(bob.frames.urls) >= 2
        reconnect = parse_qs(urlsplit(bob.frames.urls[-1]).query)
        assert reconnect["since"] == [last_seen_by_bob]
        unechoed_id = held[2]["id"]
        await bob.frames.wait_for(
            lambda: bob.frames.received_ids(unechoed_id) == 2, "the duplicate echo"
        )
        assert bob.frames.sent_nonces(unechoed_nonce) == 2
        assert bob.frames.sent_nonces(offline_nonce) == 1

        for page in (alice, bob):
            await expect(page.members).to_contain_text("alice")
            await expect(page.members).to_contain_text("bob")
            await expect(page.status).to_have_attribute("data-state", "open")
        # No "messages may be missing" anywhere: the server sent no gap.
        for page in (alice, bob):
            await expect(page.list.get_by_test_id("gap")).to_have_count(0)
        assert alice.errors == [] and bob.errors == []


async def test_name_is_asked_once_and_remembered(
    make_server: Callable[..., Any], browser: Browser
) -> None:
    server = start_server(make_server)
    async with chat_page(browser, server.url, None, ROOM) as carol:
        name_input = carol.page.get_by_test_id("name-input")
        await expect(name_input).to_be_focused()
        await expect(carol.status).to_have_attribute("data-state", "closed")
        await name_input.press("Enter")  # empty: refused, with a message
        await expect(carol.name_error).to_have_text("Please enter a name.")
        await name_input.fill("al\u200bice")  # invisible characters: refused as the server would
        await name_input.press("Enter")
        await expect(carol.name_error).to_contain_text("invisible")
        await name_input.fill("  carol  ")
        await name_input.press("Enter")
        await carol.wait_open()
        await expect(carol.input).to_be_focused()
        await expect(carol.members.get_by_role("listitem")).to_have_count(1)
        await expect(carol.members).to_contain_text("carol")
        # The name is not in the URL any more (links are shared), the room is.
        assert parse_qs(urlsplit(carol.page.url).query) == {"room": [ROOM]}

        # A reload in the same profile joins at once under the remembered name.
        await carol.page.reload()
        await carol.wait_open()
        await expect(name_input).to_be_hidden()
        await carol.type_and_enter("carol again")
        await expect(carol.messages.last).to_contain_text("carol (you)")

        # Keyboard only: Tab reaches the send button, Enter on it sends.
        await carol.input.fill("sent with the keyboard")
        await carol.input.press("Tab")
        await expect(carol.send_button).to_be_focused()
        await carol.page.keyboard.press("Enter")
        await expect(carol.messages.last).to_contain_text("sent with the keyboard")
        assert carol.errors == []


async def test_rate_limited_messages_are_retried_once_each(
    make_server: Callable[..., Any], browser: Browser, session: aiohttp.ClientSession
) -> None:
    server = start_server(make_server, "--rate", "2", "--burst", "1")
    async with chat_page(browser, server.url, "dave", ROOM) as dave:
        await dave.wait_open()
        texts = ["one", "two", "three", "four", "five"]
        for text in texts:
            await dave.type_and_enter(text)
        # Frames find the bucket empty; the error is shown and the message resent. Repeated
        # rate_limited errors make one notice (with a count), not a pile.
        await expect(dave.notices).to_have_count(1)
        await expect(dave.notices).to_contain_text("Slow down")
        await expect(dave.pending).to_have_count(0)
        await expect(dave.notices).to_contain_text("(\u00d7")
        assert await dave.notices.count() == 1
        # The notice sits above the composer, never over it.
        notice = await dave.notices.bounding_box()
        composer = await dave.page.locator("#composer").bounding_box()
        assert notice is not None and composer is not None
        assert notice["y"] + notice["height"] <= composer["y"]
        assert await dave.texts() == texts
        assert [m["text"] for m in await history(session, server.url)] == texts
        await dave.frames.wait_for(
            lambda: any(f.get("code") == "rate_limited" for f in dave.frames.received),
            "a rate_limited error frame",
        )
        assert dave.errors == []
