"""Shared fixtures: real webchat processes on free loopback ports, on each broker."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from tests.support.redis import RedisServer
from tests.support.redis_ha import RedisClusterGroup, SentinelGroup
from tests.support.servers import WebchatProcess
from tests.support.timing import seconds
from tests.support.tokens import TestKeys

# Brokers the contract suite runs against: one parametrized suite, so all behave alike.
BROKERS = ["memory", "redis", "cluster"]
# Brokers of the tests that need several processes on Redis (a dead instance, say).
REDIS_BROKERS = ["redis", "cluster"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scale pytest-timeout's per-test limit by WEBCHAT_TEST_UNIT, as every wait in a test is.

    Unscaled, the limit (pyproject's `timeout`, PYTEST_TIMEOUT or --timeout, as pytest-timeout
    ranks them) would kill a test on a loaded machine while its own scaled waits are still
    running. A test's own `timeout` marker is left alone: it says `seconds(...)` itself.
    """
    limit = config.getoption("timeout")
    if limit is None:
        limit = os.environ.get("PYTEST_TIMEOUT") or config.getini("timeout") or None
    if limit is None:
        return
    scaled = pytest.mark.timeout(seconds(float(limit)))
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(scaled)


def broker_url(broker: str, request: pytest.FixtureRequest) -> str | None:
    """The `--redis-url` that puts a webchat process on `broker` (None: the memory broker).

    On Redis, every process of one test shares the test's Redis (one server, a Sentinel
    group or a cluster), so two processes of a test are two instances of one service.
    """
    if broker == "memory":
        return None
    if broker == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        return redis_server.url
    if broker == "sentinel":
        sentinel: SentinelGroup = request.getfixturevalue("sentinel_redis")
        return sentinel.url()
    if broker == "cluster":
        cluster: RedisClusterGroup = request.getfixturevalue("cluster_redis")
        return cluster.url()
    raise AssertionError(f"unknown broker {broker}")


def broker_args(broker: str, request: pytest.FixtureRequest) -> list[str]:
    """CLI flags that put a webchat process on `broker`."""
    url = broker_url(broker, request)
    return [] if url is None else ["--redis-url", url]


@pytest.fixture
def redis_appendonly() -> bool:
    """Whether the test's redis-server keeps an AOF; override to restart it with its data."""
    return False


@pytest.fixture
def redis_server(redis_appendonly: bool) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, started for this test and removed after it."""
    server = RedisServer(appendonly=redis_appendonly).start()
    yield server
    server.cleanup()


@pytest.fixture
def sentinel_redis() -> Iterator[SentinelGroup]:
    """A master and two replicas (with a password) watched by three Sentinels, for one test:
    the tests on it kill its master."""
    group = SentinelGroup(password="s3cret").start()
    yield group
    group.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterGroup]:
    """Three masters with a replica each, shared by the tests that only use them."""
    cluster = RedisClusterGroup().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture
def cluster_redis(redis_cluster: RedisClusterGroup) -> RedisClusterGroup:
    """The shared cluster, emptied for this test."""
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeServer = Callable[..., WebchatProcess]


@pytest.fixture
def make_server(broker: str, request: pytest.FixtureRequest) -> Iterator[MakeServer]:
    """Start webchat processes on the parametrized broker; all are stopped after the test."""
    started: list[WebchatProcess] = []
    args_for_broker = broker_args(broker, request)  # Redis starts first, so it stops last

    def make(*args: str, wait_ready: bool = True, **kwargs: object) -> WebchatProcess:
        proc = WebchatProcess(*args_for_broker, *args, **kwargs)  # type: ignore[arg-type]
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


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> TestKeys:
    """Signing keys made for this run (authenticated mode): a secret, RSA and EC key pairs."""
    return TestKeys(tmp_path_factory.mktemp("keys"))
