"""Helpers for the conformance suite: real clients against real servers, every wait bounded.

To show that a frame does NOT arrive, a client sends a later marker message: the next frame
each watcher receives must be that marker, since the server sends frames in order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any

import aiohttp

from tests.support.client import ChatClient
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

# What a browser sends to open a WebSocket; a plain GET with these headers lets the test
# read the body of a refusal, which aiohttp's ws_connect does not expose.
UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}

_markers = itertools.count()


def id_key(message_id: str) -> tuple[int, int]:
    ms, seq = message_id.split("-")
    return int(ms), int(seq)


async def connect(
    session: aiohttp.ClientSession,
    server: WebchatProcess,
    name: str | None,
    room: str | None = "lobby",
    **kwargs: Any,
) -> ChatClient:
    return await asyncio.wait_for(
        ChatClient.connect(session, server.ws_url, room=room, name=name, **kwargs), seconds(10)
    )


async def send_raw(client: ChatClient, data: str | dict[str, Any]) -> None:
    """Send one text frame; a dict is encoded as compact UTF-8 JSON (no \\u escapes)."""
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    await client.ws.send_str(data)


async def say(client: ChatClient, text: str, nonce: str | None = None) -> dict[str, Any]:
    """Send a message and return its echo (the acknowledgement), skipping presence frames."""
    await client.send(text, nonce=nonce)
    frame = await client.next_of("message")
    assert frame["text"] == text and frame["name"] == client_name(client), frame
    return frame


def client_name(client: ChatClient) -> str:
    assert client.welcome is not None
    return str(client.welcome["name"])


async def messages(client: ChatClient, count: int) -> list[dict[str, Any]]:
    """The next `count` message frames; presence frames are skipped, anything else fails."""
    got = []
    while len(got) < count:
        frame = await client.recv(timeout=20)
        if frame.get("type") == "presence":
            continue
        assert frame.get("type") == "message", f"expected a message, got {frame}"
        got.append(frame)
    return got


async def expect_error(client: ChatClient, code: str) -> dict[str, Any]:
    frame = await client.recv()
    assert frame.get("type") == "error" and frame.get("code") == code, f"want {code}: {frame}"
    assert isinstance(frame.get("message"), str) and frame["message"], frame
    return frame


async def nothing_else(
    sender: ChatClient, *watchers: ChatClient, skip_presence: bool = False
) -> dict[str, Any]:
    """Assert the next frame of `sender` and every watcher is a fresh marker from `sender`.

    With `skip_presence`, presence frames before the marker are allowed (and dropped).
    """
    text = f"marker-{next(_markers)}"
    await sender.send(text)
    frames = []
    for client in (sender, *watchers):
        frame = await client.recv()
        while skip_presence and frame.get("type") == "presence":
            frame = await client.recv()
        frames.append(frame)
    for frame in frames:
        assert frame.get("type") == "message" and frame.get("text") == text, (
            f"expected marker {text!r} next, got {frame}"
        )
    return frames[0]


async def receive_until_close(client: ChatClient, timeout: float = 10) -> tuple[list[Any], int]:
    """Every text frame until the server closes, and the close code."""
    frames: list[Any] = []

    async def read() -> int:
        while True:
            msg = await client.ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                frames.append(json.loads(msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                assert client.ws.close_code is not None
                return client.ws.close_code
            else:
                raise AssertionError(f"unexpected {msg.type.name} {msg.data!r}")

    code = await asyncio.wait_for(read(), seconds(timeout))
    return frames, code


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""

    async def fetch() -> tuple[int, str, str]:
        async with session.get(url, **kwargs) as response:
            return response.status, response.content_type, await response.text()

    return await asyncio.wait_for(fetch(), seconds(10))


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    status, content_type, body = await get(session, url, **kwargs)
    assert content_type == "application/json", (status, content_type, body)
    return status, json.loads(body)


async def upgrade_refused(
    session: aiohttp.ClientSession,
    server: WebchatProcess,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Try an upgrade that must be refused: (status, JSON body), before any 101."""
    status, body = await get_json(
        session,
        f"{server.url}/ws",
        params=params or {},
        headers={**UPGRADE_HEADERS, **(headers or {})},
    )
    assert status != 101
    return status, body


def assert_error_body(body: Any, code: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


async def history(
    session: aiohttp.ClientSession, server: WebchatProcess, room: str, **params: str
) -> dict[str, Any]:
    status, body = await get_json(session, f"{server.url}/api/rooms/{room}/messages", params=params)
    assert status == 200, body
    return dict(body)


async def metric(session: aiohttp.ClientSession, server: WebchatProcess, name: str) -> float:
    status, _, body = await get(session, f"{server.url}/metrics")
    assert status == 200
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    assert match, f"{name} not in /metrics:\n{body}"
    return float(match[1])


async def until_metric(
    session: aiohttp.ClientSession, server: WebchatProcess, name: str, value: float
) -> None:
    """Wait (bounded) until a metric reaches `value`: for effects no frame reports."""

    async def reached() -> bool:
        return await metric(session, server, name) == value

    await poll(reached, 10, f"{name} == {value}")
