"""The Redis broker's command clients, for each topology `--redis-url` can name.

- One Redis (`redis://`, `rediss://`, `unix://`): a blocking pool of connections to it.
- A master watched by Sentinels (`redis+sentinel://`): redis-py's Sentinel support. Every new
  connection asks the Sentinels where the master is, so after a failover the pool reconnects
  to the promoted replica; a connection still open to a demoted master is dropped on its first
  READONLY answer.
- A Redis Cluster (`redis+cluster://`): redis-py's cluster client, which routes each command
  to the master of its key's slot and relearns the slots after MOVED or a lost node. Room keys
  carry the room as a hash tag (`wc:{room}:h`), so one room's keys, scripts and channel live
  in one slot, on one shard.

Every client has short timeouts and at most one immediate retry on a lost connection (never
on a timeout: a script that timed out may have run), so a command fails fast and the caller
answers `unavailable`.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterDownError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from webchat.broker.redis_scripts import sharded
from webchat.redis_url import RedisTarget

SOCKET_TIMEOUT: Final = 1.0  # every command; a slower Redis counts as unavailable

RedisClient: TypeAlias = "Redis | ShardedCluster"


class SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery, with the blocking pool's bounded wait for a free connection
    (redis-py's SentinelConnectionPool fails at once when every connection is in use)."""


class ClusterScript(AsyncScript):
    """A script on a Redis Cluster: EVALSHA as usual, but EVAL inside a pipeline.

    redis-py refuses EVALSHA in cluster pipelines, and a replica promoted by a failover starts
    with an empty script cache (Redis 7 does not replicate it); EVAL carries the script itself.
    """

    async def __call__(
        self,
        keys: Any = None,
        args: Any = None,
        client: Any = None,
    ) -> Any:
        if isinstance(client, ClusterPipeline):
            keys, args = list(keys or ()), list(args or ())
            return client.execute_command("EVAL", self.script, len(keys), *keys, *args)
        return await super().__call__(keys, args, client)


class ShardedCluster(RedisCluster):
    """The cluster client for webchat, where every channel is a shard channel.

    Scripts registered here publish with SPUBLISH instead of PUBLISH, and `publish` is
    SPUBLISH: a message goes to the shard of its room's slot only, not over the cluster bus to
    every node (Redis 7 sharded pub/sub). Commands are retried once on a lost connection or a
    cluster in failover (after relearning the slots), never on a timeout.
    """

    # Narrower than redis-py's on purpose: no retry on a timeout.
    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]

    def register_script(self, script: Any) -> ClusterScript:  # type: ignore[override]  # async
        return ClusterScript(self, sharded(script))

    async def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        return await self.spublish(channel, message)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        # Typed as loosely as a Pipeline's client: scripts run in it (ClusterScript).
        return super().pipeline(transaction, shard_hint)


def command_client(target: RedisTarget, size: int, wait: float, client_name: str) -> RedisClient:
    """A client for the broker's commands: at most `size` connections (per node on a
    cluster), waiting up to `wait` s for a free one where the pool allows it."""
    common: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 0,
        "client_name": client_name,
        # RESP2 works with every Redis and its replies do not change with redis-py's default.
        "protocol": 2,
    }
    # One immediate retry on a connection error, for a pooled connection that went stale
    # while Redis restarted or failed over. Never on a timeout: the script may have run.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if target.kind == "cluster":
        return ShardedCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            max_connections=size,
            retry=Retry(NoBackoff(), 1),
            # The shards that are up keep serving their rooms while another fails over.
            require_full_coverage=False,
            **common,
        )
    if target.kind == "sentinel":
        sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py lacks a hint
            list(target.nodes),
            # Sentinels are asked without the data nodes' password, with the same timeouts.
            sentinel_kwargs={
                "socket_timeout": SOCKET_TIMEOUT,
                "socket_connect_timeout": SOCKET_TIMEOUT,
                "protocol": 2,
            },
        )
        master: Redis = sentinels.master_for(
            target.service,
            connection_pool_class=SentinelBlockingPool,
            db=target.db,
            username=target.username,
            password=target.password,
            max_connections=size,
            timeout=wait,
            retry=retry,
            **common,
        )
        return master
    # A `?protocol=3` in the URL still wins over the default above.
    pool = BlockingConnectionPool.from_url(
        target.url, max_connections=size, timeout=wait, retry=retry, **common
    )
    return Redis.from_pool(pool)


async def close_client(client: RedisClient) -> None:
    """Close the client's connections, and for a Sentinel master its Sentinel connections."""
    await client.aclose()
    if isinstance(client, Redis) and isinstance(client.connection_pool, SentinelConnectionPool):
        await client.connection_pool.sentinel_manager.aclose()
