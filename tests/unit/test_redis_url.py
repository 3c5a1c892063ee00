"""redis_url.py: what each --redis-url form names, and that credentials stay out of logs."""

from __future__ import annotations

import re

import pytest

from webchat.redis_url import RedisTarget, parse_redis_url


def test_single():
    target = parse_redis_url(" redis://:pw@h:6380/3 ")
    assert (target.kind, target.db, target.nodes) == ("single", 3, ())
    assert target.describe() == "redis://h:6380"
    assert target.address == ("h", 6380)
    assert parse_redis_url("unix:///run/redis.sock").describe() == "unix:///run/redis.sock"


def test_sentinel():
    target = parse_redis_url("redis+sentinel://:s%40cret@h1:26379,[::1]:26380/mymaster/2")
    assert target == RedisTarget(
        "sentinel",
        "redis+sentinel://:s%40cret@h1:26379,[::1]:26380/mymaster/2",
        (("h1", 26379), ("::1", 26380)),
        "mymaster",
        2,
        None,
        "s@cret",
    )
    assert target.describe() == "redis+sentinel://h1:26379,[::1]:26380/mymaster/2"
    assert "cret" not in target.describe()
    assert target.address == ("h1", 26379)
    assert parse_redis_url("redis+sentinel://h:1/m").db == 0


def test_cluster():
    target = parse_redis_url("REDIS+CLUSTER://user:pw@a:7000,b:7001")
    assert (target.kind, target.nodes, target.username, target.password) == (
        "cluster",
        (("a", 7000), ("b", 7001)),
        "user",
        "pw",
    )
    assert target.describe() == "redis+cluster://a:7000,b:7001"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:26379", "/SERVICE"),
        ("redis+sentinel://h/m", "host:port"),
        ("redis+sentinel://h:99999/m", "from 1 to 65535"),
        ("redis+cluster://h:7000/2", "no databases"),
        ("redis+cluster://pw@h:7000", ":password@"),
        ("redis+cluster://", "names no cluster seed node"),
        ("http://h", "expected a redis://"),
        ("redis+sentinel://h:1/m?x=1", "no query"),
    ],
)
def test_refusals_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=re.escape(says)) as info:
        parse_redis_url(url)
    assert "\n" not in str(info.value)
