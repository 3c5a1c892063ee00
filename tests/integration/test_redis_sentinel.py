"""The Redis broker on a Sentinel-watched master: a failover under traffic loses nothing.

A master, two replicas and three Sentinels run on loopback ports (tests/support/redis_ha.py),
with Sentinel's timeouts set low (down after 1 s). Two instances reach them through
`redis+sentinel://`, with `--redis-replicas-ack 1`: a message is acknowledged (echoed) only
once a replica has it, so the replica Sentinel promotes has every acknowledged message.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import MakeServer
from tests.support.redis import wait_status
from tests.support.redis_ha import SentinelGroup
from tests.support.redis_traffic import (
    TRAFFIC,
    assert_failover_lost_nothing,
    recovered,
    traffic_on_two,
)


@pytest.fixture
def broker() -> str:
    return "sentinel"


async def test_master_killed_mid_traffic_loses_no_acknowledged_message(
    make_server: MakeServer, sentinel_redis: SentinelGroup, session
):
    acked = ("--redis-replicas-ack", "1")
    a, b = make_server(*TRAFFIC, *acked), make_server(*TRAFFIC, *acked)
    recs, senders = await traffic_on_two(session, a, b)

    old = sentinel_redis.current_master()
    loop = asyncio.get_running_loop()
    before = [len(sender.accepted) for sender in senders]
    killed_at = loop.time()
    old.kill()  # SIGKILL: no goodbye to the replicas, the Sentinels or the clients
    for server in (a, b):
        await wait_status(session, server.url + "/readyz", 503, timeout=3)
    new = await asyncio.to_thread(sentinel_redis.wait_failover, old.port)
    assert new is not old
    # Delivery resumes: each sender gets an echo for a message sent after the kill.
    await asyncio.gather(*(s.until(accepted=1, timeout=30) for s in senders))
    resumed = loop.time() - killed_at
    await recovered(session, (a, b), senders)
    # Sentinel goes on reconfiguring for a while (the remaining replica follows the new master,
    # clients are disconnected once more); history reads wait for a replica's confirmation,
    # so they answer 503 until it is in sync.
    [remaining] = [s for s in sentinel_redis.servers if s not in (old, new)]
    await asyncio.to_thread(sentinel_redis.wait_in_sync, remaining)
    for server in (a, b):
        await wait_status(session, server.url + "/api/rooms/r/messages?limit=1", 200, timeout=10)
    print(f"\nSentinel failover: delivery resumed {resumed:.2f} s after the master was killed")

    await assert_failover_lost_nothing(session, a, b, recs, senders, before)
    for rec in recs:
        await rec.stop()
