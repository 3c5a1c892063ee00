"""The browser client in authenticated mode, the way a deployment runs it: nginx (the
production nginx.conf) serves the chat and, on the same origin, the application's token
endpoint (examples/token_backend.py). The page signs in with no name prompt, refreshes its
token on the open socket before it expires, and after a 4001 (its token expired while the
token endpoint was down) comes back with a fresh token, missing no message."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from examples.token_backend import make_app
from playwright.async_api import Browser, expect

from tests.e2e.chat import ChatPage, new_context, start_server
from tests.e2e.conftest import ms
from tests.support.client import ChatClient
from tests.support.nginx import Directive, NginxServer, load, render
from tests.support.servers import free_port
from tests.support.timing import seconds
from tests.support.tokens import TestKeys, claims

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

TTL = 6  # seconds: the page refreshes 1.5 s before expiry (a quarter of the lifetime)


class Backend:
    """The example token endpoint on loopback, with a switch that makes it answer 503."""

    def __init__(self, secret: bytes) -> None:
        self.down = False
        self.app = make_app(secret, ttl=TTL)
        self.port = free_port()

        @web.middleware
        async def outage(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if self.down and request.path == "/auth/token":
                return web.Response(status=503, text="token service down")
            return await handler(request)

        self.app.middlewares.append(outage)


@pytest.fixture
async def backend(keys: TestKeys) -> AsyncIterator[Backend]:
    served = Backend(keys.secret)
    runner = web.AppRunner(served.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", served.port).start()
    yield served
    await runner.cleanup()


def front(chat_port: int, backend_port: int) -> NginxServer:
    """nginx.conf for the chat, plus what a deployment adds: /auth/ to the app's backend."""
    nginx = NginxServer([chat_port])
    config = render(load(), port=nginx.port, upstream_ports=[chat_port], prefix=nginx.dir)
    block = config.server.block
    assert block is not None
    proxy = Directive("proxy_pass", [f"http://127.0.0.1:{backend_port}"])
    block.append(Directive("location", ["/auth/"], [proxy]))
    nginx.conf_path.write_text(config.text())
    return nginx.start()


async def test_sign_in_refresh_and_back_after_4001_missing_nothing(
    make_server, browser: Browser, backend: Backend, keys: TestKeys
):
    server = start_server(
        make_server,
        "--auth-secret-file", str(keys.secret_file),
        "--auth-token-url", "/auth/token",
        "--auth-leeway", "0",
    )  # fmt: skip
    nginx = await asyncio.to_thread(front, server.port, backend.port)
    bob_token = keys.hs(claims("bob", ttl=300, name="Bob"))
    try:
        async with aiohttp.ClientSession() as session:
            # Activity elsewhere: the room list shows alice only the rooms she may use.
            for room in ("lobby", "hidden"):
                client = await ChatClient.connect(
                    session, server.ws_url, room=room, token=bob_token
                )
                await client.send(f"bob in {room}")
                await client.expect("message")
                await client.close()
            bob = await ChatClient.connect(session, server.ws_url, room="team-x", token=bob_token)
            carol = keys.hs(claims("carol", ttl=300, name="Alice"))
            namesake = await ChatClient.connect(session, server.ws_url, room="team-x", token=carol)
            context = await new_context(browser)
            try:
                await chat(context, nginx.url, bob, namesake, backend)
            finally:
                await context.close()
    finally:
        await asyncio.to_thread(nginx.cleanup)


async def chat(  # type: ignore[no-untyped-def]
    context, url: str, bob: ChatClient, namesake: ChatClient, backend: Backend
) -> None:
    page = await context.new_page()
    alice = ChatPage("Alice", page)
    await page.goto(f"{url}/auth/login?user=alice&next=/%3Froom%3Dteam-x")
    await alice.wait_open()
    await expect(alice.status).to_contain_text("Connected as Alice")
    await expect(alice.name_input).to_be_hidden()  # no name prompt in this mode
    query = parse_qs(urlsplit(alice.frames.urls[0]).query)
    assert "token" in query and "name" not in query and "key" not in query
    welcome = next(f for f in alice.frames.received if f["type"] == "welcome")
    assert welcome["user"] == "alice" and set(welcome["users"]) == {"alice", "bob", "carol"}
    await expect(alice.members).to_contain_text("Bob")
    # Carol is called Alice too: two members of one name (told apart by user), one of them me.
    await expect(alice.member_count).to_have_text("3")
    await expect(alice.members.get_by_role("listitem").filter(has_text="Alice")).to_have_count(2)
    await expect(alice.members.locator(".me")).to_have_count(1)
    await expect(alice.active_rooms.filter(has_text="lobby")).to_have_count(1)
    await expect(alice.active_rooms.filter(has_text="hidden")).to_have_count(0)

    await alice.type_and_enter("hello from the page")
    echo = await bob.next_of("message")
    assert (echo["name"], echo["user"]) == ("Alice", "alice")
    await expect(alice.messages.last).to_have_class(re.compile("own"))
    await namesake.send("I am the other Alice")  # the same name, not the page's own message
    await expect(alice.messages.last).to_contain_text("I am the other Alice")
    await expect(alice.messages.last).not_to_have_class(re.compile("own"))
    await bob.send("hello page")
    await expect(alice.messages.last).to_contain_text("hello page")

    # The page refreshes its token on the open socket, twice: past the first token's expiry
    # on one and the same connection.
    def refreshed() -> int:
        return sum(1 for f in alice.frames.received if f["type"] == "refreshed")

    await alice.frames.wait_for(lambda: refreshed() >= 2, "two refreshed frames")
    sent = [f["token"] for f in alice.frames.sent if f.get("type") == "refresh"]
    assert len(set(sent)) >= 2 and query["token"][0] not in sent
    assert len(alice.frames.urls) == 1
    await expect(alice.status).not_to_have_attribute("data-close-code", re.compile("."))

    # The token endpoint goes down: the next refresh fails, the token expires, 4001.
    backend.down = True
    await expect(alice.status).to_have_attribute(
        "data-close-code", "4001", timeout=ms(seconds(3 * TTL))
    )
    await bob.send("while you were away")
    while (await bob.next_of("message"))["text"] != "while you were away":
        pass  # earlier messages; its echo says it was accepted while the page was away
    backend.down = False
    await alice.wait_open(timeout=20)
    back = parse_qs(urlsplit(alice.frames.urls[-1]).query)
    assert back["token"] != query["token"] and "since" in back
    await expect(alice.messages.last).to_contain_text("while you were away")
    await expect(alice.messages.filter(has_text="while you were away")).to_have_count(1)
    await expect(alice.list.get_by_test_id("gap")).to_have_count(0)
    assert await alice.texts() == [
        "hello from the page", "I am the other Alice", "hello page", "while you were away",
    ]  # fmt: skip
    assert alice.errors == []
