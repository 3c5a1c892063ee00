"""`--redis-replicas-ack N`: a message is acknowledged only once N replicas have it.

Redis replicates asynchronously, so a master that dies can take its last writes with it, and
a failover would drop messages whose senders already had their echo. `WAIT N timeout` blocks
the connection it is sent on until N replicas acknowledge every write that connection made
before, so the publish script and WAIT go out together on one connection held from the pool
(one round trip); on a cluster, a connection to the master of the room's slot. Redis 7.0 has
no WAITAOF (7.2 adds it: the fsync of the append-only file); WAIT is what protects against
losing a machine, which is what a failover is for.

The echo is the acknowledgement, and every member (the sender included) receives a message
from the broker's subscription: so a message published this way says so in its payload
(`"w":N`), subscribers hold it, and the publisher releases it with a commit once WAIT has
confirmed it (redis_subscriber.py, redis_rooms.py). A WAIT that times out leaves the message
written but unconfirmed: the sender gets `unavailable` and may resend with the same nonce;
the resend is deduped, and `confirm` (a WAIT behind a fresh write to the room's shard) tells
whether the original is now on the replicas.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import MovedError, NoScriptError, ResponseError

from webchat.broker.base import BrokerUnavailable
from webchat.broker.redis_codec import barrier_key, channel, encode_commit
from webchat.broker.redis_connect import SOCKET_TIMEOUT, RedisClient, ShardedCluster

ACK_TIMEOUT: Final = 1.0  # WAIT's timeout: a write not on its replicas by then is `unavailable`
BARRIER_TTL_MS: Final = 10_000  # the write `confirm` makes for WAIT to wait for


class NotConfirmed(BrokerUnavailable):
    """Fewer replicas than asked acknowledged the write within ACK_TIMEOUT: it is on the master
    (and may reach the replicas later), but a failover could still lose it."""


class ReplicaAcks:
    """Writes followed by WAIT on the same connection, and commits. Owned by RedisBroker."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    async def script(
        self, script: AsyncScript, keys: list[str], args: list[Any], replicas: int
    ) -> tuple[Any, int]:
        """Run `script` and WAIT for `replicas` replicas on one connection to the master of
        `keys[0]`: the script's reply and how many replicas acknowledged it."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._with_wait(keys[0], command, replicas)
        except NoScriptError:
            # A new master's script cache is empty (Redis 7 does not replicate it).
            await self._client.script_load(script.script)
            return await self._with_wait(keys[0], command, replicas)

    async def confirm(self, room: str, replicas: int) -> None:
        """Return once `replicas` replicas have every write made to `room`'s shard before this
        call (a write of its own, then WAIT); NotConfirmed if they do not within ACK_TIMEOUT.

        Replication is one ordered stream per master: acknowledging this write acknowledges
        everything before it, whichever connection made it.
        """
        key = barrier_key(room)
        _, acked = await self._with_wait(key, ("SET", key, "1", "PX", BARRIER_TTL_MS), replicas)
        if acked < replicas:
            raise NotConfirmed(
                f"{acked} of {replicas} replicas confirmed within {ACK_TIMEOUT:g}s in {room}"
            )

    async def commit(self, room: str, message_id: str) -> None:
        """Tell the room's subscribers that everything up to `message_id` is confirmed."""
        await self._client.publish(channel(room), encode_commit(message_id))

    async def _with_wait(
        self, key: str, command: tuple[Any, ...], replicas: int
    ) -> tuple[Any, int]:
        async with self._connection(key) as conn:
            wait = ("WAIT", replicas, int(ACK_TIMEOUT * 1000))
            await conn.send_packed_command(conn.pack_commands([command, wait]))
            try:
                reply = await conn.read_response()
            except ResponseError:
                # An error reply (NOSCRIPT, READONLY, MOVED...): WAIT's reply still comes.
                await conn.read_response(timeout=ACK_TIMEOUT + SOCKET_TIMEOUT)
                raise
            acked = await conn.read_response(timeout=ACK_TIMEOUT + SOCKET_TIMEOUT)
            return reply, int(acked)

    @contextlib.asynccontextmanager
    async def _connection(self, key: str) -> AsyncIterator[AbstractConnection]:
        """A connection to the master of `key`'s slot, held; closed if anything failed, since
        replies may be left unread on it."""
        client = self._client
        if isinstance(client, ShardedCluster):
            await client.initialize()
            node = client.get_node_from_key(key)
            if node is None:
                raise BrokerUnavailable(f"no cluster node serves {key}")
            conn = node.acquire_connection()
            try:
                yield conn
            except MovedError as exc:
                await client.nodes_manager.move_slot(exc)  # resharded: learn the new owner
                await conn.disconnect()
                raise
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                node.release(conn)
            return
        pool = client.connection_pool
        pooled: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            yield pooled
        except BaseException:
            await pooled.disconnect()
            raise
        finally:
            await pool.release(pooled)
