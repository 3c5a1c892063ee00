"""HTTP routes and the application's lifecycle (cleanup_ctx), with typed AppKey keys."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from html import escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from webchat.broker.base import BrokerUnavailable
from webchat.config import Config
from webchat.node import Node
from webchat.protocol import (
    ProtocolError,
    encode_rooms,
    error_body,
    message_dict,
    parse_connect_params,
    parse_id,
    parse_limit,
    validate_room,
    with_identity,
)
from webchat.upgrade import handshake_problem

if TYPE_CHECKING:
    from webchat.auth import Identity

log = logging.getLogger(__name__)

NODE = web.AppKey("node", Node)


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


def _host_port(netloc: str, scheme: str | None = None) -> str:
    """`host[:port]` lower-cased with default ports (80, 443) dropped, for origin checks."""
    parts = urlsplit(f"//{netloc}")
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return netloc.lower()
    return host if port in (None, 80, 443) else f"{host}:{port}"


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """PROTOCOL.md's origin rule: no Origin, same host[:port], or an exact allow-list entry."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    if not parts.netloc or host is None:
        return False
    return _host_port(parts.netloc) == _host_port(host)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


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
    try:
        params = parse_connect_params(request.query, anonymous=node.auth is None)
    except ProtocolError as exc:
        node.metrics.upgrade(exc.code)
        return _error(400, exc.code, exc.message)
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request.headers.get("Host"), node.config.allowed_origins):
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
    if handshake_problem(request.headers) is not None:
        # Not an upgrade: answer what the upgrade would get. A browser cannot read why its
        # WebSocket was refused; it asks again this way (e.g. to learn of name_taken).
        return await node.check(params)
    return await node.serve(request, params, identity)


async def messages(request: web.Request) -> web.Response:
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
    try:
        if before is not None:
            history = await node.broker.history_before(room, before, limit)
        else:
            history = await node.broker.history(room, since, limit)
    except BrokerUnavailable:
        return _error(503, "unavailable", "the message broker is unreachable; retry later")
    return web.json_response(
        {"messages": [message_dict(m) for m in history.messages], "gap": history.gap}
    )


async def rooms(request: web.Request) -> web.Response:
    node = request.app[NODE]
    identity = None
    if node.auth is not None:
        allowed = await authorize(request, None)
        if isinstance(allowed, web.Response):
            return allowed
        identity = allowed
    try:
        listing, body = await node.rooms()
    except BrokerUnavailable:
        return _error(503, "unavailable", "the message broker is unreachable; retry later")
    if identity is not None and identity.rooms is not None:
        # Only the rooms this token allows: filtered from the shared listing, encoded per
        # request (a token without a rooms claim gets the shared body as it is).
        body = encode_rooms([r for r in listing if identity.allows(r.room)])
    return web.Response(body=body, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not node.broker.ready:
        return web.json_response({"status": "broker unavailable"}, status=503)
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


def make_app(config: Config) -> web.Application:
    app = web.Application()
    app[INDEX] = index_page(config)

    async def revalidate_static(request: web.Request, response: web.StreamResponse) -> None:
        # The client is not versioned: browsers revalidate it (ETag/304) after a deploy.
        if request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-cache")

    app.on_response_prepare.append(revalidate_static)

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
        node = Node(config)
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
