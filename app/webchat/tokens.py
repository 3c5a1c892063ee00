"""Issuing tokens with the shared secret: `webchat token`, and what a backend or a load test
calls to sign one (PROTOCOL.md 1.1 "Identity").

In production the application's backend issues tokens (README.md "Authentication" shows an
endpoint); `webchat token` is for trying authenticated mode and for scripts. It signs HS256
with the secret the service is configured with (`--auth-secret-file` / AUTH_SECRET_FILE),
and puts in the audience and issuer the service checks (AUTH_AUDIENCE, AUTH_ISSUER).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import jwt

from webchat.auth import AuthError, RoomGrant, identity_from_claims, load_secret

DEFAULT_TTL: Final = 3600
_TTL = re.compile(r"\s*([0-9]{1,9})\s*(s|m|h|d)?\s*", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(raw: str) -> int:
    """Seconds from `90`, `90s`, `30m`, `1h` or `7d`; ValueError otherwise."""
    match = _TTL.fullmatch(raw)
    if not match or int(match[1]) == 0:
        raise ValueError(f"expected a lifetime such as 90s, 30m, 1h or 7d, got {raw!r}")
    return int(match[1]) * _UNIT[(match[2] or "").lower()]


def issue(
    secret: bytes,
    sub: str,
    *,
    name: str | None = None,
    rooms: Sequence[str] | None = None,
    ttl: float = DEFAULT_TTL,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for `sub`, valid `ttl` seconds from `now`; `rooms` None: every room.

    The claims are checked as the service checks them (ValueError naming the problem), so a
    token issued here is never refused for its claims.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    if name is not None:
        claims["name"] = name
    if rooms is not None:
        claims["rooms"] = list(rooms)
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    try:
        identity_from_claims(claims)
    except AuthError as exc:
        raise ValueError(exc.message) from None
    return jwt.encode(claims, secret, algorithm="HS256")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own refusals: one line, status 2
        raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="webchat token",
        description="Print a token signed with the service's shared secret (HS256).",
    )
    parser.add_argument("--sub", required=True, help="the user's stable id (1-128 characters)")
    parser.add_argument("--name", help="display name (default: the sub)")
    parser.add_argument(
        "--rooms",
        help="comma-separated room names or prefixes ending in * (default: every room)",
    )
    parser.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 7d (default 1h)")
    parser.add_argument("--auth-secret-file", help="file holding the secret (env AUTH_SECRET_FILE)")
    parser.add_argument("--audience", help="aud claim (env AUTH_AUDIENCE)")
    parser.add_argument("--issuer", help="iss claim (env AUTH_ISSUER)")
    return parser


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """`webchat token ...`: prints the token; one line on stderr and status 2 if it cannot."""

    def fail(message: str) -> int:
        print(f"webchat token: error: {message}", file=sys.stderr)
        return 2

    try:
        args = _parser().parse_args(list(argv))
    except ValueError as exc:
        return fail(str(exc))
    secret_file = args.auth_secret_file or env.get("AUTH_SECRET_FILE", "").strip()
    if not secret_file:
        others = [v for v in ("AUTH_PUBLIC_KEY_FILE", "AUTH_JWKS_URL") if env.get(v, "").strip()]
        hint = (
            f" ({others[0]} is set: with public keys, your identity provider signs tokens)"
            if others
            else ""
        )
        return fail(f"give --auth-secret-file or set AUTH_SECRET_FILE{hint}")
    try:
        secret = load_secret(secret_file)
        ttl = parse_ttl(args.ttl)
        rooms = None
        if args.rooms is not None:
            rooms = [r.strip() for r in args.rooms.split(",") if r.strip()]
            RoomGrant.parse(rooms)
        token = issue(
            secret,
            args.sub,
            name=args.name,
            rooms=rooms,
            ttl=ttl,
            audience=args.audience or env.get("AUTH_AUDIENCE", "").strip() or None,
            issuer=args.issuer or env.get("AUTH_ISSUER", "").strip() or None,
        )
    except ValueError as exc:
        return fail(str(exc))
    except AuthError as exc:
        return fail(exc.message)
    print(token)
    return 0
