"""An example backend endpoint that issues webchat tokens (README.md "Authentication").

Your application already knows who its users are (a session cookie, an SSO login). This
endpoint turns the signed-in user into a short-lived token for the chat, signed with the
secret webchat verifies (`--auth-secret-file`). Serve it on the chat's origin (the reverse
proxy sends /auth/ here and everything else to webchat) and start webchat with
`--auth-token-url /auth/token`: the browser client fetches its token there, with the user's
cookies, before it connects and again before the token expires.

    python examples/token_backend.py --secret-file /etc/webchat/secret --port 8090

`/auth/login?user=alice` signs you in (a stand-in for your real login: replace it) and
`/auth/token` answers `{"token": "..."}`, or 401 without a session. It needs only aiohttp and
PyJWT; any web framework does the same in a few lines.
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

import jwt
from aiohttp import web

# Who may chat, and where: the display name and the rooms claim (names, or prefixes with *).
USERS: dict[str, tuple[str, list[str] | None]] = {
    "alice": ("Alice", ["lobby", "team-*"]),
    "bob": ("Bob", ["lobby"]),
    "root": ("Operator", None),  # no rooms claim: every room
}
TTL = 600  # seconds: short, since the client refreshes it; a revoked user loses access by then


def make_app(
    secret: bytes, ttl: int = TTL, audience: str | None = None, issuer: str | None = None
) -> web.Application:
    sessions: dict[str, str] = {}  # session id -> user id; your app has its own store

    async def login(request: web.Request) -> web.StreamResponse:
        """Stand-in for your login: signs in as ?user= and goes on to ?next= (a local path)."""
        user = request.query.get("user", "")
        if user not in USERS:
            raise web.HTTPNotFound(text="no such user")
        session = secrets.token_urlsafe(32)
        sessions[session] = user
        target = request.query.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # never redirect off this origin
        response = web.HTTPFound(target)
        response.set_cookie("session", session, httponly=True, samesite="Strict", path="/")
        raise response

    async def token(request: web.Request) -> web.Response:
        """The signed-in user's chat token: `{"token": "..."}`, or 401."""
        user = sessions.get(request.cookies.get("session", ""))
        if user is None:
            return web.json_response({"error": "not signed in"}, status=401)
        name, rooms = USERS[user]
        now = int(time.time())
        claims: dict[str, object] = {"sub": user, "name": name, "iat": now, "exp": now + ttl}
        if rooms is not None:
            claims["rooms"] = rooms
        if audience:
            claims["aud"] = audience
        if issuer:
            claims["iss"] = issuer
        signed = jwt.encode(claims, secret, algorithm="HS256")
        # Never cached, never readable by another origin (no CORS headers here).
        return web.json_response({"token": signed}, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/auth/login", login)
    app.router.add_get("/auth/token", token)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret-file", required=True, help="webchat's AUTH_SECRET_FILE")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--audience", help="AUTH_AUDIENCE, if webchat checks one")
    parser.add_argument("--issuer", help="AUTH_ISSUER, if webchat checks one")
    args = parser.parse_args()
    secret = Path(args.secret_file).read_bytes().strip()
    app = make_app(secret, audience=args.audience, issuer=args.issuer)
    web.run_app(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
