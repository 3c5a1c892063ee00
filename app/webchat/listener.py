"""The HTTP server under the app: socket cap, header timeout, limits, clean refusals, quiet logs.

aiohttp's server takes its line and header limits as arguments, but it holds a connection that
never completes its headers for as long as its keep-alive timeout (slowloris), accepts sockets
up to the descriptor limit (after which every accept fails and asyncio logs each failure), and
answers a malformed request with a plain-text page echoing it, logged with a traceback. Here:

- `Gate` counts accepted sockets; beyond `Budget.sockets` (limits.py) a new one is closed as it
  is accepted, so the process keeps descriptors for Redis and its files.
- `GuardedHandler`, aiohttp's per-connection protocol, closes a connection whose request headers
  are not complete `header_timeout` seconds after they began (or after the connection opened),
  and answers parse errors (a request line or header over 8 KiB, more than 100 headers) with
  PROTOCOL.md's JSON `bad_request`, logged as one line at most once a second.
- `throttle_accept_errors` logs failed accepts at most once a second, with a count.

`Runner` is aiohttp's AppRunner with this server: `_make_server` is BaseRunner's hook for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.log import access_logger
from aiohttp.web_protocol import RequestHandler

from webchat.limits import Budget
from webchat.protocol import error_body

log = logging.getLogger(__name__)

MAX_LINE: Final = 8192  # request line, and each header line
MAX_FIELD: Final = 8192
MAX_HEADERS: Final = 100
# Idle keep-alive connections close after this: longer than nginx's upstream keep-alive
# (60 s), so nginx never sends a request on a connection this end is closing.
KEEPALIVE_TIMEOUT: Final = 75.0


class Throttled:
    """One log line per `interval` at most, counting the events it stands for."""

    def __init__(self, logger: logging.Logger, level: int, interval: float = 1.0) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._count = 0
        self._next = 0.0

    def __call__(self, text: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now < self._next:
            return
        self._logger.log(self._level, "%s (%d since the last report)", text, self._count)
        self._count = 0
        self._next = now + self._interval


class Gate:
    """The process's accepted sockets, and the rules every connection follows."""

    def __init__(
        self, budget: Budget, header_timeout: float, headers: dict[str, str] | None = None
    ) -> None:
        self.budget = budget
        self.header_timeout = header_timeout
        self.headers = headers or {}  # set on the error answers written here
        self.open = 0
        # Sockets closed since start, refused ones included (collector.py counts them).
        self.closed = 0
        self.refused = Throttled(log, logging.WARNING)
        self.too_slow = Throttled(log, logging.INFO)
        self.bad_request = Throttled(log, logging.INFO)

    def admit(self) -> bool:
        if self.open >= self.budget.sockets:
            self.refused(f"closed a new connection: {self.open} sockets open, the cap")
            self.closed += 1
            return False
        self.open += 1
        return True

    def left(self) -> None:
        self.open -= 1
        self.closed += 1


def _describe(exc: BaseException | None) -> str:
    """What was wrong with a request, without echoing it (it may be huge, or an attack)."""
    if isinstance(exc, LineTooLong):
        return f"request line or header longer than {MAX_LINE} bytes"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return f"more than {MAX_HEADERS} header fields"
    return "malformed HTTP request"


class GuardedHandler(RequestHandler):
    """One connection. Headers must be complete within the gate's header timeout."""

    __slots__ = ("_admitted", "_between_requests", "_gate", "_handed_over", "_header_timer")

    def __init__(self, manager: web.Server, *, gate: Gate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._admitted = False
        self._handed_over = False
        self._between_requests = True
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit():
            # connection_lost follows; the handler never starts.
            cast(asyncio.Transport, transport).abort()
            return
        self._admitted = True
        self._start_header_timer()
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._handed_over:  # upgraded: the socket's new owner leaves the gate (upgrade.py)
            super().connection_lost(exc)
            return
        if not self._admitted:
            return
        self._admitted = False
        self._gate.left()
        self._stop_header_timer()
        super().connection_lost(exc)

    def hand_over(self) -> Gate | None:
        """The socket leaves aiohttp after a WebSocket upgrade (upgrade.py), and its place
        under the socket cap goes with it: the new owner calls `Gate.left` when it closes."""
        if not self._admitted:
            return None
        self._admitted = False
        self._handed_over = True
        self._stop_header_timer()
        return self._gate

    def data_received(self, data: bytes) -> None:
        # The first bytes of a request on an idle keep-alive connection start its clock.
        if self._between_requests and self._header_timer is None and data:
            self._start_header_timer()
        super().data_received(data)

    def headers_complete(self) -> None:
        """A request's headers were parsed: it is being handled (perhaps for hours: a
        WebSocket), so the header clock stops until the response is finished."""
        self._between_requests = False
        self._stop_header_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._between_requests = True

    def _start_header_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._gate.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._gate.too_slow(
            f"closed a connection that sent no complete request headers within "
            f"{self._gate.header_timeout:g} s"
        )
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """PROTOCOL.md's JSON error instead of aiohttp's text page; a bad request is the
        client's fault, logged as one line (throttled), a 500 is ours, logged in full."""
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            code, text = ("unavailable", "timed out") if status == 504 else ("internal", "")
            text = text or "internal server error"
        else:
            code, text = "bad_request", _describe(exc)
            self._gate.bad_request(f"refused a request from {request.remote}: {text}")
        if request.writer.output_size > 0:  # the answer has begun: nothing more can be said
            raise ConnectionError("response already started; cannot send an error answer")
        response = web.json_response(error_body(code, text), status=status)
        response.headers.update(self._gate.headers)
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's Server making GuardedHandlers, told when a request's headers are parsed."""

    def __init__(self, plain: web.Server, gate: Gate, **kwargs: Any) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=self._parsed(plain.request_factory),
            handler_cancellation=plain.handler_cancellation,
            **kwargs,
        )
        self._gate = gate
        self._handler_kwargs = {k: v for k, v in kwargs.items() if k != "loop"}

    @staticmethod
    def _parsed(factory: Callable[..., web.BaseRequest]) -> Callable[..., web.BaseRequest]:
        def make_request(
            message: Any, payload: Any, protocol: RequestHandler, *args: Any
        ) -> web.BaseRequest:
            if isinstance(protocol, GuardedHandler):
                protocol.headers_complete()
            return factory(message, payload, protocol, *args)

        return make_request

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(
            self, loop=asyncio.get_running_loop(), gate=self._gate, **self._handler_kwargs
        )


class Runner(web.AppRunner):
    """AppRunner serving through GuardedServer; `gate.open` counts its sockets."""

    def __init__(self, app: web.Application, gate: Gate, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.gate = gate
        self._handler_kwargs: dict[str, Any] = {
            "keepalive_timeout": KEEPALIVE_TIMEOUT,
            "max_line_size": MAX_LINE,
            "max_field_size": MAX_FIELD,
            "max_headers": MAX_HEADERS,
            "access_log": kwargs.get("access_log", access_logger),
        }

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the app (cleanup_ctx) and freezes it
        return GuardedServer(plain, self.gate, **self._handler_kwargs)


def throttle_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Failed accepts (out of descriptors, say) logged at most once a second, with a count.

    asyncio reports each through the loop's exception handler with a traceback; under a
    flood of connections that is thousands of tracebacks a second. Other reports pass on.
    """
    previous = loop.get_exception_handler()
    throttled = Throttled(log, logging.ERROR)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" in message or "incoming connection" in message:
            throttled(f"{message}: {context.get('exception')!r}")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
