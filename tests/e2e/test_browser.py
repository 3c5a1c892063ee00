"""The browser client, end to end: two Chromium pages chat through a real webchat process.

Bob's page (HTTP and WebSocket alike) goes through a TCP proxy that the test stalls and cuts,
so his client must reconnect by itself, replay what it missed with `since`, resend its outbox
with the same nonces, and still show every message exactly once, in the room's order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, Page, WebSocket, expect

from tests.e2e.conftest import ms
from tests.support.servers import ROOT
from tests.support.tcpproxy import TcpProxy
from tests.support.timing import seconds

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

ROOM = "release"
LAPTOP = (880, 640)
PHONE = (400, 640)
SCREENSHOT = ROOT / "docs" / "screenshot.png"
# Playwright's assertions retry until this timeout (their default is 5 s, unscaled).
expect.set_options(timeout=ms(seconds(10)))

HTML_TEXT = 'Ready! <b>bold?</b> & <script>alert("x")</script> stay plain text'


class Frames:
    """Every WebSocket frame one page sends and receives, as Playwright reports them."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws: WebSocket) -> None:
        self.urls.append(ws.url)
        ws.on("framereceived", lambda payload: self._record(self.received, payload))
        ws.on("framesent", lambda payload: self._record(self.sent, payload))

    async def _record(self, into: list[dict[str, Any]], payload: str | bytes) -> None:
        into.append(json.loads(payload))
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), seconds(10))
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}") from None

    def received_ids(self, message_id: str) -> int:
        return sum(1 for f in self.received if f.get("id") == message_id)

    def sent_nonces(self, nonce: str) -> int:
        return sum(1 for f in self.sent if f.get("nonce") == nonce)


class ChatPage:
    """One person's browser tab, addressed only through the client's data-testid hooks."""

    def __init__(self, name: str, page: Page) -> None:
        self.name = name
        self.page = page
        self.frames = Frames(page)
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console: {msg.text}")
                if "Content Security Policy" in msg.text
                else None
            ),
        )
        self.status = page.get_by_test_id("status")
        self.input = page.get_by_test_id("message-input")
        self.send_button = page.get_by_test_id("send-button")
        self.list = page.get_by_test_id("messages")
        self.messages = self.list.get_by_test_id("message")
        self.pending = self.list.get_by_test_id("pending-message")
        self.members = page.get_by_test_id("members")
        self.member_count = page.get_by_test_id("member-count")
        self.notice = page.get_by_test_id("notice")

    async def wait_open(self, timeout: float = 10) -> None:
        await expect(self.status).to_have_attribute(
            "data-state", "open", timeout=ms(seconds(timeout))
        )

    async def type_and_enter(self, text: str) -> None:
        await self.input.fill(text)
        await self.input.press("Enter")

    async def ids(self) -> list[str]:
        return await self.messages.evaluate_all("els => els.map(e => e.dataset.id)")

    async def texts(self) -> list[str]:
        return await self.messages.locator(".text").all_text_contents()

    async def expect_count(self, count: int) -> None:
        await expect(self.messages).to_have_count(count)


@contextlib.asynccontextmanager
async def chat_page(
    browser: Browser, base_url: str, name: str | None, size: tuple[int, int] = LAPTOP
) -> AsyncIterator[ChatPage]:
    """A fresh browser profile showing the room; without `name` the page asks for one."""
    context = await browser.new_context(
        viewport={"width": size[0], "height": size[1]},
        locale="en-GB",
        timezone_id="Europe/Amsterdam",
        color_scheme="light",
    )
    context.set_default_timeout(ms(seconds(10)))
    try:
        page = await context.new_page()
        chat = ChatPage(name or "", page)
        query = {"room": ROOM} if name is None else {"room": ROOM, "name": name}
        await page.goto(f"{base_url}/?{urlencode(query)}")
        yield chat
    finally:
        await context.close()


def start_server(make_server: Callable[..., Any], *args: str, **kwargs: Any) -> Any:
    """A webchat process that closes its clients at once on SIGTERM (no drain delay)."""
    return make_server("--drain-delay", "0", "--drain-spread", "0", *args, **kwargs)


async def history(session: aiohttp.ClientSession, base_url: str) -> list[dict[str, Any]]:
    async with session.get(f"{base_url}/api/rooms/{ROOM}/messages?limit=500") as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["gap"] is False
    return list(body["messages"])


async def save_screenshot(browser: Browser, *shots: tuple[str, str, int, bytes]) -> bytes:
    """Lay the pages' screenshots side by side on one canvas and save it as the README image."""
    panels = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption><b>{who}</b> {caption}</figcaption></figure>"
        for who, caption, _, png in shots
    )
    html = f"""<!doctype html><style>
      html {{ background: linear-gradient(135deg, #e0e7ff, #cffafe); }}
      body {{ margin: 0; padding: 28px 32px; display: flex; gap: 28px; align-items: flex-start;
             font: 15px system-ui, "DejaVu Sans", sans-serif; color: #1b1e2b; }}
      figure {{ margin: 0; }}
      img {{ display: block; border-radius: 12px;
             box-shadow: 0 10px 30px rgb(30 40 90 / 25%), 0 0 0 1px rgb(30 40 90 / 10%); }}
      figcaption {{ margin-top: 12px; text-align: center; color: #3b4160; }}
    </style><body>{panels}</body>"""
    width = 2 * 32 + sum(width for _, _, width, _ in shots) + 28 * (len(shots) - 1)
    context = await browser.new_context(viewport={"width": width, "height": 400})
    try:
        page = await context.new_page()
        await page.set_content(html)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        return await page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        await context.close()


async def test_two_browsers_chat_through_an_outage(
    make_server: Callable[..., Any], browser: Browser, session: aiohttp.ClientSession
) -> None:
    server = start_server(make_server)
    async with (
        TcpProxy(server.port) as proxy,
        chat_page(browser, server.url, "alice", LAPTOP) as alice,
        chat_page(browser, proxy.url, "bob", PHONE) as bob,
    ):
        # Both connect; presence shows both names on both pages.
        await alice.wait_open()
        await bob.wait_open()
        for page in (alice, bob):
            await expect(page.members).to_contain_text("alice")
            await expect(page.members).to_contain_text("bob")
            await expect(page.member_count).to_have_text("2")
        await expect(alice.input).to_have_attribute("maxlength", "2000")

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

        # Then it breaks. Alice keeps writing; Bob writes too, which stays pending.
        proxy.cut()
        await expect(bob.status).not_to_have_attribute("data-state", "open")
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
        assert alice.errors == [] and bob.errors == []

        await bob.input.focus()
        png = await save_screenshot(
            browser,
            ("alice", "on a laptop", LAPTOP[0], await alice.page.screenshot()),
            (
                "bob",
                "on a phone, after a dropped connection",
                PHONE[0],
                await bob.page.screenshot(),
            ),
        )
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


async def test_server_restart_reconnects_and_reports_the_gap(
    make_server: Callable[..., Any], browser: Browser
) -> None:
    # The memory broker forgets everything on restart, so `since` no longer matches: gap.
    first = start_server(make_server)
    async with chat_page(browser, first.url, "alice") as alice:
        await alice.wait_open()
        await alice.type_and_enter("Before the restart")
        await alice.expect_count(1)
        before = await alice.ids()

        await asyncio.to_thread(first.stop)  # drains: the page is closed with 1012
        await expect(alice.status).not_to_have_attribute("data-state", "open")
        await expect(alice.status).to_have_attribute("data-close-code", "1012")
        await asyncio.to_thread(start_server, make_server, port=first.port)
        await alice.wait_open(timeout=40)

        await expect(alice.list.get_by_test_id("gap")).to_have_count(1)
        await alice.type_and_enter("After the restart")
        await alice.expect_count(2)
        await expect(alice.messages.last).to_contain_text("After the restart")
        assert (await alice.ids())[:1] == before
        assert parse_qs(urlsplit(alice.frames.urls[-1]).query)["since"] == before
        assert alice.errors == []


async def test_name_is_asked_once_and_remembered(
    make_server: Callable[..., Any], browser: Browser
) -> None:
    server = start_server(make_server)
    async with chat_page(browser, server.url, None) as carol:
        name_input = carol.page.get_by_test_id("name-input")
        await expect(name_input).to_be_focused()
        await expect(carol.status).to_have_attribute("data-state", "closed")
        await name_input.press("Enter")  # empty: refused, with a message
        await expect(carol.page.get_by_role("alert")).to_have_text("Please enter a name.")
        await name_input.fill("  carol  ")
        await name_input.press("Enter")
        await carol.wait_open()
        await expect(carol.input).to_be_focused()
        await expect(carol.members.get_by_role("listitem")).to_have_count(1)
        await expect(carol.members).to_contain_text("carol")

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
    async with chat_page(browser, server.url, "dave") as dave:
        await dave.wait_open()
        texts = ["one", "two", "three"]
        for text in texts:
            await dave.type_and_enter(text)
        # The second frame finds the bucket empty; the error is shown and the message resent.
        await expect(dave.notice).to_contain_text("Slow down")
        await expect(dave.pending).to_have_count(0)
        assert await dave.texts() == texts
        assert [m["text"] for m in await history(session, server.url)] == texts
        await dave.frames.wait_for(
            lambda: any(f.get("code") == "rate_limited" for f in dave.frames.received),
            "a rate_limited error frame",
        )
        assert dave.errors == []
