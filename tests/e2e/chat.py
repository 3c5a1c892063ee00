"""Browser pages for the end-to-end tests, addressed only through the client's data-testid
hooks, roles and labels: what a person (or a screen reader) finds on the page."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    WebSocket,
    expect,
)

from tests.e2e.conftest import ms
from tests.support.timing import seconds

LAPTOP = (1180, 720)
PHONE = (400, 720)

# Playwright's assertions retry until this timeout (their default is 5 s, unscaled).
expect.set_options(timeout=ms(seconds(10)))


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
    """One person's browser tab."""

    def __init__(self, name: str, page: Page, phone: bool = False) -> None:
        self.name = name
        self.page = page
        self.phone = phone
        self.frames = Frames(page)
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._on_console)
        self.status = page.get_by_test_id("status")
        self.input = page.get_by_test_id("message-input")
        self.send_button = page.get_by_test_id("send-button")
        self.counter = page.get_by_test_id("counter")
        self.conversation = page.locator("[data-testid=conversation]:not([hidden])")
        self.list = self.conversation.get_by_test_id("messages")
        self.messages = self.list.get_by_test_id("message")
        self.pending = self.conversation.get_by_test_id("pending-message")
        self.history_start = self.conversation.get_by_test_id("history-start")
        self.members = page.get_by_test_id("members")
        self.member_count = page.get_by_test_id("member-count")
        self.members_panel = page.get_by_test_id("members-panel")
        self.notices = page.get_by_test_id("notice")
        self.announcer = page.get_by_test_id("announcer")
        self.room_name = page.get_by_test_id("room-name")
        self.rooms_panel = page.get_by_test_id("rooms-panel")
        self.rooms_toggle = page.get_by_test_id("rooms-toggle")
        self.joined_rooms = page.get_by_test_id("joined-room")
        self.active_rooms = page.get_by_test_id("active-room")
        self.room_input = page.get_by_test_id("room-input")
        self.room_error = page.get_by_test_id("room-error")
        self.name_input = page.get_by_test_id("name-input")
        self.name_error = page.get_by_test_id("name-error")
        self.new_messages = page.get_by_test_id("new-messages")

    def _on_console(self, msg: ConsoleMessage) -> None:
        # Refused connections are logged by the browser itself; anything else is a fault.
        expected = ("WebSocket connection to", "Failed to load resource")
        csp = "Content Security Policy" in msg.text
        if csp or (msg.type == "error" and not msg.text.startswith(expected)):
            self.errors.append(f"console: {msg.text}")

    async def wait_open(self, timeout: float = 10) -> None:
        await expect(self.status).to_have_attribute(
            "data-state", "open", timeout=ms(seconds(timeout))
        )

    async def type_and_enter(self, text: str) -> None:
        """Write and send as a person would: Enter on a laptop, the Send button on a phone
        (where Enter makes a new line)."""
        await self.input.fill(text)
        if self.phone:
            await self.send_button.click()
        else:
            await self.input.press("Enter")

    async def ids(self) -> list[str]:
        return await self.messages.evaluate_all("els => els.map(e => e.dataset.id)")

    async def texts(self) -> list[str]:
        return await self.messages.locator(".text").all_text_contents()

    async def expect_count(self, count: int) -> None:
        await expect(self.messages).to_have_count(count)

    def room_link(self, room: str) -> Locator:
        return self.rooms_panel.locator(f"a[data-room='{room}']")

    async def scroll_top(self) -> float:
        return float(await self.conversation.evaluate("e => e.scrollTop"))


async def new_context(
    browser: Browser,
    size: tuple[int, int] = LAPTOP,
    scheme: str = "light",
    **options: Any,
) -> BrowserContext:
    phone = size[0] <= PHONE[0]
    context = await browser.new_context(
        viewport={"width": size[0], "height": size[1]},
        locale="en-GB",
        timezone_id="Europe/Amsterdam",
        color_scheme=scheme,  # type: ignore[arg-type]
        has_touch=phone,
        is_mobile=phone,
        **options,
    )
    context.set_default_timeout(ms(seconds(10)))
    return context


@contextlib.asynccontextmanager
async def chat_page(
    browser: Browser,
    base_url: str,
    name: str | None,
    room: str = "release",
    size: tuple[int, int] = LAPTOP,
    scheme: str = "light",
    **options: Any,
) -> AsyncIterator[ChatPage]:
    """A fresh browser profile showing the room; without `name` the page asks for one."""
    context = await new_context(browser, size, scheme, **options)
    try:
        page = await context.new_page()
        chat = ChatPage(name or "", page, phone=size[0] <= PHONE[0])
        query = {"room": room} if name is None else {"room": room, "name": name}
        await page.goto(f"{base_url}/?{urlencode(query)}")
        yield chat
    finally:
        await context.close()


def start_server(make_server: Callable[..., Any], *args: str, **kwargs: Any) -> Any:
    """A webchat process that closes its clients at once on SIGTERM (no drain delay)."""
    return make_server("--drain-delay", "0", "--drain-spread", "0", *args, **kwargs)
