"""What observability costs per call, in-process: the figures behind docs/performance.md's
"Observability overhead", independent of how busy the machine is with other work.

    .venv/bin/python loadtest/obs_micro.py            # per message: metrics, Redis op, spans
    .venv/bin/python loadtest/obs_micro.py http       # per HTTP request: tracing by hand vs
                                                      # opentelemetry-instrumentation-aiohttp-server

Per-message figures are the best of 7 repetitions (least disturbed by other processes), in µs.
Spans are queued in the SDK's batch processor and never exported during the measurement.
The HTTP figures are CPU per request of one process serving and requesting /healthz over
loopback, always-on sampling, spans to an in-memory exporter; interleaved, median of 5.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def best(fn: Callable[[], object], number: int) -> float:
    return min(timeit.timeit(fn, number=number) / number * 1e6 for _ in range(7))


def best_async(make: Callable[[], Any], number: int) -> float:
    async def loop() -> float:
        start = time.perf_counter()
        for _ in range(number):
            await make()
        return (time.perf_counter() - start) / number * 1e6

    return min(asyncio.run(loop()) for _ in range(7))


def per_message() -> None:
    # Nothing is exported while measuring: a huge queue, a schedule delay of an hour.
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_BSP_SCHEDULE_DELAY="3600000",
        OTEL_BSP_MAX_QUEUE_SIZE="10000000",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10000000",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
    )
    import logging

    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # the exit-time export
    from webchat.broker.base import Draft, Message, Published
    from webchat.broker.redis_ops import RedisOps
    from webchat.metrics import Metrics

    metrics = Metrics()
    now_us = time.time_ns() // 1000
    plain = Message("1-0", "bench", "a", "x" * 40, 1, None, accepted_us=now_us)
    traced = Message("1-0", "bench", "a", "x", 1, None, {"traceparent": TRACEPARENT}, now_us)
    rows: list[tuple[str, float]] = []

    def accepted() -> None:
        metrics.messages.inc()
        metrics.message_latency.observe(0.0012)

    rows.append(("sender side: messages_total + message_latency", best(accepted, 20000)))
    rows.append(
        (
            "hub: delivered(1 message, 1,000 recipients)",
            best(lambda: metrics.delivered([plain], 1000), 20000),
        )
    )
    rows.append(
        (
            "hub: delivered(1 sampled message) with exemplar",
            best(lambda: metrics.delivered([traced], 1000), 20000),
        )
    )
    ops = RedisOps(metrics, None, "redis://127.0.0.1:6379/0")

    async def nothing() -> int:
        return 1

    bare = best_async(nothing, 20000)
    rows.append(
        (
            "RedisOps.call around one Redis call",
            best_async(lambda: ops.call("publish", nothing()), 20000) - bare,
        )
    )

    class Broker:
        async def publish(self, room: str, draft: Draft) -> Published:
            return Published(
                Message("1-0", room, draft.name, draft.text, 1, None, draft.trace), False
            )

    broker = Broker()
    direct = best_async(lambda: broker.publish("bench", Draft("a", "x", None)), 5000)
    for ratio in ("0", "1"):
        rows += tracing_costs(ratio, broker, direct, plain, traced)
    print("| what | µs |\n|---|---|")
    for what, micros in rows:
        print(f"| {what} | {micros:.2f} |")


def tracing_costs(
    ratio: str, broker: Any, direct: float, plain: Any, traced: Any
) -> list[tuple[str, float]]:
    """Producer and consumer span costs with the sampler at `ratio` (0: none, 1: all)."""
    from webchat.broker.base import Draft
    from webchat.tracing import Tracing

    os.environ["OTEL_TRACES_SAMPLER_ARG"] = ratio
    tracing = Tracing("node", "redis")
    rows: list[tuple[str, float]] = []
    spent = best_async(lambda: tracing.publish(broker, "bench", Draft("a", "x", None)), 5000)
    what = "unsampled" if ratio == "0" else "sampled (span + context)"
    rows.append((f"producer: tracing.publish, {what}", spent - direct))
    if ratio == "0":
        without = best(lambda: tracing.start_delivery("bench", [plain], 1000), 50000)
        rows.append(("consumer: start_delivery, message without context", without))
    else:

        def deliver() -> None:
            spans = tracing.start_delivery("bench", [traced], 1000)
            assert spans
            tracing.end_delivery(spans)

        rows.append(("consumer: one CONSUMER span, sampled message", best(deliver, 5000)))
    tracing.provider.shutdown = lambda: None  # type: ignore[method-assign]  # nothing to export
    return rows


async def http_costs() -> None:
    os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")
    from aiohttp import ClientSession, web
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from webchat.tracing import Tracing

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        return tracer_provider, exporter

    def make(variant: str) -> tuple[web.Application, InMemorySpanExporter | None]:
        if variant == "by hand (webchat)":
            tracer_provider, exporter = provider()
            tracing = Tracing.__new__(Tracing)  # its tracer on the in-memory provider
            tracing.provider = tracer_provider
            tracing._tracer = tracer_provider.get_tracer("webchat")
            tracing._propagator = TraceContextTextMapPropagator()

            @web.middleware
            async def traced(request: web.Request, handler: Any) -> web.StreamResponse:
                return await tracing.trace_http(request, handler)

            return web.Application(middlewares=[traced]), exporter
        if variant == "aiohttp-server instrumentation":
            tracer_provider, exporter = provider()
            instrumentor = AioHttpServerInstrumentor()
            instrumentor.instrument(tracer_provider=tracer_provider)
            app = web.Application()
            instrumentor.uninstrument()
            return app, exporter
        return web.Application(), None

    async def run(variant: str, count: int) -> float:
        app, exporter = make(variant)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/healthz"
        async with ClientSession() as session:
            for _ in range(200):
                async with session.get(url) as response:
                    await response.read()
            cpu = time.process_time()
            for _ in range(count):
                async with session.get(url) as response:
                    await response.read()
            cpu = time.process_time() - cpu
        await runner.cleanup()
        if exporter is not None:
            assert len(exporter.get_finished_spans()) == count + 200
        return cpu / count * 1e6

    variants = ["none", "by hand (webchat)", "aiohttp-server instrumentation"]
    results: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(5):
        for variant in variants:
            results[variant].append(await run(variant, 2000))
    base = statistics.median(results["none"])
    print("| HTTP route tracing | CPU per request, median (µs) | added (µs) |\n|---|---|---|")
    for variant, values in results.items():
        median = statistics.median(values)
        print(f"| {variant} | {median:.0f} | {median - base:+.0f} |")


if __name__ == "__main__":
    if sys.argv[1:] == ["http"]:
        asyncio.run(http_costs())
    else:
        per_message()
