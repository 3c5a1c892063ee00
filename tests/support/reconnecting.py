"""A WebSocket chat client that reconnects like the browser client (frontend/app.js) does.

- After any close or failed attempt it waits a random time in [0, min(cap, base * 2**n)]
  (exponential backoff with full jitter) and reconnects with `since` = the last id it saw.
- Messages it writes go into an outbox with a nonce and stay there until the echo with that
  nonce comes back; after every reconnect (on `welcome`) the whole outbox is sent again with
  the same nonces, which the server deduplicates.
- A message answered `unavailable` or `rate_limited` (not accepted: the broker is away, or too
  fast) is sent again, with the whole outbox, after a backoff, as the browser's outbox does.
- Every id is kept once: `messages` holds the first copy of each id in arrival order,
  `duplicates` any later copy (a resend the server answers with the original frame is one).

The test owns the client: `await client.start()` returns after the first welcome, `wait`
waits (bounded) for a condition, `await client.stop()` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.support.timing import seconds


class ReconnectingClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        room: str,
        name: str,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
    ) -> None:
        self.session = session
        self.url = url
        self.room = room
        self.name = name
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.messages: list[dict[str, Any]] = []
        self.duplicates: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.welcomes: list[dict[str, Any]] = []
        self.gaps = 0
        self.close_codes: list[int | None] = []
        self.failed_attempts: list[str] = []
        self.last_id: str | None = None
        self.outbox: dict[str, str] = {}  # nonce -> text, oldest first, until acknowledged
        self.acked: dict[str, str] = {}  # nonce -> id
        self._seen: set[str] = set()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resend: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def state(self) -> str:
        """What the client has seen so far, for a timeout's message."""
        return (
            f"{len(self.messages)} messages, {len(self.duplicates)} duplicates, {self.gaps} gaps,"
            f" {len(self.welcomes)} welcomes, close codes {self.close_codes[-10:]},"
            f" failed attempts {self.failed_attempts[-3:]}, connected={self.connected}"
        )

    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]

    async def start(self, timeout: float = 10) -> ReconnectingClient:
        self._task = asyncio.create_task(self._run(), name=f"client {self.name}")
        await self.wait(lambda: bool(self.welcomes), timeout, "a welcome")
        return self

    async def stop(self) -> None:
        if self._resend is not None:
            self._resend.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def publish(self, text: str, nonce: str) -> None:
        """Queue a message; it is sent now if connected, else after the next welcome."""
        self.outbox[nonce] = text
        if self._ws is not None:
            await self._send(self._ws, nonce, text)

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until `predicate()` holds; fail after `timeout` (scaled) seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds(timeout)
        while not predicate():
            if self._task is not None and self._task.done():
                self._task.result()  # a crash of the client itself fails the test at once
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {what} within {timeout}s ({self.state()})")
            self._changed.clear()
            if predicate():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    # --- the connection loop ---------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, nonce: str, text: str) -> None:
        frame = json.dumps({"type": "message", "text": text, "nonce": nonce})
        # A send into a dying socket is not an error: the outbox resends it after a reconnect.
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(frame)

    async def _run(self) -> None:
        attempt = 0
        while True:
            params = {"room": self.room, "name": self.name}
            if self.last_id is not None:
                params["since"] = self.last_id
            try:
                ws = await asyncio.wait_for(
                    self.session.ws_connect(self.url, params=params, max_msg_size=0),
                    seconds(5),
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.failed_attempts.append(f"{type(exc).__name__}: {exc}")
                self._notify()
            else:
                try:
                    if await self._session(ws):
                        attempt = 0  # a welcome came: the next failure starts over
                finally:
                    self._ws = None
                    await ws.close()
                    self.close_codes.append(ws.close_code)
                    self._notify()
            ceiling = min(self.backoff_cap, self.backoff_base * 2**attempt)
            attempt = min(attempt + 1, 30)
            await asyncio.sleep(random.uniform(0, ceiling))  # the backoff itself, not a sync

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Read one connection until it ends; True if it got as far as a welcome."""
        welcomed = False
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            kind = frame.get("type")
            if kind == "welcome":
                assert frame["name"] == self.name, frame
                welcomed = True
                self.welcomes.append(frame)
                self._ws = ws
                for nonce, text in list(self.outbox.items()):
                    await self._send(ws, nonce, text)
            elif kind == "message":
                self._message(frame)
            elif kind == "presence":
                self.presence.append(frame)
            elif kind == "gap":
                self.gaps += 1
            elif kind == "error":
                self.errors.append(frame)
                if frame.get("code") in ("unavailable", "rate_limited") and self._resend is None:
                    self._resend = asyncio.ensure_future(self._resend_later(ws))
            self._notify()
        return welcomed

    async def _resend_later(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The outbox again after a backoff, on the same connection if it is still the one."""
        try:
            await asyncio.sleep(random.uniform(self.backoff_base, self.backoff_cap))  # backoff
            if self._ws is ws:
                for nonce, text in list(self.outbox.items()):
                    await self._send(ws, nonce, text)
        finally:
            self._resend = None

    def _message(self, frame: dict[str, Any]) -> None:
        if frame["id"] in self._seen:
            self.duplicates.append(frame)
        else:
            self._seen.add(frame["id"])
            self.messages.append(frame)
            self.last_id = frame["id"]
        nonce = frame.get("nonce")
        if frame["name"] == self.name and nonce in self.outbox:
            del self.outbox[nonce]
            self.acked[nonce] = frame["id"]
