"""jwks.py against a real JWKS endpoint on loopback: keys are cached by kid, fetched again on
an unknown kid at most once per cooldown (concurrent lookups share one fetch), again after
their lifespan, and kept when a fetch fails. Short cooldowns and lifespans keep it quick."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.support.servers import free_port
from tests.support.timing import poll
from tests.support.tokens import TestKeys
from webchat.auth import ASYMMETRIC, AuthError
from webchat.jwks import JwksKeys, KeysUnavailable

COOLDOWN = 0.3


@dataclass
class Endpoint:
    url: str
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    requests: int = 0


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    port = free_port()
    served = Endpoint(f"http://127.0.0.1:{port}/jwks.json")

    async def handler(request: web.Request) -> web.Response:
        served.requests += 1
        if served.status != 200:
            return web.Response(status=served.status, text="down for maintenance")
        return web.json_response({"keys": served.keys})

    app = web.Application()
    app.router.add_get("/jwks.json", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield served
    await runner.cleanup()


async def unknown(jwks: JwksKeys, kid: str | None, alg: str = "RS256") -> str:
    with pytest.raises(AuthError) as info:
        await jwks.key(kid, alg)
    return info.value.reason


async def after_cooldown() -> None:
    # The bound under test is a time: nothing else to wait for.
    await asyncio.sleep(COOLDOWN * 1.2)


async def test_an_unknown_kid_fetches_again_at_most_once_per_cooldown(endpoint, keys: TestKeys):
    endpoint.keys = [keys.jwk(keys.rsa, "old")]
    jwks = JwksKeys(endpoint.url, ASYMMETRIC, cooldown=COOLDOWN, lifespan=60)
    try:
        assert (await jwks.key("old", "RS256")).key_id == "old"
        assert endpoint.requests == 1
        # The keys rotate; a flood of tokens with the new kid (and made-up ones) arrives at
        # once: one fetch in the cooldown, which came too early to see the new key.
        endpoint.keys = [keys.jwk(keys.rsa, "old"), keys.jwk(keys.ec, "new")]
        reasons = await asyncio.gather(
            *(
                unknown(jwks, kid, "ES256")
                for kid in ["new"] * 20 + [f"made-up-{i}" for i in range(20)]
            )
        )
        assert set(reasons) == {"unknown_key"} and endpoint.requests == 1
        await after_cooldown()
        # Concurrent lookups after the cooldown share one fetch, which finds the new key.
        found = await asyncio.gather(*(jwks.key("new", "ES256") for _ in range(20)))
        assert {k.key_id for k in found} == {"new"} and endpoint.requests == 2
        assert await unknown(jwks, "made-up", "ES256") == "unknown_key"
        assert endpoint.requests == 2
        assert await unknown(jwks, "new", "RS256") == "bad_algorithm"  # the key says ES256
    finally:
        await jwks.close()


async def test_keys_are_fetched_again_after_their_lifespan(endpoint, keys: TestKeys):
    endpoint.keys = [keys.jwk(keys.rsa, "a")]
    jwks = JwksKeys(endpoint.url, ASYMMETRIC, cooldown=0, lifespan=COOLDOWN)
    try:
        await jwks.key("a", "RS256")
        await jwks.key("a", "RS256")
        assert endpoint.requests == 1
        endpoint.keys = [keys.jwk(keys.ec, "b")]  # "a" is withdrawn, "b" comes
        await after_cooldown()
        # Past its lifespan the set is fetched again; "b" waits for that fetch...
        assert (await jwks.key("b", "ES256")).key_id == "b"
        assert endpoint.requests == 2
        # ...and "a" is gone with it.
        assert await unknown(jwks, "a") == "unknown_key"
    finally:
        await jwks.close()


async def test_a_failed_fetch_keeps_the_keys_known(endpoint, keys: TestKeys, caplog):
    jwks = JwksKeys(endpoint.url, ASYMMETRIC, cooldown=COOLDOWN, lifespan=COOLDOWN)
    try:
        endpoint.status = 503
        with pytest.raises(KeysUnavailable):  # nothing known yet: the caller answers 503
            await jwks.key("a", "RS256")
        endpoint.status = 200
        endpoint.keys = [keys.jwk(keys.rsa, "a")]
        with pytest.raises(KeysUnavailable):  # the cooldown holds for failures too
            await jwks.key("a", "RS256")
        assert endpoint.requests == 1
        await after_cooldown()
        assert (await jwks.key("a", "RS256")).key_id == "a"
        endpoint.status = 503
        await after_cooldown()
        # Past its lifespan: used at once, while the set is fetched again in the background.
        assert (await jwks.key("a", "RS256")).key_id == "a"

        def failures() -> int:
            return sum("fetching the JWKS failed" in r.getMessage() for r in caplog.records)

        await poll(lambda: failures() == 2, 5, "the background fetch to fail")
        assert endpoint.requests == 3
        assert (await jwks.key("a", "RS256")).key_id == "a"  # stale, but better than none
    finally:
        await jwks.close()


async def test_unusable_keys_are_skipped(endpoint, keys: TestKeys):
    hmac_key = {
        "kty": "oct",
        "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
        "kid": "hs",
        "alg": "HS256",
    }
    encryption = {**keys.jwk(keys.rsa, "enc"), "use": "enc"}
    endpoint.keys = [hmac_key, encryption, keys.jwk(keys.ec, "ec")]
    jwks = JwksKeys(endpoint.url, ASYMMETRIC, cooldown=COOLDOWN)
    try:
        # A JWKS never makes a symmetric key usable: no HS256 "public" key.
        assert await unknown(jwks, "hs", "HS256") == "unknown_key"
        assert await unknown(jwks, "enc") == "unknown_key"
        # A token without kid is fine when the set has one usable key.
        assert (await jwks.key(None, "ES256")).key_id == "ec"
    finally:
        await jwks.close()
