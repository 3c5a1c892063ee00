"""How many sockets this process may hold, derived from its file-descriptor limit.

A process at its descriptor limit cannot accept (asyncio then fails every accept), cannot open
a Redis connection and cannot write a file. webchat therefore stays below the limit: WebSocket
upgrades beyond `Budget.websockets` are answered 503 `unavailable`, and accepted sockets beyond
`Budget.sockets` (the WebSockets plus headroom for plain HTTP: the page, the API, the 503
answers themselves) are closed as soon as they are accepted. `RESERVE` descriptors are left
for everything that is not a client: Redis connections, listening sockets, epoll, metrics files.

Pure arithmetic except `raise_descriptor_limit`, which reads (and raises) the process's limit.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from typing import Final

RESERVE: Final = 128  # descriptors that are not client sockets
# RESERVE holds the Redis connections of the default --redis-pool (64, + 9 of the broker's
# own); a larger pool takes the difference from the clients' share.
REDIS_POOL_IN_RESERVE: Final = 64
MIN_HEADROOM: Final = 16  # plain HTTP sockets beyond the WebSockets, at least...
HEADROOM_SHARE: Final = 10  # ... or a tenth of the WebSockets
UNLIMITED: Final = 1 << 20  # what "no hard limit" is raised to (Linux's default nr_open)


@dataclass(frozen=True, slots=True)
class Budget:
    websockets: int  # upgrades beyond this many open WebSockets get 503
    sockets: int  # accepted sockets beyond this many are closed at once
    reserve: int = RESERVE  # descriptors that are not client sockets

    @property
    def descriptors(self) -> int:
        """Descriptors this budget needs: every socket plus the reserve."""
        return self.sockets + self.reserve


def _headroom(websockets: int) -> int:
    return max(MIN_HEADROOM, websockets // HEADROOM_SHARE)


def budget(max_connections: int, nofile: int, redis_pool: int = 0) -> Budget:
    """The caps for `--max-connections` (0: derive it) under a descriptor limit of `nofile`,
    with `redis_pool` (--redis-pool; 0 for the memory broker) Redis connections.

    Raises ValueError, naming the limit, if it cannot fit.
    """
    reserve = RESERVE + max(0, redis_pool - REDIS_POOL_IN_RESERVE)
    if max_connections:
        needed = Budget(max_connections, max_connections + _headroom(max_connections), reserve)
        if needed.descriptors > nofile:
            raise ValueError(
                f"{max_connections} connections need about {needed.descriptors} file "
                f"descriptors, but the limit is {nofile} (raise it: ulimit -n, or "
                "LimitNOFILE= in the systemd unit)"
            )
        return needed
    usable = nofile - reserve
    websockets = usable * HEADROOM_SHARE // (HEADROOM_SHARE + 1)
    websockets = min(websockets, usable - MIN_HEADROOM)
    if websockets < 1:
        raise ValueError(
            f"the file-descriptor limit {nofile} is too low; webchat needs at least "
            f"{reserve + MIN_HEADROOM + 1} (ulimit -n)"
        )
    return Budget(websockets, usable, reserve)


def descriptor_limit() -> int:
    """This process's soft descriptor limit (what it may open now)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; return the soft limit.

    The soft limit is often 1024 for compatibility with select(); webchat uses epoll, and its
    connection caps follow from the limit, so it takes what the administrator allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # not allowed here: keep the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft
