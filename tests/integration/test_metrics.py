"""/metrics under real traffic: real servers, real clients, every catalogued series moving.

The slow-client disconnection is asserted in test_slow_consumer.py, worker aggregation in
test_workers.py, the exemplar in test_tracing.py; here one instance on each broker.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp

from tests.integration.conftest import parse_metric
from tests.support.client import ChatClient
from tests.support.redis import RedisServer
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

ROOM = "metered"


async def scrape(session: aiohttp.ClientSession, server: WebchatProcess) -> str:
    timeout = aiohttp.ClientTimeout(total=seconds(5))
    async with session.get(server.url + "/metrics", timeout=timeout) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


async def value(session: aiohttp.ClientSession, server: WebchatProcess, series: str) -> float:
    found = parse_metric(await scrape(session, server), series)
    assert found is not None, f"{series} missing"
    return found


async def until(
    session: aiohttp.ClientSession, server: WebchatProcess, series: str, wanted: float
) -> None:
    async def reached() -> bool:
        return parse_metric(await scrape(session, server), series) == wanted

    await poll(reached, 10, f"{series} == {wanted}")


async def refused_upgrade(session: aiohttp.ClientSession, url: str, **headers: str) -> int:
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **headers,
    }
    async with session.get(url, headers=upgrade) as response:
        return response.status


async def test_metrics_follow_connections_messages_and_deliveries(session: aiohttp.ClientSession):
    with WebchatProcess("--rate", "1", "--burst", "4") as server:
        text = await scrape(session, server)
        build = re.findall(
            r'^webchat_build_info\{python="[^"]+",version="([^"]+)"\} 1\.0$', text, re.M
        )
        assert build == ["0.1.0"], text
        assert parse_metric(text, "webchat_rooms_active") == 0

        # Refused upgrades, by the refusal's code.
        assert await refused_upgrade(session, server.ws_url + "?room=bad%20room") == 400
        assert await refused_upgrade(session, server.ws_url, Origin="https://evil.example") == 403
        assert await value(session, server, 'webchat_connections_total{status="bad_request"}') == 1
        assert (
            await value(session, server, 'webchat_connections_total{status="forbidden_origin"}')
            == 1
        )

        members = [
            await ChatClient.connect(session, server.ws_url, room=ROOM, name=name)
            for name in ("alice", "bob", "carol")
        ]
        loner = await ChatClient.connect(session, server.ws_url, room="alone", name="dave")
        assert await value(session, server, 'webchat_connections_total{status="accepted"}') == 4
        assert await value(session, server, "webchat_connected_users") == 4
        await until(session, server, "webchat_rooms_active", 2)  # sampled once a second

        alice = members[0]
        for text in ("one", "two"):
            await alice.send(text)
            for member in members:
                assert (await member.next_of("message"))["text"] == text
        await alice.send("one-again", nonce="n")
        await alice.next_of("message")
        # The echo of a duplicate is not a new message, and not a delivery.
        await alice.send("one-again", nonce="n")
        await alice.next_of("message")

        text = await scrape(session, server)
        assert parse_metric(text, "webchat_messages_total") == 3
        assert parse_metric(text, "webchat_message_latency_seconds_count") == 3
        # 3 messages to 3 members: 9 frames; one observation per message, not per member.
        assert parse_metric(text, "webchat_deliveries_total") == 9
        assert parse_metric(text, "webchat_delivery_latency_seconds_count") == 3
        assert parse_metric(text, "webchat_fanout_recipients_count") == 3
        assert parse_metric(text, 'webchat_fanout_recipients_bucket{le="2.0"}') == 0
        assert parse_metric(text, 'webchat_fanout_recipients_bucket{le="5.0"}') == 3
        # Plausible latencies on a loopback: each under 5 s even on a loaded machine, above 0.
        for name in ("webchat_delivery_latency_seconds", "webchat_message_latency_seconds"):
            assert parse_metric(text, f'{name}_bucket{{le="5.0"}}') == 3
            total = parse_metric(text, f"{name}_sum")
            assert total is not None and 0 < total < 15
        assert parse_metric(text, "webchat_send_buffer_bytes") is not None

        # Error frames by code; rate-limit abuse closes the connection 1008 and is counted.
        await loner.ws.send_str("{not json")
        assert (await loner.expect("error"))["code"] == "bad_json"
        assert await value(session, server, 'webchat_errors_total{type="bad_json"}') == 1
        for _ in range(3 * 4 + 4):
            await loner.ws.send_str(json.dumps({"type": "message", "text": "spam"}))
        assert await loner.closed(timeout=5) == 1008
        await until(session, server, 'webchat_disconnections_total{reason="rate_limit_abuse"}', 1)
        assert await value(session, server, 'webchat_errors_total{type="rate_limited"}') >= 12

        # A frame over --max-frame is a protocol error: closed 1009, counted as "error".
        big = await ChatClient.connect(session, server.ws_url, room="alone", name="big")
        await big.ws.send_str("x" * 17000)
        assert await big.closed(timeout=5) == 1009
        await until(session, server, 'webchat_disconnections_total{reason="error"}', 1)

        # A client that closes is a "client" disconnection; the gauges follow.
        await members[1].close()
        await until(session, server, 'webchat_disconnections_total{reason="client"}', 1)
        await until(session, server, "webchat_connected_users", 2)
        await until(session, server, "webchat_rooms_active", 1)

        # The loop-lag probe runs 10 times a second; on an idle loop the lag is small.
        text = await scrape(session, server)
        probes = parse_metric(text, "webchat_event_loop_lag_seconds_hist_count")
        assert probes is not None and probes >= 5
        lag = parse_metric(text, "webchat_event_loop_lag_seconds")
        assert lag is not None and 0 <= lag < seconds(1)
        assert parse_metric(text, 'webchat_errors_total{type="internal"}') == 0
        for member in (members[0], members[2]):
            await member.close()


async def test_redis_metrics_readiness_and_reconnects(
    redis_server: RedisServer, session: aiohttp.ClientSession
):
    with WebchatProcess("--redis-url", redis_server.url) as server:
        await until(session, server, "webchat_broker_ready", 1)
        alice = await ChatClient.connect(session, server.ws_url, room=ROOM, name="alice")
        bob = await ChatClient.connect(session, server.ws_url, room=ROOM, name="bob")
        await alice.send("via redis")
        for client in (alice, bob):
            assert (await client.next_of("message"))["text"] == "via redis"
        text = await scrape(session, server)
        ok = 'webchat_redis_operations_total{operation="%s",status="ok"}'
        assert parse_metric(text, ok % "publish") == 1
        assert parse_metric(text, 'webchat_redis_latency_seconds_count{operation="publish"}') == 1
        assert parse_metric(text, ok % "subscribe") == 1
        # Two joins and two welcomes' member listings, batched: at most one call each.
        assert 1 <= (parse_metric(text, ok % "presence_batch") or 0) <= 4
        assert (parse_metric(text, ok % "ping") or 0) >= 1
        assert (
            parse_metric(text, 'webchat_redis_operations_total{operation="publish",status="error"}')
            == 0
        )
        # Timed by Redis's clock (TIME in the publish script), observed once, on delivery.
        assert parse_metric(text, "webchat_delivery_latency_seconds_count") == 1
        assert parse_metric(text, 'webchat_delivery_latency_seconds_bucket{le="5.0"}') == 1
        assert parse_metric(text, "webchat_broker_reconnects_total") == 0

        redis_server.stop()
        await until(session, server, "webchat_broker_ready", 0)
        assert await refused_upgrade(session, server.ws_url) == 503
        assert await value(session, server, 'webchat_connections_total{status="unavailable"}') == 1
        await alice.send("while down")
        assert (await alice.expect("error", timeout=10))["code"] == "unavailable"
        text = await scrape(session, server)
        assert parse_metric(text, 'webchat_errors_total{type="unavailable"}') == 1
        for operation in ("ping", "publish"):
            failed = f'webchat_redis_operations_total{{operation="{operation}",status="error"}}'
            assert (parse_metric(text, failed) or 0) >= 1, failed

        redis_server.start()
        await until(session, server, "webchat_broker_ready", 1)
        assert await value(session, server, "webchat_broker_reconnects_total") == 1
        await asyncio.gather(alice.close(), bob.close())
