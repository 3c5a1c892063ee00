"""Traces over real OTLP/HTTP: one message followed from its sender through Redis to every instance.

Two instances share one real Redis: A is one process, B runs two workers. Both export to an
OTLP/HTTP receiver in this test (tests/support/otlp.py, decoding with opentelemetry-proto),
switched on by the standard variables only. For a message sent by a client of A and received by
a client of B, the receiver must hold the PRODUCER span from A, a CONSUMER span on A and on B
(children of the producer), and the Redis call under the producer; B's /metrics, scraped as
OpenMetrics, must carry the message's trace id as the delivery-latency exemplar (shared between
B's workers). With tracing off (no endpoint, or OTEL_SDK_DISABLED=true) nothing is sent and no
exporter thread runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import ChatClient
from tests.support.otlp import CLIENT, CONSUMER, PRODUCER, SERVER, OtlpReceiver, ReceivedSpan
from tests.support.redis import RedisServer
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

ROOM = "traced"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = await OtlpReceiver().start()
    yield otlp
    await otlp.stop()


def otel_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export soon, so the test waits little
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        **extra,
    }


@pytest.fixture
def processes() -> Iterator[list[WebchatProcess]]:
    started: list[WebchatProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start(processes: list[WebchatProcess], *args: str, env: dict[str, str]) -> WebchatProcess:
    proc = WebchatProcess(*args, env=env)
    processes.append(proc)
    return proc.start()


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def threads(pid: int) -> int:
    """How many threads the process runs. Python 3.11 does not give the OS its thread names
    (the SDK's "OtelBatchSpanRecordProcessor" shows as "webchat"), so the test counts: a
    webchat process runs its event loop on its only thread; with tracing on, the batch span
    processor's exporter thread is the second."""
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


async def worker_pids(server: WebchatProcess, count: int) -> set[int]:
    assert server.proc is not None
    parent = server.proc.pid

    def webchat_children() -> set[int] | None:
        pids = {
            p
            for p in children(parent)
            if b"multiprocessing.spawn" in Path(f"/proc/{p}/cmdline").read_bytes()
            and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()
        }
        return pids if len(pids) == count else None

    return await poll(webchat_children, 15, f"{count} workers")


def trace_of(spans: list[ReceivedSpan], message_id: str) -> dict[str, object] | None:
    """The producer of `message_id`, its consumers and Redis calls, once all have arrived."""
    producers = [
        s
        for s in spans
        if s.kind == PRODUCER and s.attributes.get("messaging.message.id") == message_id
    ]
    if not producers:
        return None
    (producer,) = producers
    related = [s for s in spans if s.trace_id == producer.trace_id]
    consumers = [s for s in related if s.kind == CONSUMER]
    redis = [s for s in related if s.kind == CLIENT and s.parent_span_id == producer.span_id]
    pids = {s.resource["process.pid"] for s in consumers}
    if len(pids) < 2 or not redis:
        return None
    return {"producer": producer, "consumers": consumers, "redis": redis}


async def test_one_message_is_traced_from_a_through_redis_to_a_and_b(
    redis_server: RedisServer,
    receiver: OtlpReceiver,
    processes: list[WebchatProcess],
    session: aiohttp.ClientSession,
):
    redis = ("--redis-url", redis_server.url)
    a = start(processes, *redis, env=otel_env(receiver, OTEL_SERVICE_NAME="chat-a"))
    b = start(processes, *redis, "--workers", "2", env=otel_env(receiver))
    assert a.proc is not None and b.proc is not None
    b_workers = await worker_pids(b, 2)

    alice = await ChatClient.connect(session, a.ws_url, room=ROOM, name="alice")
    bob = await ChatClient.connect(session, b.ws_url, room=ROOM, name="bob")
    # Both see the room from the start: a first message that both receive proves it.
    await alice.send("warm-up")
    await alice.next_of("message")
    await bob.next_of("message")

    await alice.send("hello through redis", nonce="t-1")
    echo = await alice.next_of("message")
    got = await bob.next_of("message")
    assert got == echo
    message_id = echo["id"]

    found = await receiver.wait_for(
        lambda spans: trace_of(spans, message_id), 20, f"the trace of message {message_id}"
    )
    producer: ReceivedSpan = found["producer"]  # type: ignore[assignment]
    consumers: list[ReceivedSpan] = found["consumers"]  # type: ignore[assignment]
    redis_calls: list[ReceivedSpan] = found["redis"]  # type: ignore[assignment]

    # The producer: accepted on A, a root of its own trace, messaging conventions.
    assert producer.name == "send" and producer.parent_span_id == ""
    assert producer.resource["process.pid"] == a.proc.pid
    assert producer.resource["service.name"] == "chat-a"
    assert producer.resource["deployment.environment.name"] == "test"
    assert producer.resource["host.name"] == os.uname().nodename
    node_a = producer.resource["service.instance.id"]
    assert producer.attributes["messaging.system"] == "redis"
    assert producer.attributes["messaging.operation.type"] == "send"
    assert producer.attributes["messaging.destination.name"] == ROOM

    # The Redis publish script is a CLIENT span under it.
    (script,) = redis_calls
    assert script.name == "EVALSHA" and script.attributes["db.system.name"] == "redis"
    assert script.attributes["server.port"] == redis_server.port
    assert producer.start_ns <= script.start_ns <= script.end_ns <= producer.end_ns

    # One CONSUMER span per instance that delivered it (A, and B's worker holding bob),
    # each a child of the producer, with its recipients and plausible timings.
    by_pid = {s.resource["process.pid"]: s for s in consumers}
    assert len(by_pid) == len(consumers) == 2, consumers
    assert a.proc.pid in by_pid
    (b_pid,) = set(by_pid) - {a.proc.pid}
    assert b_pid in b_workers
    on_a, on_b = by_pid[a.proc.pid], by_pid[b_pid]
    assert on_a.resource["service.instance.id"] == node_a
    assert on_b.resource["service.instance.id"] != node_a
    assert on_b.resource["service.name"] == "webchat"  # the default
    for consumer in (on_a, on_b):
        assert consumer.name == "process"
        assert consumer.parent_span_id == producer.span_id
        assert consumer.attributes["messaging.operation.type"] == "process"
        assert consumer.attributes["messaging.message.id"] == message_id
        assert consumer.attributes["webchat.fanout.recipients"] == 1
        # Delivered after it was sent (one host, one clock), within a second, and quickly.
        assert producer.start_ns <= consumer.start_ns <= consumer.end_ns
        assert consumer.start_ns - producer.start_ns < seconds(1) * 1e9
        assert consumer.duration_s < seconds(0.5)
    assert producer.duration_s < seconds(1)

    # The same trace id is the exemplar of B's delivery-latency histogram: from a bucket of
    # the dashboard to this trace. B's two workers share exemplars through their files.
    async def exemplar() -> bool:
        async with session.get(b.url + "/metrics", headers={"Accept": OPENMETRICS}) as response:
            assert response.content_type == "application/openmetrics-text"
            text = await response.text()
        return producer.trace_id in re.findall(
            r'^webchat_delivery_latency_seconds_bucket\{le="[^"]+"\} \S+ # \{trace_id="(\w+)"\}',
            text,
            re.MULTILINE,
        )

    await poll(exemplar, 10, "the message's trace id as an exemplar on B")

    # The HTTP API is traced as SERVER spans (not /ws), with the Redis read under it.
    async with session.get(
        f"{a.url}/api/rooms/{ROOM}/messages",
        headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"},
    ) as response:
        assert response.status == 200

    def http_span(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        for span in spans:
            if span.kind == SERVER and span.trace_id == "ab" * 16:
                return span
        return None

    request = await receiver.wait_for(http_span, 10, "the HTTP request's span")
    assert request.name == "GET /api/rooms/{room}/messages"
    assert request.parent_span_id == "cd" * 8
    assert request.attributes["http.response.status_code"] == 200
    assert not [s for s in receiver.spans if s.kind == SERVER and "/ws" in s.name]

    assert threads(a.proc.pid) == 2  # the loop and the exporter
    for client in (alice, bob):
        await client.close()


async def test_with_tracing_off_nothing_is_sent_and_no_exporter_runs(
    receiver: OtlpReceiver, processes: list[WebchatProcess], session: aiohttp.ClientSession
):
    # Off by the SDK's own switch although the endpoint is the receiver; and off by default.
    disabled = start(processes, env=otel_env(receiver, OTEL_SDK_DISABLED="true"))
    plain = start(processes, env={"OTEL_SERVICE_NAME": "no-endpoint"})
    traced = start(processes, env=otel_env(receiver))  # the control: it does send
    for server in (disabled, plain, traced):
        alice = await ChatClient.connect(session, server.ws_url, room=ROOM, name="alice")
        await alice.send("hello")
        await alice.next_of("message")
        async with session.get(server.url + "/api/rooms/lobby/messages") as response:
            assert response.status == 200
        await alice.close()

    assert traced.proc is not None
    await receiver.wait_for(
        lambda spans: any(s.resource["process.pid"] == traced.proc.pid for s in spans),
        10,
        "the control instance's spans",
    )
    # The control's spans come one batch delay after its traffic, which followed the others':
    # had they exported anything, it would have arrived by now.
    pids = {s.resource["process.pid"] for s in receiver.spans}
    assert pids == {traced.proc.pid}
    for server in (disabled, plain):
        assert server.proc is not None
        assert threads(server.proc.pid) == 1, "only the event loop's thread"
        assert "Traceback" not in server.log()
    assert threads(traced.proc.pid) == 2
