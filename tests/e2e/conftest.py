"""Browser fixtures: Debian's Chromium driven by Playwright, closed after each test.

Playwright's own browser downloads are never used (`playwright install` is not needed): the
system Chromium is launched by path, headless, with its background services turned off so a
test makes no connection besides those to the loopback servers it starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

from tests.support.servers import require_binary
from tests.support.timing import seconds

CHROMIUM_ARGS = [
    "--no-sandbox",  # tests may run as root in a container, where the sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def ms(secs: float) -> float:
    """Playwright counts timeouts in milliseconds."""
    return secs * 1000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=require_binary("chromium"),
            args=CHROMIUM_ARGS,
            timeout=ms(seconds(30)),
        )
        try:
            yield chromium
        finally:
            await chromium.close()
