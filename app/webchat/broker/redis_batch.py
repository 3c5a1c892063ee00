"""Sending many calls of one Lua script in one pipeline, for the broker's batched work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from webchat.broker.redis_connect import RedisClient, ShardedCluster


async def evalsha_pipelined(
    client: RedisClient,
    script: AsyncScript,
    calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    first: Sequence[Sequence[Any]] = (),
) -> list[Any]:
    """Run `script` once per (keys, args) in one pipeline; per call its reply or its error.

    `first`: other commands (execute_command's arguments) sent ahead of the calls, in the
    same pipeline, so Redis runs them before; their replies (or errors) come first.

    EVALSHA goes straight into the pipeline: redis-py's Script in a pipeline would ask SCRIPT
    EXISTS first, a round trip per pipeline. After a NOSCRIPT (Redis restarted, its script
    cache empty) the script is loaded and the calls that got it, which did not run, are sent
    again. Errors of single calls (a script error) are returned in their place, not raised;
    a connection error is raised.
    """
    results: list[Any] = [None] * len(calls)
    cluster = isinstance(client, ShardedCluster)
    todo = list(range(len(calls)))
    head: list[Any] = []
    for attempt in range(2):
        # As a context: its connection goes back to the pool even when cancelled.
        async with client.pipeline(transaction=False) as pipe:
            if not attempt:
                for command in first:
                    pipe.execute_command(*command)
            for i in todo:
                keys, args = calls[i]
                if cluster:  # redis-py refuses EVALSHA in a cluster pipeline (ClusterScript)
                    pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
                else:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
        if not attempt:
            head, replies = replies[: len(first)], replies[len(first) :]
        for i, reply in zip(todo, replies, strict=True):
            results[i] = reply
        todo = [i for i in todo if isinstance(results[i], NoScriptError)]
        if not todo or attempt:
            break
        script.sha = await client.script_load(script.script)
    return head + results
