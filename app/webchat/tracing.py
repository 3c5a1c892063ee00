"""OpenTelemetry tracing: one trace per sampled message, from its sender to every instance.

Imported only when tracing is switched on (config.tracing_requested: OTEL_EXPORTER_OTLP_ENDPOINT
or OTEL_TRACES_EXPORTER=otlp), so with tracing off the service imports no OpenTelemetry code
and runs no exporter thread. Everything else is the SDK's standard environment handling:
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER / _ARG, OTEL_BSP_*,
OTEL_EXPORTER_OTLP_* (OTLP over HTTP/protobuf, through the SDK's batch span processor).

Spans, after the OpenTelemetry messaging semantic conventions:

- `send` (PRODUCER), on the instance that accepts a client's message: a root span (the
  sampler decides per message, so `parentbased_traceidratio` at 0.01 traces 1 % of messages),
  around the broker's publish. Its W3C context travels in the broker message (`Draft.trace`,
  through both brokers and Redis) only when it is sampled: an unsampled message carries
  nothing and costs its receivers nothing.
- `process` (CONSUMER), on every instance that delivers the message to local sockets, child
  of the producer span: it covers the writes of the batch the message came in, with the
  number of local recipients. So one trace shows the publish on instance A and the fan-out
  on A and on B, each with its duration.
- Redis calls as CLIENT spans, children of whatever sampled span is current (the publish
  script under `send`, history reads under an HTTP request); none outside a sampled trace,
  so the health check and presence loops do not start traces of their own. Done by hand
  (broker/redis_ops.py) rather than with opentelemetry-instrumentation-redis, which starts a
  span for every command, sampled or not, including a root trace for every self-ping.
- HTTP requests as SERVER spans (by hand, see `trace_http`), except `/ws`: an upgrade's
  request lasts the whole WebSocket session, and the session is traced per message instead.

The delivery-latency histogram (metrics.py) carries the trace id of sampled messages as an
exemplar, so an operator can go from a slow bucket to the trace of a message in it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, get_current_span, use_span
from opentelemetry.trace.propagation import set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from webchat.broker.base import Broker, Draft, Message, Published
from webchat.metrics import build_version, sampled_trace_id

log = logging.getLogger(__name__)

SHUTDOWN_WAIT: Final = 2.0  # seconds to flush spans at exit; a dead collector must not hold it
_ROOT: Final = otel_context.Context()  # an empty context: the message's span is a root


def resource(node_id: str) -> Resource:
    """service.name (default `webchat`), service.instance.id = the node id, host, pid.

    OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the defaults (a container's
    host.name, say), except the instance id, which must differ per process.
    """
    from_env = dict(Resource.create().attributes)
    if str(from_env.get("service.name", "")).startswith("unknown_service"):
        del from_env["service.name"]  # the SDK's placeholder when none was given
    defaults: dict[str, str | int] = {
        "service.name": "webchat",
        "service.version": build_version(),
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    return (
        Resource(defaults)
        .merge(Resource(from_env))
        .merge(Resource({"service.instance.id": node_id}))
    )


class Tracing:
    """This process's tracer provider and the spans webchat makes. Close it at exit."""

    def __init__(self, node_id: str, messaging_system: str) -> None:
        self.provider = TracerProvider(resource=resource(node_id))  # sampler: OTEL_TRACES_*
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self.provider.get_tracer("webchat", build_version())
        self._propagator = TraceContextTextMapPropagator()
        self._node_id = node_id
        self._system = messaging_system

    # --- messages -----------------------------------------------------------------------

    async def publish(self, broker: Broker, room: str, draft: Draft) -> Published:
        """`broker.publish` inside a PRODUCER span, carrying its context if sampled."""
        span = self._tracer.start_span(
            "send",
            context=_ROOT,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": self._system,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": room,
                "messaging.client.id": self._node_id,
            },
        )
        if not span.is_recording():
            return await broker.publish(room, draft)  # unsampled: nothing to carry
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        with use_span(span, end_on_exit=True):
            published = await broker.publish(room, replace(draft, trace=carrier))
            span.set_attribute("messaging.message.id", published.message.id)
            if published.duplicate:
                span.set_attribute("webchat.duplicate", True)
        return published

    def start_delivery(
        self, room: str, messages: Sequence[Message], recipients: int
    ) -> list[Span] | None:
        """CONSUMER spans for the sampled messages of a batch about to be written, or None.

        Messages without a sampled context (most, at 1 % sampling) cost one dict lookup.
        """
        spans: list[Span] | None = None
        for message in messages:
            if message.trace is None or sampled_trace_id(message.trace) is None:
                continue
            span = self._tracer.start_span(
                "process",
                context=self._propagator.extract(message.trace),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": self._system,
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": room,
                    "messaging.message.id": message.id,
                    "messaging.consumer.group.name": self._node_id,
                    "messaging.batch.message_count": len(messages),
                    "webchat.fanout.recipients": recipients,
                },
            )
            if spans is None:
                spans = []
            spans.append(span)
        return spans

    @staticmethod
    def end_delivery(spans: list[Span]) -> None:
        for span in spans:
            span.end()

    # --- Redis --------------------------------------------------------------------------

    def client_span(self, command: str, attributes: Callable[[], dict[str, Any]]) -> Span | None:
        """A CLIENT span for one Redis call, only inside a sampled trace (else None).

        `attributes` is called only then: an unsampled call costs one context lookup.
        """
        if not get_current_span().is_recording():
            return None
        return self._tracer.start_span(command, kind=SpanKind.CLIENT, attributes=attributes())

    # --- HTTP ---------------------------------------------------------------------------

    async def trace_http(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Run `handler` in a SERVER span (HTTP semantic conventions), `/ws` excepted.

        web.py's middleware calls this. By hand instead of opentelemetry-instrumentation-
        aiohttp-server: that one patches `web.Application` process-wide, traces `/ws` for the
        whole session (which would make each connection's messages children of its upgrade,
        sampled all or none) and records HTTP metrics nobody exports here.
        """
        if request.path == "/ws":
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "url.scheme": request.scheme,
        }
        if route:
            attributes["http.route"] = route
        with self._tracer.start_as_current_span(
            f"{request.method} {route}".rstrip(),
            context=self._propagator.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                span.set_attribute("http.response.status_code", exc.status)
                if exc.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    # --- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Export what is left, waiting at most SHUTDOWN_WAIT seconds.

        The SDK's shutdown blocks (up to the exporter's timeout, 10 s by default, when the
        collector is down), so it runs on a daemon thread that the process does not wait
        for: the drain deadline of PROTOCOL.md wins over the last spans.
        """
        done = threading.Event()

        def shut_down() -> None:
            try:
                self.provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=shut_down, name="webchat-otel-close", daemon=True).start()
        if not await asyncio.to_thread(done.wait, SHUTDOWN_WAIT):
            log.warning("tracing: spans not exported within %.0f s at exit", SHUTDOWN_WAIT)
