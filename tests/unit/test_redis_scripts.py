"""The script variants for a Redis Cluster and for --redis-replicas-ack, derived from the text of
the scripts: a change to a script that breaks the derivation fails here, not on a cluster."""

from __future__ import annotations

import pytest

from webchat.broker import redis_scripts
from webchat.broker.redis_scripts import PUBLISH, awaiting_replicas, sharded

SCRIPTS = {
    name: value
    for name, value in vars(redis_scripts).items()
    if name.isupper() and isinstance(value, str) and "redis.call" in value
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_publishes_on_its_shard_only_on_a_cluster(name):
    script = sharded(SCRIPTS[name])
    assert "'PUBLISH'" not in script
    assert script.count("'SPUBLISH'") == SCRIPTS[name].count("'PUBLISH'")


def test_the_publish_script_marks_messages_that_wait_for_replicas():
    assert "event.w = 2\n" in awaiting_replicas(PUBLISH, 2)
    assert "event.w" not in PUBLISH
    with pytest.raises(AssertionError):
        awaiting_replicas("return 1", 1)


def test_a_publish_written_otherwise_is_refused():
    with pytest.raises(AssertionError):
        sharded("redis.call('PUBLISH' , KEYS[1], 'x')")  # a space the rewrite does not expect
