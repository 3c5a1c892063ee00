"""Authenticated mode (PROTOCOL.md 1.1 "Identity"): verify the signed token a client brings.

The application's backend signs a short-lived JWT and this service verifies it without calling
back: HS256 with a shared secret, RS256 or ES256 with a public key or the keys of a JWKS URL.
The algorithm is pinned by the configuration, never taken from the token: a token whose `alg`
is `none`, or anything but the configured algorithm, is refused before any key is used, so
neither an unsigned token nor an HS256 token "signed" with the public key (algorithm
confusion) passes.

`Verifier.verify` returns the token's `Identity` or raises `AuthError`, whose `reason` (one of
metrics.AUTH_FAILURE_REASONS) and message say which check failed. A token is its holder's
secret: nothing here logs one, and no message repeats one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from webchat.config import Config
from webchat.jwks import JwksKeys, KeysUnavailable
from webchat.protocol import ProtocolError, validate_name

log = logging.getLogger(__name__)

MAX_SUB: Final = 128
MAX_TOKEN: Final = 8192  # bytes; longer is refused unread (a URL holds about this much)
MIN_SECRET: Final = 32  # bytes: HS256 keys shorter than its hash are weak (RFC 7518 3.2)
MIN_RSA_BITS: Final = 2048
ASYMMETRIC: Final = ("RS256", "ES256")
# A `rooms` claim entry: a room name, or a prefix of one followed by `*`.
ROOM_RULE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}|[A-Za-z0-9_-]{0,63}\*")

__all__ = ["AuthError", "Identity", "KeysUnavailable", "RoomGrant", "Verifier"]


class AuthError(Exception):
    """A token was refused: `reason` names the failed check (metrics label), `message` says
    what is wrong for the client, without repeating the token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class RoomGrant:
    """The rooms a `rooms` claim allows: names, and prefixes (entries ending in `*`)."""

    names: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def parse(cls, claim: object) -> RoomGrant:
        """The grant of a `rooms` claim; raises AuthError("bad_claims") if malformed."""
        if not isinstance(claim, list):
            raise AuthError(
                "bad_claims", "the rooms claim must be a list of room names or prefixes ending in *"
            )
        for entry in claim:
            if not isinstance(entry, str) or not ROOM_RULE.fullmatch(entry):
                shown = repr(entry[:70]) if isinstance(entry, str) else "a non-string"
                raise AuthError(
                    "bad_claims",
                    f"the rooms claim holds {shown}: each entry must be a room name "
                    "(1-64 of A-Z, a-z, 0-9, '_', '-') or such a prefix followed by *",
                )
        names = frozenset(e for e in claim if not e.endswith("*"))
        return cls(names, tuple(e[:-1] for e in claim if e.endswith("*")))

    def allows(self, room: str) -> bool:
        return room in self.names or room.startswith(self.prefixes)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token says the client is: `sub`, the display `name`, the expiry `exp`
    (seconds since the epoch) and the rooms it may use (`rooms` None: every room)."""

    sub: str
    name: str
    exp: int
    rooms: RoomGrant | None = field(default=None)

    def allows(self, room: str) -> bool:
        return self.rooms is None or self.rooms.allows(room)


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON)
        return False
    return True


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """PROTOCOL.md's claim rules over a verified payload; raises AuthError("bad_claims")."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SUB or not _encodable(sub):
        raise AuthError("bad_claims", f"the sub claim must be a string of 1-{MAX_SUB} characters")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AuthError("bad_claims", "the exp claim must be a number of seconds since the epoch")
    raw_name = claims.get("name")
    if raw_name is None:
        try:
            name = validate_name(sub[:32])
        except ProtocolError as exc:
            raise AuthError(
                "bad_claims",
                f"the token has no name claim and its sub cannot serve as one ({exc.message});"
                " add a name claim",
            ) from None
    else:
        if not isinstance(raw_name, str) or not _encodable(raw_name):
            raise AuthError("bad_claims", "the name claim must be a string")
        try:
            name = validate_name(raw_name)
        except ProtocolError as exc:
            raise AuthError(
                "bad_claims", f"the name claim is not a valid name: {exc.message}"
            ) from None
    rooms = RoomGrant.parse(claims["rooms"]) if "rooms" in claims else None
    return Identity(sub, name, int(exp), rooms)


def bearer_token(authorization: str | None, query: str | None) -> str:
    """The token of a request: its `Authorization: Bearer` header or its `token` parameter.

    Raises AuthError("missing") without either, ("malformed") for another scheme or both.
    """
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("malformed", "the Authorization header must be 'Bearer <token>'")
        if query is not None:
            raise AuthError(
                "malformed",
                "give the token once: in the Authorization header or as token=, not both",
            )
        return value.strip()
    if query is None:
        raise AuthError(
            "missing",
            "a token is required: give it as the token query parameter or in an "
            "Authorization: Bearer header",
        )
    if not query:
        raise AuthError("missing", "the token parameter is empty")
    return query


# --- keys from the configuration ---------------------------------------------------------


def load_secret(path: str) -> bytes:
    """The HS256 secret in `path` (surrounding whitespace, such as a final newline, is not
    part of it); ValueError with a one-line reason if unusable."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET:
        raise ValueError(
            f"the secret in {path!r} is {len(secret)} bytes; HS256 needs at least {MIN_SECRET} "
            "(e.g. openssl rand -base64 48)"
        )
    return secret


def load_public_key(path: str) -> tuple[str, Any]:
    """(algorithm, key) of the PEM public key (or certificate) in `path`: RS256 for an RSA
    key of at least 2048 bits, ES256 for a P-256 key. ValueError if unusable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise ValueError(
            f"{path!r} holds a private key; give the public key (openssl pkey -pubout)"
        )
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise ValueError(f"{path!r} is not a PEM public key or certificate") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"the RSA key in {path!r} has {key.key_size} bits; at least {MIN_RSA_BITS}"
            )
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"the EC key in {path!r} is on {key.curve.name}; ES256 needs P-256")
        return "ES256", key
    raise ValueError(f"the key in {path!r} is neither RSA nor EC P-256 (RS256 or ES256)")


def check_config(config: Config) -> None:
    """Load the configured key once, so a bad file fails at start with its reason."""
    if config.auth_secret_file:
        load_secret(config.auth_secret_file)
    elif config.auth_public_key_file:
        load_public_key(config.auth_public_key_file)


# --- verification --------------------------------------------------------------------------


def token_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, read without verifying: to pick the key and refuse a bad
    `alg` early. Lenient (PyJWT's decode checks the encoding strictly afterwards) and cheaper
    than jwt.get_unverified_header, which parses every part: a verification parses once."""
    head, dot, _ = token.partition(".")
    try:
        if not dot:
            raise ValueError("one part")
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise AuthError("malformed", "the token is not a JWT (header.payload.signature)")
    return header


def _refusal(exc: jwt.PyJWTError, config: Config) -> AuthError:
    """The AuthError for one of PyJWT's refusals, naming the check that failed."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError(
            "expired",
            f"the token has expired (exp is past, beyond a leeway of {config.auth_leeway:g} s);"
            " get a fresh one",
        )
    if isinstance(exc, jwt.ImmatureSignatureError):
        claim = "nbf" if "nbf" in str(exc) else "iat"
        return AuthError("not_yet_valid", f"the token is not valid yet ({claim} is in the future)")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        if exc.claim == "aud":
            return AuthError(
                "wrong_audience", f"the token has no aud claim; it must be {config.auth_audience!r}"
            )
        if exc.claim == "iss":
            return AuthError(
                "wrong_issuer", f"the token has no iss claim; it must be {config.auth_issuer!r}"
            )
        return AuthError("bad_claims", f"the token has no {exc.claim} claim")
    if isinstance(exc, jwt.InvalidAudienceError):
        return AuthError(
            "wrong_audience",
            f"the token's aud is not {config.auth_audience!r}: not for this service",
        )
    if isinstance(exc, jwt.InvalidIssuerError):
        return AuthError("wrong_issuer", f"the token's iss is not {config.auth_issuer!r}")
    if isinstance(exc, jwt.InvalidSignatureError):
        return AuthError("bad_signature", "the token's signature does not match the configured key")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return AuthError("bad_algorithm", f"the token's algorithm is not accepted ({exc})")
    if isinstance(exc, jwt.InvalidKeyError):
        return AuthError("unknown_key", f"the token's signing key is not usable ({exc})")
    if isinstance(exc, InvalidSubjectError | jwt.InvalidIssuedAtError | InvalidJTIError):
        return AuthError("bad_claims", f"the token's claims are invalid: {exc}")
    return AuthError("malformed", f"the token is malformed: {exc}")


class Verifier:
    """Verifies tokens against the configured key; created by the node when a key source is
    configured. `start` (JWKS: fetch the keys early) and `close` it with the node."""

    def __init__(self, config: Config, jwks: JwksKeys | None = None) -> None:
        self._config = config
        self._audience = config.auth_audience or None
        self._issuer = config.auth_issuer or None
        self._static: tuple[str, Any] | None = None
        self._jwks: JwksKeys | None = None
        if config.auth_secret_file:
            self._static = ("HS256", load_secret(config.auth_secret_file))
        elif config.auth_public_key_file:
            self._static = load_public_key(config.auth_public_key_file)
        elif config.auth_jwks_url:
            self._jwks = jwks or JwksKeys(config.auth_jwks_url, ASYMMETRIC)
        else:
            raise ValueError("no key source configured: anonymous mode needs no Verifier")
        self.algorithms = (self._static[0],) if self._static else ASYMMETRIC
        self._options: dict[str, Any] = {
            "require": ["exp", "sub"],
            "verify_aud": self._audience is not None,
            "enforce_minimum_key_length": True,
        }

    async def start(self) -> None:
        if self._jwks is not None:
            self._jwks.prefetch()

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()

    async def verify(self, token: str) -> Identity:
        """The identity of a valid token. Raises AuthError, or KeysUnavailable when the
        JWKS cannot be fetched and no key is known (the caller answers 503: retry)."""
        if len(token) > MAX_TOKEN:
            raise AuthError("malformed", f"the token is longer than {MAX_TOKEN} bytes")
        header = token_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            shown = repr(alg[:20]) if isinstance(alg, str) else "missing"
            accepted = " or ".join(self.algorithms)
            raise AuthError(
                "bad_algorithm",
                f"the token's algorithm (alg) is {shown}; this service accepts only {accepted}",
            )
        if self._static is not None:
            key: Any = self._static[1]
        else:
            assert self._jwks is not None
            kid = header.get("kid")
            key = await self._jwks.key(kid if isinstance(kid, str) else None, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._config.auth_leeway,
                options=self._options,  # type: ignore[arg-type]  # PyJWT's TypedDict
            )
        except jwt.PyJWTError as exc:
            raise _refusal(exc, self._config) from None
        return identity_from_claims(claims)
