"""Shared fixtures: real webchat processes on free loopback ports, on each broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from tests.support.servers import WebchatProcess

# Brokers the contract suite runs against; the Redis broker issue adds "redis".
BROKERS = ["memory"]


def broker_args(broker: str, request: pytest.FixtureRequest) -> list[str]:
    """CLI flags that put a webchat process on `broker`."""
    if broker == "memory":
        return []
    raise AssertionError(f"unknown broker {broker}")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeServer = Callable[..., WebchatProcess]


@pytest.fixture
def make_server(broker: str, request: pytest.FixtureRequest) -> Iterator[MakeServer]:
    """Start webchat processes on the parametrized broker; all are stopped after the test."""
    started: list[WebchatProcess] = []

    def make(*args: str, wait_ready: bool = True, **kwargs: object) -> WebchatProcess:
        proc = WebchatProcess(*broker_args(broker, request), *args, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start(wait_ready=wait_ready)

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def server(make_server: MakeServer) -> WebchatProcess:
    """One webchat process with a short presence grace, so leave frames come quickly."""
    return make_server("--presence-grace", "0.3")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
