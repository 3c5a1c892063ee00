"""frontend/text.js, the client's copy of the protocol's rules, run in Chromium and compared
with the server's own functions (protocol.py) on the same inputs: the client refuses exactly
what the server would refuse, and counts as the server counts."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.e2e.chat import new_context, start_server
from webchat.protocol import WHITE_SPACE, ProtocolError, validate_name, validate_room

pytestmark = pytest.mark.parametrize("broker", ["memory"], indirect=True)

EVERY_CF = "".join(c for c in map(chr, range(0x110000)) if unicodedata.category(c) == "Cf")
SAMPLES = [
    "alice",
    "  alice\t",
    "\u3000alice\u00a0",
    "\ufeffalice",  # U+FEFF is a format character, not White_Space: JS's trim() would strip it
    "\x85alice\x85",  # NEL is White_Space: JS's trim() would keep it
    "\x1calice",
    "a\u200bb",
    "\u200b",
    "\u05e9\u05dc\u05d5\u05dd",
    "😀" * 32,
    "😀" * 33,
    "x" * 33,
    " " + "y" * 32 + " ",
    "a\nb",
    "e\u0301",
    "",
    " ",
    WHITE_SPACE,
]


async def rules_page(browser: Browser, url: str) -> tuple[Any, Page]:
    context = await new_context(browser)
    page = await context.new_page()
    await page.goto(f"{url}/healthz")  # the origin, without starting the client
    await page.evaluate("async () => { window.rules = await import('/static/text.js'); }")
    return context, page


def server_name(raw: str) -> str | None:
    try:
        return validate_name(raw)
    except ProtocolError:
        return None


async def test_names_texts_and_rooms_follow_the_servers_rules(make_server, browser):
    server = start_server(make_server)
    context, page = await rules_page(browser, server.url)
    try:
        names = await page.evaluate("xs => xs.map(x => rules.validName(x)[0])", SAMPLES)
        assert names == [server_name(s) for s in SAMPLES]
        trimmed = await page.evaluate("xs => xs.map(x => rules.trimWhiteSpace(x))", SAMPLES)
        assert trimmed == [s.strip(WHITE_SPACE) for s in SAMPLES]
        counts = await page.evaluate("xs => xs.map(x => rules.codePoints(x))", SAMPLES)
        assert counts == [len(s) for s in SAMPLES]
        # Every format character the server knows is refused in a name, and alone as a text.
        refused = await page.evaluate(
            "cs => [...cs].filter(c => rules.validName('a' + c + 'b')[0] === null).length",
            EVERY_CF,
        )
        assert refused == len(EVERY_CF)
        assert await page.evaluate("t => rules.textProblem(t, 2000)", EVERY_CF[:100]) != ""
        problems = await page.evaluate(
            "xs => xs.map(([t, m]) => rules.textProblem(t, m))",
            [["hi", 2000], ["😀" * 3, 3], ["😀" * 4, 3], [" \u3000 ", 5], ["\u200bx", 5]],
        )
        assert problems[0] == problems[1] == problems[4] == ""
        assert problems[2] == "1 characters over the limit of 3."
        assert problems[3] == "empty"
        rooms = ["lobby", "x" * 64, "x" * 65, "a b", "caf\u00e9", "-", "", "a.b", "A-z_0-9"]
        ok = await page.evaluate("xs => xs.map(x => rules.roomProblem(x) === '')", rooms)
        for room, accepted in zip(rooms, ok, strict=True):
            try:
                validate_room(room)
                server_accepts = True
            except ProtocolError:
                server_accepts = False
            assert accepted is server_accepts, room
    finally:
        await context.close()


async def test_links_keys_and_backoff(make_server, browser):
    server = start_server(make_server)
    context, page = await rules_page(browser, server.url)
    try:
        parts = await page.evaluate(
            "xs => xs.map(x => rules.linkify(x))",
            [
                "see https://example.com/a?b=1.",
                "(http://x.example/wiki/A_(b)) end",
                "javascript:alert(1) and ftp://x and <https://y.example>",
                "no link here",
            ],
        )
        assert parts[0] == [
            {"text": "see "},
            {"text": "https://example.com/a?b=1", "href": "https://example.com/a?b=1"},
            {"text": "."},
        ]
        assert parts[1][1] == {
            "text": "http://x.example/wiki/A_(b)",
            "href": "http://x.example/wiki/A_(b)",
        }
        assert [p.get("href") for p in parts[2] if "href" in p] == ["https://y.example/"]
        assert parts[3] == [{"text": "no link here"}]
        keys = await page.evaluate("() => [rules.makeKey(), rules.makeKey()]")
        assert keys[0] != keys[1]
        assert all(len(k) == 43 and set(k) <= set(KEY_CHARS) for k in keys)
        offline = [0, 500, 2000, 3000, 10_000, 59_000, 60_000, 3_600_000]
        ceilings = await page.evaluate("xs => xs.map(rules.backoffCeilingMs)", offline)
        # The first retries within a second; then half the time offline so far; 30 s at most.
        assert ceilings == [1000, 1000, 1000, 1500, 5000, 29_500, 30_000, 30_000]
        # A 503's Retry-After (seconds or an HTTP date) is a floor, jittered up to twice it.
        waits = await page.evaluate(
            """() => [
              rules.retryAfterMs("2"), rules.retryAfterMs(" 30 "), rules.retryAfterMs(""),
              rules.retryAfterMs(null), rules.retryAfterMs("soon"), rules.retryAfterMs("-1"),
              rules.retryAfterMs("86400"),
              rules.retryAfterMs("Wed, 21 Oct 2015 07:28:10 GMT", Date.UTC(2015, 9, 21, 7, 28)),
              rules.reconnectDelayMs(0, 0, () => 0.5), rules.reconnectDelayMs(0, 2000, () => 0),
              rules.reconnectDelayMs(0, 2000, () => 0.999),
              rules.reconnectDelayMs(3_600_000, 2000, () => 0.5),
            ]"""
        )
        assert waits == [2000, 30_000, 0, 0, 0, 0, 300_000, 10_000, 500, 2000, 3998, 15_000]
    finally:
        await context.close()


KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
