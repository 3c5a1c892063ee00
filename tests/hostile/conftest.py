"""Fixtures of the hostile suite: webchat processes to attack, each stopped after its test.

Issue 12's attacks (and issue 8's slow clients and overload), each as a test against a real
process that asserts the bound: memory (RSS), descriptors, status codes, close codes, and a
log without tracebacks. Bounds, not timings: the figures are measured by loadtest/hostile.py
(docs/security.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from tests.support.servers import WebchatProcess

Start = Callable[..., WebchatProcess]


@pytest.fixture
def start() -> Iterator[Start]:
    """`start(*flags, nofile=None)`: a webchat process on the in-memory broker (`nofile`: its
    file-descriptor limit)."""
    started: list[WebchatProcess] = []

    def make(*flags: str, nofile: int | None = None) -> WebchatProcess:
        # No drain delay: each test stops its process at the end, nothing to drain for.
        server = WebchatProcess("--drain-delay", "0", "--drain-spread", "0", *flags, nofile=nofile)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without aiohttp's cap of 100 connections."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s
