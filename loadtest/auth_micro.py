"""What authenticated mode costs per connection: one token verification, by algorithm.

    .venv/bin/python loadtest/auth_micro.py [--rounds 5] [--n 2000]

Verifies the same valid token `n` times per round with webchat's Verifier (PyJWT, the claim
rules, the rooms claim) for HS256, RS256 (2048-bit) and ES256 (P-256), and prints the best
round's CPU microseconds per verification (process time, so waiting for a core shared with
other work is not counted): the CPU a connect (and a refresh) costs on top of anonymous mode.
The rounds interleave the algorithms, so a busy machine skews them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from webchat.auth import Verifier
from webchat.config import Config


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def setups(folder: Path) -> dict[str, tuple[Verifier, str]]:
    now = int(time.time())
    claims = {"sub": "u-1", "name": "Alice", "rooms": ["lobby", "team-*"]}
    claims.update(iat=now, exp=now + 3600)
    secret = b"s" * 48
    (folder / "secret").write_bytes(secret)
    rsa_key = rsa.generate_private_key(65537, 2048)
    (folder / "rsa.pem").write_bytes(_public_pem(rsa_key))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "ec.pem").write_bytes(_public_pem(ec_key))
    return {
        "HS256": (
            Verifier(Config(auth_secret_file=str(folder / "secret"))),
            jwt.encode(claims, secret, algorithm="HS256"),
        ),
        "RS256": (
            Verifier(Config(auth_public_key_file=str(folder / "rsa.pem"))),
            jwt.encode(claims, rsa_key, algorithm="RS256"),
        ),
        "ES256": (
            Verifier(Config(auth_public_key_file=str(folder / "ec.pem"))),
            jwt.encode(claims, ec_key, algorithm="ES256"),
        ),
    }


async def measure(verifier: Verifier, token: str, n: int) -> float:
    """CPU microseconds per verification over `n` in a row."""
    started = time.process_time()
    for _ in range(n):
        await verifier.verify(token)
    return (time.process_time() - started) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cases = setups(Path(folder))
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, (verifier, token) in cases.items():
                micros = await measure(verifier, token, args.n)
                best[name] = min(best.get(name, micros), micros)
    print(f"python {platform.python_version()}, PyJWT {jwt.__version__}, best of {args.rounds}")
    for name, micros in best.items():
        print(f"{name}: {micros:7.1f} µs CPU per verification ({1e6 / micros:,.0f}/s on one core)")


if __name__ == "__main__":
    asyncio.run(main())
