"""The Redis broker on a Redis Cluster: rooms spread over shards, sharded pub/sub, failover.

Three masters with a replica each on loopback ports (tests/support/redis_ha.py). The contract
suite also runs on the cluster (tests/conftest.py BROKERS); these tests check what only a
cluster has: where a room's keys and channel live, and a master failover inside the cluster.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from tests.conftest import MakeServer
from tests.support.redis import RedisServer, fetch_history, wait_status
from tests.support.redis_ha import RedisClusterGroup
from tests.support.redis_traffic import (
    FAST,
    TRAFFIC,
    assert_failover_lost_nothing,
    connect,
    recovered,
    traffic_on_two,
)


@pytest.fixture
def broker() -> str:
    return "cluster"


def rooms_on_each_master(cluster: RedisClusterGroup) -> dict[int, str]:
    """A room name per master port, whose slot (its hash tag `{room}`) that master serves."""
    ranges = cluster.slots()
    found: dict[int, str] = {}
    for n in itertools.count():
        room = f"room{n}"
        slot = key_slot(room.encode())
        port = next(p for lo, hi, p, _ in ranges if lo <= slot <= hi)
        found.setdefault(port, room)
        if len(found) == len({p for _, _, p, _ in ranges}):
            return found
    raise AssertionError("unreachable")


async def test_rooms_live_on_their_own_shard_with_sharded_pub_sub(
    make_server: MakeServer, cluster_redis: RedisClusterGroup, session
):
    a, b = make_server(*FAST), make_server(*FAST)
    rooms = rooms_on_each_master(cluster_redis)
    assert len(rooms) == 3
    for port, room in rooms.items():
        sender = await connect(session, a, "alice", room=room)
        watcher = await connect(session, b, "bob", room=room)
        await sender.client.send(f"hello {room}", nonce="n1")
        await watcher.wait(lambda w=watcher: len(w.messages) == 1, 5, "the message")
        [server] = [node for node in cluster_redis.nodes if node.port == port]
        # The room's history is on its master, and its channel is a shard channel there:
        # an SSUBSCRIBE of instance b, not a classic channel broadcast to every node.
        assert server.command("XLEN", f"wc:{{{room}}}:h") == 1
        assert f"wc:{{{room}}}:c".encode() in server.command("PUBSUB", "SHARDCHANNELS")
        assert server.command("PUBSUB", "CHANNELS", "wc:*") == []
        for other in cluster_redis.masters():
            if other.port != port:
                assert f"wc:{{{room}}}:c".encode() not in other.command("PUBSUB", "SHARDCHANNELS")
        assert [m["text"] for m in await fetch_history(session, b.url, room)] == [f"hello {room}"]
        await sender.stop()
        await watcher.stop()


@pytest.fixture
def cluster_redis() -> Iterator[RedisClusterGroup]:
    """A cluster of its own for each test here: the failover test kills one of its masters."""
    cluster = RedisClusterGroup().start()
    yield cluster
    cluster.cleanup()


async def test_master_failover_loses_no_acknowledged_message(
    make_server: MakeServer, cluster_redis: RedisClusterGroup, session
):
    acked = ("--redis-replicas-ack", "1")
    a, b = make_server(*TRAFFIC, *acked), make_server(*TRAFFIC, *acked)
    room = "r"
    recs, senders = await traffic_on_two(session, a, b, room)

    old: RedisServer = cluster_redis.master_of(f"wc:{{{room}}}:h")
    loop = asyncio.get_running_loop()
    before = [len(sender.accepted) for sender in senders]
    killed_at = loop.time()
    slot = cluster_redis.kill(old)  # SIGKILL
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 503, timeout=3)
    new = await asyncio.to_thread(cluster_redis.wait_failover, slot, old)
    assert new is not old
    # The promoted replica has no replica of its own until the dead node comes back as one:
    # until then WAIT 1 cannot succeed and sends are answered `unavailable`, never lost.
    await asyncio.to_thread(cluster_redis.revive, old)
    await asyncio.gather(*(s.until(accepted=1, timeout=30) for s in senders))
    resumed = loop.time() - killed_at
    await recovered(session, (a, b), senders)
    for server in (a, b):  # history reads wait for a replica's confirmation: 503 until then
        await wait_status(session, server.url + f"/api/rooms/{room}/messages?limit=1", 200, 10)
    print(f"\ncluster failover: delivery resumed {resumed:.2f} s after the master was killed")

    await assert_failover_lost_nothing(session, a, b, recs, senders, before, room)
    for rec in recs:
        await rec.stop()
