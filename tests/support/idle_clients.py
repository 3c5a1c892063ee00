"""Idle WebSocket clients in a process of their own, for a test that counts the server's objects.

    python -m tests.support.idle_clients PORT TARGET COUNT

Opens COUNT connections to 127.0.0.1:PORT (`GET TARGET`, RawWebSocket), reads each one's
welcome, prints `ready`, and holds them until its standard input closes; then it exits and the
sockets go with it. They send nothing, and read (and drop) what comes, presence frames say, so
that nothing waits in the server for them. Clients in the test's own process would be counted
with the server's objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from tests.support.rawws import RawWebSocket

BATCH = 50  # connections opened at a time


async def _welcomed(port: int, target: str) -> RawWebSocket:
    ws = await RawWebSocket.connect("127.0.0.1", port, target)
    welcome = (await ws.next_frame(timeout=30)).json()
    assert welcome["type"] == "welcome", welcome
    return ws


async def _drain(ws: RawWebSocket) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        while await loop.sock_recv(ws.sock, 65536):
            pass


async def main(port: int, target: str, count: int) -> None:
    held: list[RawWebSocket] = []
    while len(held) < count:
        batch = min(BATCH, count - len(held))
        held += await asyncio.gather(*(_welcomed(port, target) for _ in range(batch)))
    readers = [asyncio.create_task(_drain(ws)) for ws in held]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for ws in held:
        ws.sock.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
