"""Rooms in the browser: the room list with member counts, joining by name, switching with
drafts and scroll positions kept, the URL following the room, unread counts, the phone sheet."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.chat import PHONE, ChatPage, chat_page, start_server
from tests.support.client import ChatClient

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)


def room_of(page: ChatPage) -> str:
    return parse_qs(urlsplit(page.page.url).query)["room"][0]


async def test_switching_rooms_keeps_drafts_position_and_counts_unread(
    make_server, browser: Browser, session
):
    server = start_server(make_server, "--burst", "500", "--rate", "1000")
    ops = await ChatClient.connect(session, server.ws_url, room="ops", name="olivia")
    feeder = await ChatClient.connect(session, server.ws_url, room="release", name="fred")
    for n in range(60):
        await feeder.send(f"release note {n + 1}")
    for _ in range(60):
        await feeder.next_of("message")

    async with chat_page(browser, server.url, "alice", "release") as alice:
        await alice.wait_open()
        await alice.expect_count(50)
        # The room list: this room (current), and the others that are active, with counts.
        await expect(alice.joined_rooms).to_have_count(1)
        await expect(alice.room_link("release")).to_have_attribute("aria-current", "page")
        await expect(
            alice.rooms_panel.locator("[data-testid=active-room][data-room=ops]")
        ).to_contain_text("1")

        # Scroll up to somewhere in the middle and start a message there.
        await alice.conversation.evaluate("e => { e.scrollTop = e.scrollHeight / 3; }")
        position = await alice.scroll_top()
        await alice.input.fill("a draft for #release")

        # Joining by name checks the name first, and says why.
        await alice.room_input.fill("not a room!")
        await alice.room_input.press("Enter")
        await expect(alice.room_error).to_contain_text("letters")
        await expect(alice.room_name).to_have_text("#release")
        await alice.room_input.fill("design")
        await alice.room_input.press("Enter")
        await expect(alice.room_name).to_have_text("#design")
        await alice.wait_open()
        assert room_of(alice) == "design"  # the URL follows the room: links can be shared
        await expect(alice.input).to_have_value("")
        await expect(alice.history_start).to_have_attribute("data-state", "beginning")
        await alice.input.fill("a draft for #design")
        await expect(alice.joined_rooms).to_have_count(2)

        # While alice is in #design, #release gets news: an unread count there.
        for n in range(3):
            await feeder.send(f"while away {n + 1}")
        await expect(alice.room_link("release").get_by_test_id("unread")).to_have_text("3 unread")
        await expect(alice.page).to_have_title(re.compile(r"^\(3\) #design"))

        # Back to #release: the draft and the position are as she left them; the unread
        # messages are marked, and the count is cleared.
        await alice.room_link("release").click()
        await expect(alice.room_name).to_have_text("#release")
        await expect(alice.input).to_have_value("a draft for #release")
        assert abs(await alice.scroll_top() - position) < 2
        await expect(alice.room_link("release").get_by_test_id("unread")).to_have_count(0)
        await expect(alice.list.locator(".day-divider.unread")).to_have_text("New messages")
        await expect(alice.new_messages).to_be_hidden()
        assert room_of(alice) == "release"

        # The browser's back button goes to the previous room, the draft still there.
        await alice.page.go_back()
        await expect(alice.room_name).to_have_text("#design")
        await expect(alice.input).to_have_value("a draft for #design")
        assert room_of(alice) == "design"

        # Leaving a room closes it; the member counts of the list follow.
        await alice.rooms_panel.get_by_role("button", name="Leave #design").click()
        await expect(alice.joined_rooms).to_have_count(1)
        await expect(alice.room_name).to_have_text("#release")
        assert alice.errors == []
    await ops.close()


async def test_the_room_list_is_a_sheet_on_phones(make_server, browser: Browser, session):
    server = start_server(make_server)
    ops = await ChatClient.connect(session, server.ws_url, room="ops", name="olivia")
    async with chat_page(browser, server.url, "pat", "release", size=PHONE) as pat:
        await pat.wait_open()
        await expect(pat.rooms_panel).to_be_hidden()
        await expect(pat.rooms_toggle).to_have_attribute("aria-expanded", "false")
        await pat.rooms_toggle.click()
        await expect(pat.rooms_panel).to_be_visible()
        await expect(pat.rooms_toggle).to_have_attribute("aria-expanded", "true")
        await pat.page.keyboard.press("Escape")
        await expect(pat.rooms_panel).to_be_hidden()
        await expect(pat.rooms_toggle).to_be_focused()
        await pat.rooms_toggle.click()
        await pat.room_link("ops").click()
        await expect(pat.rooms_panel).to_be_hidden()
        await expect(pat.room_name).to_have_text("#ops")
        await pat.wait_open()
        await expect(pat.members).to_contain_text("olivia")
        await expect(pat.member_count).to_have_text("2")
        assert pat.errors == []
    await ops.close()
