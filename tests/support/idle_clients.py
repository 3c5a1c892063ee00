"""Idle WebSocket clients in a process of their own, for a test that counts the server's objects.

    python -m tests.support.idle_clients PORT TARGET COUNT

Opens COUNT connections to 127.0.0.1:PORT (`GET TARGET`, RawWebSocket), reads each one's
welcome, prints `ready`, and holds them, reading nothing more, until its standard input closes;
then it exits and the sockets go with it. Clients in the test's own process would be counted
with the server's objects.
"""

from __future__ import annotations

import asyncio
import sys

from tests.support.rawws import RawWebSocket

BATCH = 50  # connections opened at a time


async def _welcomed(port: int, target: str) -> RawWebSocket:
    ws = await RawWebSocket.connect("127.0.0.1", port, target)
    welcome = (await ws.next_frame(timeout=30)).json()
    assert welcome["type"] == "welcome", welcome
    return ws


async def main(port: int, target: str, count: int) -> None:
    held: list[RawWebSocket] = []
    while len(held) < count:
        batch = min(BATCH, count - len(held))
        held += await asyncio.gather(*(_welcomed(port, target) for _ in range(batch)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for ws in held:
        ws.sock.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
