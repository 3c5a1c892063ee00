"""HTTP routes and the application's lifecycle (cleanup_ctx), with typed AppKey keys."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from html import escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from aiohttp import web

from webchat import api
from webchat.broker.base import BrokerUnavailable
from webchat.config import Config
from webchat.limits import Budget
from webchat.node import Node
from webchat.protocol import (
    ProtocolError,
    encode_rooms,
    error_body,
    parse_connect_params,
    parse_id,
    parse_limit,
    upgrade_problem,
    validate_room,
    with_identity,
)

if TYPE_CHECKING:
    from webchat.auth import Identity

log = logging.getLogger(__name__)

NODE = web.AppKey("node", Node)
API_SLOTS = web.AppKey("api_slots", api.Slots)
FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


def _frontend_dir() -> Path:
    """Where the browser client's files are: in the installed package, else the source tree.

    A wheel carries them as the data package `webchat.frontend` (pyproject.toml); an editable
    install (`pip install -e`, `make run`) reads the repository's frontend/ directly.
    """
    packaged = resources.files("webchat") / "frontend"
    if isinstance(packaged, Path) and (packaged / "index.html").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "frontend"


FRONTEND = _frontend_dir()

# The page's policy (also in index.html's <meta>, which cannot forbid framing): everything
# from this origin, no inline code, and no page may frame this one (clickjacking).
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# On every answer but the WebSocket upgrade. `Server` names no version.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Server": "webchat",
}
# Answered whatever the Host: load balancers and Prometheus address instances by IP.
PROBES: Final = frozenset({"/healthz", "/readyz", "/metrics"})


def _host_port(netloc: str, scheme: str | None = None) -> str:
    """`host[:port]` lower-cased with default ports (80, 443) dropped, for origin checks."""
    try:
        parts = urlsplit(f"//{netloc}")
    except ValueError:  # an unbalanced '[' (no IPv6 address): compared as it is
        return netloc.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return netloc.lower()
    return host if port in (None, 80, 443) else f"{host}:{port}"


def host_name(netloc: str | None) -> str | None:
    """The host name of a Host header (or an origin's netloc): lower-cased, without the port
    or a trailing dot, an IPv6 address in brackets; None if it is not a plain host[:port]."""
    if not netloc or any(c in netloc for c in "@/\\?# \t"):
        return None
    try:
        parts = urlsplit(f"//{netloc}")
        parts.port  # noqa: B018  # raises on a malformed port
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return None
    return f"[{host}]" if ":" in host else host


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """--allowed-hosts: any Host when the list is empty, else one of the listed names."""
    return not allowed or host_name(host) in allowed


def origin_allowed(
    origin: str | None,
    host: str | None,
    allowed: tuple[str, ...],
    allowed_hosts: tuple[str, ...] = (),
) -> bool:
    """PROTOCOL.md's origin rule: no Origin, same host[:port], or an exact allow-list entry.

    With --allowed-hosts, same-origin counts only for a listed host (DNS rebinding: a page of
    an attacker's name that resolves to this server is same-origin with itself).
    """
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # an unbalanced '[': what follows the scheme, as it is
        netloc = origin.partition("://")[2]
    if not netloc or host is None:
        return False
    if not host_allowed(netloc, allowed_hosts):
        return False
    return _host_port(netloc) == _host_port(host)


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> web.Response:
    response = web.json_response(error_body(code, message), status=status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def authorize(request: web.Request, room: str | None) -> Identity | web.Response:
    """Authenticated mode's gate for /ws and /api/: the request's verified identity, or the
    answer refusing it (401 `unauthorized` naming the failed check, 403 `forbidden_room` if
    the token does not allow `room`, 503 when the signing keys cannot be fetched).

    Call it only when `node.auth` is set. Nothing of the token is logged or answered back.
    """
    from webchat.auth import AuthError, KeysUnavailable, bearer_token

    node = request.app[NODE]
    assert node.auth is not None
    try:
        token = bearer_token(request.headers.get("Authorization"), request.query.get("token"))
        identity = await node.auth.verify(token)
    except AuthError as exc:
        node.metrics.auth_failure(exc.reason)
        log.debug("token refused on %s (%s): %s", request.path, exc.reason, exc.message)
        # RFC 6750: a Bearer challenge, with invalid_token unless no token was given at all.
        challenge = 'Bearer realm="webchat"'
        if exc.reason != "missing":
            challenge += ', error="invalid_token"'
        response = _error(401, "unauthorized", exc.message)
        response.headers["WWW-Authenticate"] = challenge
        return response
    except KeysUnavailable as exc:
        return _error(503, "unavailable", f"{exc}; retry with backoff")
    if room is not None and not identity.allows(room):
        return _error(403, "forbidden_room", f"your token does not allow the room {room}")
    return identity


# The upgrade outcome (metrics.CONNECTION_STATUSES) of each answer `authorize` refuses with.
_REFUSALS = {401: "unauthorized", 403: "forbidden_room", 503: "unavailable"}


async def websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    refusal = node.admission()
    if refusal is not None:  # before anything else: the instance takes no more clients now
        node.metrics.upgrade("unavailable")
        message, retry_after = refusal
        return _error(503, "unavailable", f"service {message}", retry_after)
    try:
        params = parse_connect_params(request.query, anonymous=node.auth is None)
    except ProtocolError as exc:
        node.metrics.upgrade(exc.code)
        return _error(400, exc.code, exc.message)
    origin = request.headers.get("Origin")
    host = request.headers.get("Host")
    cfg = node.config
    if not origin_allowed(origin, host, cfg.allowed_origins, cfg.allowed_hosts):
        node.metrics.upgrade("forbidden_origin")
        return _error(403, "forbidden_origin", f"origin {origin!r} is not allowed")
    identity = None
    if node.auth is not None:
        allowed = await authorize(request, params.room)
        if isinstance(allowed, web.Response):
            node.metrics.upgrade(_REFUSALS[allowed.status])
            return allowed
        identity = allowed
        params = with_identity(params, identity.name, identity.sub)
    if not node.ready:
        node.metrics.upgrade("unavailable")
        why = "draining" if node.draining else "message broker unreachable"
        return _error(503, "unavailable", f"service unavailable ({why}); retry with backoff")
    # An upgrade asked for, but malformed: said so (before aiohttp's handshake, which answers
    # 500 to a key that is not ASCII).
    problem = upgrade_problem(request.method, request.headers)
    if problem is not None:
        status, message = problem
        node.metrics.upgrade("bad_request")
        response = _error(status, "bad_request", message)
        if status == 426:
            response.headers["Sec-WebSocket-Version"] = "13"
        return response
    if request.headers.get("Upgrade") is None:
        # Not an upgrade: answer what the upgrade would get. A browser cannot read why its
        # WebSocket was refused; it asks again this way (e.g. to learn of name_taken).
        return await node.check(params)
    return await node.serve(request, params, identity)


async def messages(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    try:
        room = validate_room(request.match_info["room"])
        since = request.query.get("since")
        if since is not None:
            parse_id(since)
        before = request.query.get("before")
        if before is not None:
            parse_id(before, "before")
            if since is not None:
                raise ProtocolError("bad_request", "give since or before, not both")
        limit = parse_limit(request.query.get("limit"))
    except ProtocolError as exc:
        return _error(400, exc.code, exc.message)
    if node.auth is not None:
        allowed = await authorize(request, room)
        if isinstance(allowed, web.Response):
            return allowed
    slots = request.app[API_SLOTS]
    if not slots.take():
        return _busy(slots)
    try:
        try:
            if before is not None:
                history = await node.broker.history_before(room, before, limit)
            else:
                history = await node.broker.history(room, since, limit)
        except BrokerUnavailable:
            return _error(503, "unavailable", "the message broker is unreachable; retry later")
        chunks = await api.encode_page(
            history.messages, history.gap, node.config.api_max_bytes, keep_newest=since is None
        )
        del history  # only the encoded page is held while a slow client reads it
        if len(chunks) > 1:
            node.trimmer.soon()  # a large answer: its memory goes back once it is sent
        return await api.send(request, chunks, node.config.api_timeout)
    finally:
        slots.give_back()


def _busy(slots: api.Slots) -> web.Response:
    return _error(
        503,
        "unavailable",
        f"more than {slots.limit} API requests at once on this instance; retry shortly",
        retry_after=1,
    )


async def rooms(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    identity = None
    if node.auth is not None:
        allowed = await authorize(request, None)
        if isinstance(allowed, web.Response):
            return allowed
        identity = allowed
    slots = request.app[API_SLOTS]
    if not slots.take():
        return _busy(slots)
    try:
        try:
            listing, body = await node.rooms()
        except BrokerUnavailable:
            return _error(503, "unavailable", "the message broker is unreachable; retry later")
        if identity is not None and identity.rooms is not None:
            # Only the rooms this token allows: filtered from the shared listing, encoded per
            # request (a token without a rooms claim gets the shared body as it is).
            body = encode_rooms([r for r in listing if identity.allows(r.room)])
        return await api.send(request, [body], node.config.api_timeout)
    finally:
        slots.give_back()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not node.broker.ready:
        return web.json_response({"status": "broker unavailable"}, status=503)
    if node.loop_lagging is not None:
        return web.json_response({"status": "overloaded"}, status=503)
    if node.full:
        return web.json_response({"status": "full"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, or OpenMetrics (with exemplars) when the scraper accepts it."""
    body, content_type = request.app[NODE].metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def index(request: web.Request) -> web.StreamResponse:
    page = request.app[INDEX]
    if not page:
        return web.FileResponse(FRONTEND / "index.html", headers={"Cache-Control": "no-cache"})
    return web.Response(body=page, content_type="text/html", headers={"Cache-Control": "no-cache"})


def index_page(config: Config) -> bytes:
    """The client's page with its token source (`data-token-url`, authenticated mode), or
    nothing (b"") to serve the file as it is."""
    if not config.auth_token_url:
        return b""
    html = (FRONTEND / "index.html").read_text()
    marker = '<html lang="en">'
    assert marker in html, "frontend/index.html: the <html> tag changed"
    attribute = f' data-token-url="{escape(config.auth_token_url, quote=True)}"'
    return html.replace(marker, marker[:-1] + attribute + ">", 1).encode()


INDEX = web.AppKey("index", bytes)


def make_app(config: Config, limits: Budget | None = None) -> web.Application:
    """The application; `limits` are the connection caps (default: from the fd limit)."""
    app = web.Application()
    app[INDEX] = index_page(config)

    @web.middleware
    async def hosts(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # DNS rebinding: a name the attacker controls, resolving to this server, is refused
        # before anything else (but for the probes, which load balancers send by address).
        host = request.headers.get("Host")
        if host_allowed(host, config.allowed_hosts) or request.path in PROBES:
            return await handler(request)
        if request.path == "/ws":
            request.app[NODE].metrics.upgrade("unknown_host")
        shown = (host or "")[:80]
        return _error(421, "unknown_host", f"this server does not serve the host {shown!r}")

    app.middlewares.append(hosts)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        if response.status != 101:
            response.headers.update(SECURITY_HEADERS)
        # The client is not versioned: browsers revalidate it (ETag/304) after a deploy.
        if request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-cache")

    app.on_response_prepare.append(headers)
    app[API_SLOTS] = api.Slots(config.api_concurrency)

    if config.tracing:
        # The node (and its tracer) exists only once the app starts: look it up per request.
        @web.middleware
        async def traced(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            tracing = request.app[NODE].tracing
            assert tracing is not None
            return await tracing.trace_http(request, handler)

        app.middlewares.append(traced)

    async def node_ctx(app: web.Application) -> AsyncIterator[None]:
        node = Node(config, limits=limits)
        await node.start()
        app[NODE] = node
        yield
        await node.close()

    app.cleanup_ctx.append(node_ctx)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/api/rooms", rooms)
    app.router.add_get("/api/rooms/{room}/messages", messages)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_static("/static", FRONTEND)
    return app
