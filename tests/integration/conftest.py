"""Fixtures for tests against real webchat processes: a wide client session, metric reads."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.support.servers import WebchatProcess
from tests.support.timing import seconds

ReadMetric = Callable[[WebchatProcess, str], Awaitable[float | None]]


@pytest.fixture
async def wide_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session without aiohttp's default cap of 100 connections (tests open 100+ sockets)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


def parse_metric(text: str, series: str) -> float | None:
    """The value of one series (`name` or `name{label="value"}`) in Prometheus text format."""
    pattern = re.compile(rf"^{re.escape(series)} (\S+)$", re.MULTILINE)
    match = pattern.search(text)
    return float(match[1]) if match else None


@pytest.fixture
def read_metric(wide_session: aiohttp.ClientSession) -> ReadMetric:
    """`await read_metric(server, 'webchat_connected_users')`: the value, or None if absent."""

    async def read(server: WebchatProcess, series: str) -> float | None:
        timeout = aiohttp.ClientTimeout(total=seconds(5))
        async with wide_session.get(server.url + "/metrics", timeout=timeout) as response:
            assert response.status == 200
            return parse_metric(await response.text(), series)

    return read
