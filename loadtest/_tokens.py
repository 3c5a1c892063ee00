"""Tokens for load tests against an authenticated deployment (PROTOCOL.md 1.1 "Identity").

Given the deployment's HS256 secret (`--auth-secret-file`, env LOCUST_AUTH_SECRET_FILE), every
simulated user connects with a token signed here for its own `sub` (its user name), with the
audience and issuer the service checks. Without the option nothing changes: anonymous mode.
Tokens live `--auth-ttl` seconds (default a day, longer than any run, so no connection is
closed with 4001 mid-run) and are signed once per user name.

HOOK (the locustfile wires it; this module imports neither locust nor webchat):

    import _tokens
    _tokens.add_arguments(group)                     # in init_command_line_parser
    tokens = _tokens.Tokens.from_options(options)    # once per test (test_start); None: anonymous
    path = _tokens.with_token(ws_path(room, name, since), tokens, name)   # every /ws path

Options (command line or environment): --auth-secret-file / LOCUST_AUTH_SECRET_FILE,
--auth-audience / LOCUST_AUTH_AUDIENCE, --auth-issuer / LOCUST_AUTH_ISSUER,
--auth-ttl / LOCUST_AUTH_TTL.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt

MIN_SECRET = 32  # bytes, as the service requires
DEFAULT_TTL = 86400.0


def add_arguments(group: Any) -> None:
    """The token options, on Locust's argument group (configargparse: env_var works)."""
    group.add_argument(
        "--auth-secret-file",
        default="",
        env_var="LOCUST_AUTH_SECRET_FILE",
        help="the deployment's HS256 secret: users connect with tokens signed with it",
    )
    group.add_argument(
        "--auth-audience", default="", env_var="LOCUST_AUTH_AUDIENCE", help="aud of the tokens"
    )
    group.add_argument(
        "--auth-issuer", default="", env_var="LOCUST_AUTH_ISSUER", help="iss of the tokens"
    )
    group.add_argument(
        "--auth-ttl",
        type=float,
        default=DEFAULT_TTL,
        env_var="LOCUST_AUTH_TTL",
        help="token lifetime in seconds (default a day: no 4001 during a run)",
    )


class Tokens:
    """Signs a token per user name, once; `token_for` is cheap after the first call."""

    def __init__(
        self, secret: bytes, ttl: float = DEFAULT_TTL, audience: str = "", issuer: str = ""
    ) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(f"--auth-secret-file: the secret must be at least {MIN_SECRET} bytes")
        if not ttl > 0:
            raise ValueError(f"--auth-ttl: expected seconds greater than 0, got {ttl!r}")
        self._secret = secret
        self._ttl = ttl
        self._audience = audience
        self._issuer = issuer
        self._signed: dict[str, tuple[float, str]] = {}

    @classmethod
    def from_options(cls, options: Any) -> Tokens | None:
        """From Locust's parsed options; None without a secret file (anonymous mode).

        Raises ValueError naming the option when the file cannot be used.
        """
        path = (getattr(options, "auth_secret_file", "") or "").strip()
        if not path:
            return None
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"--auth-secret-file: cannot read {path!r}: {exc.strerror}") from None
        return cls(
            secret,
            float(getattr(options, "auth_ttl", DEFAULT_TTL)),
            getattr(options, "auth_audience", "") or "",
            getattr(options, "auth_issuer", "") or "",
        )

    def token_for(self, user: str) -> str:
        """A token for `user` (sub and display name), signed again once half its life is gone."""
        now = time.time()
        cached = self._signed.get(user)
        if cached is not None and now < cached[0]:
            return cached[1]
        claims: dict[str, Any] = {"sub": user, "name": user[:32], "iat": int(now)}
        claims["exp"] = int(now + self._ttl)
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        self._signed[user] = (now + self._ttl / 2, token)
        return token


def with_token(path: str, tokens: Tokens | None, user: str) -> str:
    """A `/ws?...` path with the user's token added (unchanged without tokens)."""
    if tokens is None:
        return path
    separator = "&" if "?" in path else "?"
    return f"{path}{separator}token={quote(tokens.token_for(user), safe='')}"
