"""Real signed tokens for the tests: keys generated per run, tokens signed with PyJWT.

`TestKeys` writes what the service is configured with (the HS256 secret file, the RSA and EC
public keys as PEM) and signs tokens with the matching secret or private key. `forge` builds
tokens PyJWT refuses to make: `alg: none`, and HS256 "signed" with the RSA public key
(the algorithm-confusion attack), byte for byte as an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(sub: str = "alice", ttl: float = 300, **extra: Any) -> dict[str, Any]:
    """Valid claims for `sub`, expiring `ttl` seconds from now; `extra` adds or replaces
    (a value of None removes the claim)."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl)}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


class TestKeys:
    """An HS256 secret, an RSA 2048 and an EC P-256 key pair, written under `folder`."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, folder: Path) -> None:
        self.secret = base64.b64encode(hashlib.sha256(folder.name.encode()).digest() * 2)
        self.rsa = rsa.generate_private_key(65537, 2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other_rsa = rsa.generate_private_key(65537, 2048)  # a key the service trusts not
        self.secret_file = folder / "secret"
        self.secret_file.write_bytes(self.secret + b"\n")
        self.rsa_file = folder / "rsa.pem"
        self.rsa_file.write_bytes(_public_pem(self.rsa))
        self.ec_file = folder / "ec.pem"
        self.ec_file.write_bytes(_public_pem(self.ec))

    @property
    def rsa_pem(self) -> bytes:
        return self.rsa_file.read_bytes()

    def hs(self, body: dict[str, Any], secret: bytes | None = None) -> str:
        return jwt.encode(body, secret or self.secret, algorithm="HS256")

    def rs(self, body: dict[str, Any], key: rsa.RSAPrivateKey | None = None, **headers: Any) -> str:
        return jwt.encode(body, key or self.rsa, algorithm="RS256", headers=headers or None)

    def es(self, body: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(body, self.ec, algorithm="ES256", headers=headers or None)

    def jwk(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
        """The public key as a JWKS entry."""
        if isinstance(key, rsa.RSAPrivateKey):
            entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            entry["alg"] = "RS256"
        else:
            entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        entry.update(kid=kid, use="sig")
        return dict(entry)


def forge(header: dict[str, Any], body: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token PyJWT would not sign: any header; HMAC-SHA256 with `hmac_key`, or no signature."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
