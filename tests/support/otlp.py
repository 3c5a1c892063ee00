"""A real OTLP/HTTP trace receiver: POST /v1/traces (protobuf), decoded with opentelemetry-proto.

In tests, `OtlpReceiver` runs in the test's event loop on a free loopback port and keeps every
span it receives, flattened to `ReceivedSpan`; `wait_for` returns once the spans satisfy a
condition (woken by each export, never a sleep). Run as a program it accepts and discards
spans, counting them, for the tracing-overhead benchmark:

    python -m tests.support.otlp --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.timing import seconds

T = TypeVar("T")
PRODUCER = Span.SpanKind.SPAN_KIND_PRODUCER
CONSUMER = Span.SpanKind.SPAN_KIND_CONSUMER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
SERVER = Span.SpanKind.SPAN_KIND_SERVER


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    status_code: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource,
                        links=tuple(
                            (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                        ),
                        status_code=span.status.code,
                    )
                )
    return spans


class OtlpReceiver:
    """An OTLP/HTTP endpoint: `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should be."""

    def __init__(self, keep: bool = True) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.span_count = 0
        self._keep = keep
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> OtlpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        spans = decode(body)
        async with self._changed:
            self.requests += 1
            self.span_count += len(spans)
            if self._keep:
                self.spans.extend(spans)
            self._changed.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(
        self, found: Callable[[list[ReceivedSpan]], T | None], timeout: float, what: str
    ) -> T:
        """`found(spans)` once it returns something truthy; fail after `timeout` (scaled) s."""

        async def until() -> T:
            async with self._changed:
                while True:
                    result = found(list(self.spans))
                    if result:
                        return result
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(until(), seconds(timeout))
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {timeout}s; received {len(self.spans)} spans: "
                + ", ".join(sorted({f"{s.name}/{s.kind}" for s in self.spans}))
            ) from None


async def _serve(port: int) -> None:
    receiver = await OtlpReceiver(keep=False).start(port)
    print(f"OTLP receiver on {receiver.endpoint}, discarding spans", flush=True)
    try:
        while True:
            await asyncio.sleep(10)  # the standalone receiver reports its counts this often
            print(f"{receiver.requests} requests, {receiver.span_count} spans", flush=True)
    finally:
        await receiver.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="OTLP/HTTP receiver that discards spans")
    parser.add_argument("--port", type=int, default=4318)
    asyncio.run(_serve(parser.parse_args().port))
