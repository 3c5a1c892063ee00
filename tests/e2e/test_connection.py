"""The connection as a person sees it: a restarted service has every page back within a few
seconds, the status counts down to the next attempt, and the page retries at once when the
browser says it is back online."""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.e2e.chat import PHONE, chat_page, start_server
from tests.e2e.conftest import ms
from tests.support.client import ChatClient
from tests.support.timing import seconds

ROOM = "ops"


@pytest.mark.parametrize("broker", ["memory", "redis"], indirect=True)
async def test_every_page_is_back_within_5_s_after_a_restart(broker, make_server, browser: Browser):
    # The default drain: 1 s more service, then 1012 to every client spread over 2 s.
    server = make_server()
    names = ["ann", "ben", "cat"]
    async with contextlib.AsyncExitStack() as stack:
        pages = [
            await stack.enter_async_context(
                chat_page(browser, server.url, name, ROOM, PHONE if name == "cat" else (900, 640))
            )
            for name in names
        ]
        for page in pages:
            await page.wait_open()
        await pages[0].type_and_enter("before the restart")
        for page in pages:
            await page.expect_count(1)
        before = await pages[0].ids()

        await asyncio.to_thread(server.stop)  # SIGTERM: drain, 1012, exit
        for page in pages:
            await expect(page.status).to_have_attribute("data-close-code", "1012")
            await expect(page.status).not_to_have_attribute("data-state", "open")
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(make_server, port=server.port)  # returns once ready
        ready_at = loop.time()
        for page in pages:
            await page.wait_open(timeout=30)
        back_in = loop.time() - ready_at
        print(f"every page back {back_in:.2f} s after the restarted service was ready")
        assert back_in <= seconds(5), f"pages took {back_in:.1f} s to come back"

        for page in pages:
            # The "server is restarting" notice was withdrawn once connected again.
            await expect(page.notices.filter(has_text="restarting")).to_have_count(0)
            for name in names:
                await expect(page.members).to_contain_text(name)
            await expect(page.member_count).to_have_text("3")
        if broker == "redis":  # history survived: nothing is missing, nothing doubled
            for page in pages:
                assert await page.ids() == before
                await expect(page.list.get_by_test_id("gap")).to_have_count(0)
        else:  # the memory broker forgot everything: the pages say so
            for page in pages:
                await expect(page.list.get_by_test_id("gap")).to_have_count(1)
                assert (await page.ids())[:1] == before
        await pages[1].type_and_enter("after the restart")
        for page in pages:
            await expect(page.messages.last).to_contain_text("after the restart")
            assert page.errors == []


# Installed before the client's scripts, so it runs before the client's own 'online' handler:
# records the status just before that handler and just after the event.
WATCH_ONLINE = """
window.addEventListener('online', () => {
  const status = document.querySelector('[data-testid=status]');
  window.__online = {before: status.dataset.state};
  setTimeout(() => { window.__online.after = status.dataset.state; }, 0);
});
"""

# Makes the tab "visible again" and reads the status in the same task: no race with timers.
VISIBLE_AGAIN = """() => {
  const status = document.querySelector('[data-testid=status]');
  const before = status.dataset.state;
  document.dispatchEvent(new Event('visibilitychange'));
  return {before, after: status.dataset.state};
}"""


@pytest.mark.parametrize("broker", ["memory"], indirect=True)
async def test_the_status_counts_down_and_the_page_retries_at_once_when_it_may(
    make_server, browser: Browser
):
    server = start_server(make_server)
    async with chat_page(browser, server.url, "dana", ROOM) as dana:
        await dana.page.add_init_script(WATCH_ONLINE)
        await dana.page.reload()
        await dana.wait_open()
        await dana.page.context.set_offline(True)
        await asyncio.to_thread(server.stop)
        await expect(dana.status).to_have_attribute("data-state", "closed")
        await expect(dana.members_panel).to_have_attribute("data-stale", "true")
        await expect(dana.announcer).to_have_text(f"Connection to #{ROOM} lost.")
        await expect(dana.page.get_by_role("button", name="Retry now")).to_be_visible()

        # Attempts thin out as the outage goes on; the status counts down to the next one.
        text = dana.page.locator("#status-text")
        countdown = re.compile(r"^Offline · retrying in ([2-9]|\d\d) s$")
        await expect(text).to_have_text(countdown, timeout=ms(seconds(40)))
        shown = int(re.findall(r"\d+", await text.inner_text())[0])
        await expect(text).to_have_text(f"Offline · retrying in {shown - 1} s")

        # The tab becomes visible again: an attempt starts at once, not when the timer says.
        await expect(text).to_have_text(countdown, timeout=ms(seconds(40)))
        assert await dana.page.evaluate(VISIBLE_AGAIN) == {
            "before": "closed",
            "after": "connecting",
        }

        # The service is back and the browser says it is online again: the same. (The next
        # attempt is at least 2 s away, far more than the event takes to arrive.)
        await asyncio.to_thread(make_server, "--drain-delay", "0", port=server.port)
        await expect(text).to_have_text(
            re.compile(r"^Offline · retrying in ([3-9]|\d\d) s$"), timeout=ms(seconds(60))
        )
        await dana.page.context.set_offline(False)
        seen = await dana.page.wait_for_function("() => window.__online?.after && window.__online")
        online = await seen.json_value()
        assert online["before"] == "closed" and online["after"] in ("connecting", "open"), online
        await dana.wait_open()
        await expect(dana.members_panel).to_have_attribute("data-stale", "false")
        await expect(dana.announcer).to_have_text(f"Connected to #{ROOM} again.")
        assert dana.errors == []


@pytest.mark.parametrize("broker", ["memory"], indirect=True)
async def test_a_full_service_is_retried_no_sooner_than_it_asks(make_server, browser: Browser):
    """The service is at --max-connections: the page's upgrade is refused, its check learns
    Retry-After (5 s) from the 503, and the next attempt waits at least that, where the
    first retry would otherwise come within a second."""
    server = start_server(make_server, "--max-connections", "1")
    async with aiohttp.ClientSession() as session:
        holder = await ChatClient.connect(session, server.ws_url, room=ROOM, name="holder")
        async with chat_page(browser, server.url, "erin", ROOM) as erin:
            await expect(erin.status).to_have_attribute("data-state", "closed")
            wait = await erin.page.evaluate(
                "() => Number(document.querySelector('[data-testid=status]')"
                ".dataset.retryAt) - Date.now()"
            )
            assert 5000 - ms(seconds(1)) <= wait <= 10_000, wait
            await holder.close()  # a place frees: the page gets in on its next attempt
            await erin.wait_open(timeout=15)
            assert erin.errors == []
