"""Keep-alive: the server pings every connection and drops one that stays silent."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.timing import seconds


async def test_pings_keep_a_responsive_client_and_drop_a_silent_one(make_server, session):
    server = make_server("--heartbeat", "1")
    url = server.ws_url + "?room=hb"
    # autoping=False: the test sees the server's pings and decides whether to answer them.
    alive = await session.ws_connect(url + "&name=alive", autoping=False)
    silent = await session.ws_connect(url + "&name=silent", autoping=False)

    async def answer_pings(ws: aiohttp.ClientWebSocketResponse, wanted: int) -> int:
        pings = 0
        while pings < wanted:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.PING:
                pings += 1
                await ws.pong(msg.data)
            else:
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
        return pings

    async def ignore_until_closed(ws: aiohttp.ClientWebSocketResponse) -> int:
        pings = 0
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.PING:
                pings += 1
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return pings

    silent_pings, alive_pings = await asyncio.wait_for(
        asyncio.gather(ignore_until_closed(silent), answer_pings(alive, 4)), seconds(15)
    )
    assert silent_pings >= 1, "the silent client was dropped without being pinged"
    assert alive_pings == 4
    assert not alive.closed, "a client that answers pings must stay connected"
    # The responsive client still works after several intervals.
    await alive.send_json({"type": "message", "text": "still here"})
    while True:
        msg = await asyncio.wait_for(alive.receive(), seconds(5))
        if msg.type is aiohttp.WSMsgType.TEXT and '"still here"' in msg.data:
            break
    await alive.close()
    await silent.close()


async def test_a_client_ping_is_answered_with_a_pong(server, session):
    ws = await session.ws_connect(server.ws_url + "?room=hb&name=p", autoping=False)
    await ws.ping(b"are you there")
    while True:
        msg = await asyncio.wait_for(ws.receive(), seconds(5))
        if msg.type is aiohttp.WSMsgType.PONG:
            assert msg.data == b"are you there"
            break
    await ws.close()
