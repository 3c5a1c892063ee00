"""Keep-alive for every socket from one task, instead of a timer per connection.

aiohttp's own heartbeat keeps a timer per socket, re-armed on every received frame, and fires
the pings of clients that connected together in the same instant (a loop stall of ~130 ms at
5,000 sockets). Here one loop pings each connection every `interval` seconds at its own random
phase, and drops a connection that has sent nothing, not even a pong, for two intervals. The
pings also keep proxies (nginx's proxy_read_timeout) from closing idle sockets.

The sweep already visits every connection once a tick, so it also sums the bytes held in
their send buffers for the metrics (`on_sweep`), instead of a second walk or a per-write
update on the fan-out path; it closes (1013) a connection whose unsent data has waited
longer than --send-timeout (Connection.check_age), so the send buffer is bounded by age as
well as by bytes at the cost of one comparison per connection per tick; and it closes
connections whose token expired (authenticated mode, code 4001) instead of a timer per
socket: at most one tick (1 s) after the expiry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Final

from webchat.connection import CLOSE_TOKEN_EXPIRED, Connection

log = logging.getLogger(__name__)

PING_FRAME: Final = b"\x89\x00"  # an unmasked, empty ping (RFC 6455 5.5.2)


async def run_heartbeat(
    connections: Callable[[], Iterable[Connection]],
    interval: float,
    on_sweep: Callable[[int], None] | None = None,
    send_timeout: float | None = None,
) -> None:
    """Ping due connections, drop silent ones and close expired ones, until cancelled.

    After each sweep, `on_sweep` gets the bytes held for all connections (Connection.buffered).
    With `send_timeout`, a connection whose unsent data is older than that is closed with
    1013 (Connection.check_age): the send buffer is bounded by age as well as by bytes.
    """
    loop = asyncio.get_running_loop()
    tick = min(1.0, interval / 4)
    silent_limit = 2 * interval + tick
    while True:
        await asyncio.sleep(tick)
        now = loop.time()
        buffered = 0
        try:
            for conn in connections():
                buffered += conn.buffered
                if send_timeout is not None:
                    conn.check_age(now, send_timeout)
                if conn.closing:
                    continue
                if conn.expires is not None and now >= conn.expires:
                    conn.close(CLOSE_TOKEN_EXPIRED, "token expired", why="token_expired")
                elif now - conn.last_seen > silent_limit:
                    log.debug("dropping a connection silent for %.0f s", now - conn.last_seen)
                    conn.drop()
                elif now >= conn.next_ping:
                    conn.next_ping = now + interval
                    conn.ping_pending = True
                    conn.send(PING_FRAME)
            if on_sweep is not None:
                on_sweep(buffered)
        except Exception:  # a bug here must not stop keep-alive for everyone
            log.exception("heartbeat sweep failed")
