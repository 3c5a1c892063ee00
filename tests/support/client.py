"""A real WebSocket chat client for tests (aiohttp), with waits that always time out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.support.timing import seconds


class ChatClient:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws
        self.welcome: dict[str, Any] | None = None

    @classmethod
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        *,
        room: str | None = "lobby",
        name: str | None = None,
        since: str | None = None,
        history: int | str | None = None,
        key: str | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        expect_welcome: bool = True,
    ) -> ChatClient:
        given = (("room", room), ("name", name), ("since", since), ("history", history))
        extra = (("key", key), ("token", token))
        params = {k: str(v) for k, v in (*given, *extra) if v is not None}
        ws = await session.ws_connect(
            url, params=params, headers=headers, autoping=True, max_msg_size=0
        )
        client = cls(session, ws)
        if expect_welcome:
            client.welcome = await client.expect("welcome")
        return client

    async def send(self, text: str, nonce: str | None = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"type": "message", "text": text, **extra}
        if nonce is not None:
            frame["nonce"] = nonce
        await self.ws.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        """The next JSON frame; fails on a close or after `timeout` (scaled) seconds."""
        msg = await asyncio.wait_for(self.ws.receive(), seconds(timeout))
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(
                f"expected a text frame, got {msg.type.name} {msg.data!r} {msg.extra!r}"
            )
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def expect(self, kind: str, timeout: float = 5) -> dict[str, Any]:
        """The next frame, which must be of type `kind` (presence frames are not skipped)."""
        frame = await self.recv(timeout)
        assert frame.get("type") == kind, f"expected {kind}, got {frame}"
        return frame

    async def next_of(self, kind: str, timeout: float = 5) -> dict[str, Any]:
        """The next frame of type `kind`, skipping frames of other types."""
        deadline = asyncio.get_running_loop().time() + seconds(timeout)
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no {kind} frame within {timeout}s")
            frame = await self.recv(left / seconds(1))
            if frame.get("type") == kind:
                return frame

    async def messages(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The next `count` message frames, skipping presence frames."""
        return [await self.next_of("message", timeout) for _ in range(count)]

    async def closed(self, timeout: float = 10) -> int | None:
        """Read until the server closes; return the close code."""

        async def read_to_close() -> int | None:
            while True:
                msg = await self.ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                ):
                    return self.ws.close_code
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return self.ws.close_code

        return await asyncio.wait_for(read_to_close(), seconds(timeout))

    async def close(self) -> None:
        await self.ws.close()
