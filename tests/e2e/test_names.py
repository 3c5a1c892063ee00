"""Names in the browser (anonymous mode): the page keeps a key with the name; a second person
taking a held name is told why and picks another; a second tab of the same person shares it."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.chat import ChatPage, chat_page, start_server

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

ROOM = "release"


async def test_a_held_name_is_refused_and_another_one_picked(make_server, browser: Browser):
    server = start_server(make_server)
    async with chat_page(browser, server.url, "alice", ROOM) as alice:
        await alice.wait_open()
        key = parse_qs(urlsplit(alice.frames.urls[0]).query)["key"][0]
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
        async with chat_page(browser, server.url, "alice", ROOM) as eve:  # another key
            await a_second_person(server.url, alice, eve, key)


async def a_second_person(url: str, alice: ChatPage, eve: ChatPage, key: str) -> None:
    # Eve's page is refused before any WebSocket opens, learns why, and asks her.
    await expect(eve.name_input).to_be_visible()
    await expect(eve.name_error).to_contain_text("already used in #release")
    await expect(eve.name_input).to_have_value("alice")
    await expect(eve.name_input).to_be_focused()
    assert not any(f.get("type") == "welcome" for f in eve.frames.received)
    await eve.name_input.fill("eve")
    await eve.name_input.press("Enter")
    await eve.wait_open()
    await expect(eve.members).to_contain_text("alice")
    await expect(eve.member_count).to_have_text("2")
    await expect(alice.members).to_contain_text("eve")
    await expect(alice.announcer).to_have_text("eve joined #release.")
    eve_key = parse_qs(urlsplit(eve.frames.urls[-1]).query)["key"][0]
    assert eve_key != key

    # A second tab of alice's browser has her key: the same name, listed once.
    tab = ChatPage("alice", await alice.page.context.new_page())
    await tab.page.goto(f"{url}/?room={ROOM}")
    await tab.wait_open()
    await expect(tab.status).to_contain_text("Connected as alice")
    assert parse_qs(urlsplit(tab.frames.urls[0]).query)["key"] == [key]
    await expect(tab.member_count).to_have_text("2")

    # And the messages of the one alice are hers in both tabs, eve's are eve's.
    await tab.type_and_enter("one name, two tabs")
    await expect(alice.messages.last).to_have_class(re.compile("own"))
    await expect(eve.messages.last).not_to_have_class(re.compile("own"))
    for page in (alice, eve, tab):
        assert page.errors == []
