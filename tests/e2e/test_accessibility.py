"""Accessibility of the main views, on a laptop and a phone, light and dark: axe-core (vendored,
tests/e2e/vendor/) finds no serious or critical violation, including colour contrast; own
messages reach the live region once; the heading stays on phones; every control is reachable
by keyboard.

With WEBCHAT_SCREENSHOTS=1 (`make screenshots`) the same scene is saved as the README's
pictures, docs/screenshot.png (laptop) and docs/screenshot-phone.png; otherwise nothing is
written.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.chat import PHONE, ChatPage, chat_page, start_server
from tests.support.client import ChatClient
from tests.support.servers import ROOT

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
SCREENSHOTS = os.environ.get("WEBCHAT_SCREENSHOTS") == "1"
DESKTOP = (1180, 700)


async def axe(page: Page, view: str) -> list[str]:
    """Serious and critical violations on the page as it is now, one line each."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = await page.evaluate(
        """async tags => await axe.run(document, {
             runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})""",
        TAGS,
    )
    return [
        f"{view}: {v['id']} ({v['impact']}): {v['help']} at "
        + "; ".join(" ".join(node["target"]) for node in v["nodes"][:4])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def in_both_themes(page: Page, view: str) -> list[str]:
    found = []
    for scheme in ("light", "dark"):
        await page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        found += await axe(page, f"{view}, {scheme}")
    await page.emulate_media(color_scheme="light")
    return found


async def say(client: ChatClient, text: str) -> None:
    await client.send(text)
    await client.next_of("message")


async def test_main_views_have_no_serious_violations(make_server, browser: Browser, session):
    server = start_server(make_server)
    url = server.url
    carol = await ChatClient.connect(session, server.ws_url, room="release", name="carol")
    olivia = await ChatClient.connect(session, server.ws_url, room="ops", name="olivia")
    dan = await ChatClient.connect(session, server.ws_url, room="design", name="dan")
    await say(dan, "Mock-ups for the settings page are up")
    violations: list[str] = []
    # The axe script is injected: these contexts bypass the page's CSP, for this test only.
    async with (
        chat_page(browser, url, "alice", "ops", DESKTOP, bypass_csp=True) as alice,
        chat_page(browser, url, "bob", "release", PHONE, "dark", bypass_csp=True) as bob,
    ):
        await alice.wait_open()
        await bob.wait_open()
        await alice.room_input.fill("release")
        await alice.room_input.press("Enter")
        await alice.wait_open()
        await say(carol, "Morning! Is the release branch ready for 2.4?")
        await bob.type_and_enter("Almost: two tests left, both flaky ones.")
        await bob.type_and_enter("The changelog draft: https://example.com/changelog/2.4")
        await alice.type_and_enter("Thanks! I'll review the changelog now.")
        await say(carol, "Great, shipping at 15:00 then.")
        await alice.type_and_enter("התרגום לעברית מוכן גם הוא.")
        await alice.expect_count(6)
        await bob.expect_count(6)
        await say(olivia, "Deploy window confirmed for 15:00")
        await say(olivia, "Dashboards are green")
        await expect(alice.room_link("ops").get_by_test_id("unread")).to_have_text("2 unread")
        await alice.input.fill("Deploy checklist is in the wiki")

        # Own messages reach the live region once: the pending copy is outside of it.
        own = alice.list.get_by_test_id("message").filter(has_text="review the changelog")
        await expect(own).to_have_count(1)
        outside = await alice.conversation.get_by_test_id("outbox").evaluate(
            "e => e.closest('[aria-live], [role=log], [role=status]') === null"
        )
        assert outside, "pending messages would be announced as well as their echo"
        assert await alice.list.evaluate("e => e.parentElement.getAttribute('role')") == "log"
        await expect(alice.announcer).to_have_attribute("aria-live", "polite")

        if SCREENSHOTS:
            await alice.input.focus()
            await alice.page.screenshot(path=str(ROOT / "docs" / "screenshot.png"))
            await bob.page.screenshot(path=str(ROOT / "docs" / "screenshot-phone.png"))

        violations += await in_both_themes(alice.page, "laptop, conversation")
        violations += await in_both_themes(bob.page, "phone, conversation")

        # The heading names the product and the room on a phone too.
        await expect(bob.page.get_by_role("heading", level=1)).to_have_accessible_name(
            "webchat #release"
        )
        # The room list sheet, with a room name refused and said why.
        await bob.rooms_toggle.click()
        await bob.room_input.fill("no spaces please")
        await bob.room_input.press("Enter")
        await expect(bob.room_error).to_be_visible()
        violations += await in_both_themes(bob.page, "phone, room sheet")
        await bob.page.keyboard.press("Escape")

        # The name prompt, with the reason a name was refused.
        async with chat_page(browser, url, None, "release", PHONE, bypass_csp=True) as eve:
            await eve.name_input.fill("al\u200bice")
            await eve.name_input.press("Enter")
            await expect(eve.name_error).to_contain_text("invisible")
            violations += await in_both_themes(eve.page, "phone, name prompt")

        # Error states: a message over the limit, an error notice, members last known.
        await alice.input.fill("x" * 2100)
        await alice.page.evaluate("history.pushState({}, '', '?room=bad!'); location.reload()")
        await expect(alice.notices.filter(has_text="not a room name")).to_have_count(1)
        await alice.wait_open()
        await alice.input.fill("x" * 2100)
        await expect(alice.counter).to_have_attribute("data-state", "over")
        await alice.page.context.set_offline(True)
        await asyncio.to_thread(server.stop)
        await expect(alice.members_panel).to_have_attribute("data-stale", "true")
        violations += await in_both_themes(alice.page, "laptop, offline and errors")
        await keyboard_reaches_every_control(alice)
    for client in (carol, olivia, dan):
        await client.close()
    assert violations == []


async def keyboard_reaches_every_control(page: ChatPage) -> None:
    """Tab from the top of the page through everything; each control gets the focus once."""
    await page.page.evaluate("document.activeElement?.blur()")
    reached = []
    for _ in range(40):
        await page.page.keyboard.press("Tab")
        reached.append(
            await page.page.evaluate(
                """() => { const e = document.activeElement;
                   return e.dataset.testid || e.dataset.room || e.id || e.getAttribute('aria-label')
                     || e.tagName; }"""
            )
        )
    for control in [
        "room-input",
        "room-join",
        "lobby",  # a room link
        "release",
        "retry-button",
        "message-input",
        "conversation",  # the conversation scrolls by keyboard
    ]:
        assert control in reached, f"{control} not reachable by Tab: {reached}"
