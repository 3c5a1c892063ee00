"""The composer and the conversation: limits said clearly (never a silent cut), Enter on a
laptop and on a phone, right-to-left text, links, and the "new messages" button."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.chat import PHONE, chat_page, start_server
from tests.support.client import ChatClient

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

ROOM = "compose"


def sent_messages(page) -> list[dict]:  # type: ignore[no-untyped-def]
    return [f for f in page.frames.sent if f.get("type") == "message"]


async def test_limits_text_direction_links_and_new_messages(make_server, browser: Browser, session):
    server = start_server(make_server, "--burst", "500", "--rate", "1000")
    async with chat_page(browser, server.url, "alice", ROOM) as alice:
        await alice.wait_open()

        # A 3,000-character paste stays whole; the counter says by how much it is too long,
        # and nothing is sent, by Enter or by the button.
        await alice.input.focus()
        await alice.page.keyboard.insert_text("x" * 3000)
        await expect(alice.counter).to_have_text(
            "1000 characters over the limit of 2000: shorten it to send."
        )
        await expect(alice.counter).to_have_attribute("data-state", "over")
        await expect(alice.send_button).to_be_disabled()
        await expect(alice.input).to_have_attribute("aria-invalid", "true")
        await alice.input.press("Enter")
        await expect(alice.announcer).to_contain_text("Not sent")
        assert await alice.input.input_value() == "x" * 3000
        assert sent_messages(alice) == []
        await expect(alice.pending).to_have_count(0)

        # Counted in code points after trimming, as the server counts: 2000 emoji fit.
        await alice.input.fill("  " + "😀" * 2000 + "\n")
        await expect(alice.counter).to_have_text("0 characters left.")
        await expect(alice.send_button).to_be_enabled()
        await alice.input.fill("😀" * 1990)
        await expect(alice.counter).to_have_text("10 characters left.")
        await alice.input.fill("short")
        await expect(alice.counter).to_be_hidden()
        # Only invisible characters: nothing to send, and the counter says so.
        await alice.input.fill("\u200b\u200b")
        await expect(alice.counter).to_contain_text("invisible")
        await expect(alice.send_button).to_be_disabled()

        # Shift+Enter makes a new line, Enter sends.
        await alice.input.fill("line one")
        await alice.input.press("Shift+Enter")
        await alice.input.type("line two")
        await alice.input.press("Enter")
        await alice.expect_count(1)
        await expect(alice.messages.last.locator(".text")).to_have_text("line one\nline two")

        # Right-to-left text is laid out right to left, in the composer and in the list.
        await alice.type_and_enter("שלום, מה שלומך?")
        await alice.expect_count(2)  # .last is read once: it must be this message, not the first
        text = alice.messages.last.locator(".text")
        await expect(text).to_have_text("שלום, מה שלומך?")
        await expect(text).to_have_attribute("dir", "auto")
        assert await text.evaluate("e => getComputedStyle(e).direction") == "rtl"
        await alice.input.fill("مرحبا")
        await expect(alice.input).to_have_attribute("dir", "auto")
        assert await alice.input.evaluate("e => getComputedStyle(e).direction") == "rtl"
        await alice.input.fill("")

        # Links are clickable, opened apart from the page; nothing else becomes markup.
        await alice.type_and_enter("the notes: https://example.com/notes?v=2, <i>not</i> markup")
        link = alice.messages.last.get_by_role("link")
        await expect(link).to_have_attribute("href", "https://example.com/notes?v=2")
        await expect(link).to_have_attribute("rel", "noopener noreferrer")
        await expect(link).to_have_attribute("target", "_blank")
        assert await alice.list.locator("i").count() == 0

        # Scrolled up while others write: a button offers the news instead of a jump.
        bob = await ChatClient.connect(session, server.ws_url, room=ROOM, name="bob")
        for n in range(40):
            await bob.send(f"filler {n}")
        await alice.expect_count(43)
        await alice.conversation.evaluate("e => { e.scrollTop = 0; }")
        await bob.send("news while alice reads old messages")
        await expect(alice.new_messages).to_have_text("1 new message ↓")
        await expect(alice.messages.last).not_to_be_in_viewport()
        await alice.new_messages.click()
        await expect(alice.messages.last).to_be_in_viewport()
        await expect(alice.new_messages).to_be_hidden()
        await bob.close()
        assert alice.errors == []


async def test_on_a_phone_enter_makes_a_new_line_and_the_button_sends(
    make_server, browser: Browser
):
    server = start_server(make_server)
    async with chat_page(browser, server.url, "pat", ROOM, size=PHONE) as pat:
        await pat.wait_open()
        await pat.input.fill("first line")
        await pat.input.press("Enter")
        await pat.input.type("second line")
        assert sent_messages(pat) == []
        await expect(pat.input).to_have_value("first line\nsecond line")
        await pat.send_button.tap()
        await pat.expect_count(1)
        await expect(pat.messages.last.locator(".text")).to_have_text("first line\nsecond line")
        await expect(pat.input).to_have_value("")
        assert pat.errors == []
