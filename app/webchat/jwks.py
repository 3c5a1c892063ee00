"""Signing keys from a JWKS URL, cached, refreshed on an unknown key id at a bounded rate.

PyJWT's `PyJWKClient` fetches and parses the key set (http(s) only, no redirects, a timeout);
it is synchronous, so every fetch runs in a worker thread and the event loop never waits on
the network. The keys are kept here, by `kid`, and looked up without a thread or a lock.

When keys rotate, tokens with a new `kid` arrive: the set is fetched again, at most once per
`cooldown` seconds (a flood of tokens with made-up `kid`s costs the key server one request per
cooldown per instance, not one per token). Concurrent lookups share one fetch. The set is
also fetched again once it is `lifespan` seconds old (in the background: known keys are used
meanwhile), so removed keys stop being accepted. When a fetch fails the keys known so far
stay in use; with none known the caller answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Final

import jwt
from jwt import PyJWK, PyJWKClient

log = logging.getLogger(__name__)

LIFESPAN: Final = 300.0  # seconds a fetched key set is used before it is fetched again
COOLDOWN: Final = 10.0  # at most one fetch this often, whatever the tokens say
TIMEOUT: Final = 5.0  # one fetch, connect and read


class KeysUnavailable(Exception):
    """No signing key is known and the JWKS URL cannot be fetched: answer 503, retry later."""


class JwksKeys:
    """The signing keys of `url` usable with `algorithms`, by key id. Create it in the event
    loop; `close` it (it owns the fetch in flight)."""

    def __init__(
        self,
        url: str,
        algorithms: Iterable[str],
        *,
        lifespan: float = LIFESPAN,
        cooldown: float = COOLDOWN,
        timeout: float = TIMEOUT,
    ) -> None:
        # The client's own cache is off: the keys are cached here, by kid, for the loop.
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
        self._algorithms = frozenset(algorithms)
        self._lifespan = lifespan
        self._cooldown = cooldown
        self._keys: dict[str, PyJWK] = {}
        self._fetched = float("-inf")  # loop time of the last successful fetch
        self._tried = float("-inf")  # loop time of the last attempt, successful or not
        self._fetch: asyncio.Task[None] | None = None
        self.fetches = 0  # attempts so far, for tests and logs

    def prefetch(self) -> None:
        """Start fetching now, so the first client does not wait for it."""
        self._start_fetch()

    async def close(self) -> None:
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch

    async def key(self, kid: str | None, alg: str) -> PyJWK:
        """The key `kid` names, for a token signed with `alg`.

        Raises webchat.auth.AuthError("unknown_key") if no known key matches (after one
        fetch, unless the cooldown forbids it), KeysUnavailable if no key is known at all.
        """
        from webchat.auth import AuthError  # auth imports this module

        now = asyncio.get_running_loop().time()
        found = self._find(kid)
        fetch = self._fetch if self._fetch is not None and not self._fetch.done() else None
        stale = now - self._fetched > self._lifespan
        if fetch is None and (stale or found is None) and now - self._tried >= self._cooldown:
            fetch = self._start_fetch()
        if found is None and fetch is not None:
            # Wait for the fetch (shared with every other lookup); a known key is used at
            # once, even while its set is being fetched again after its lifespan.
            await asyncio.shield(fetch)
            found = self._find(kid)
        if found is None:
            if not self._keys:
                raise KeysUnavailable("the signing keys (JWKS) cannot be fetched; retry later")
            raise AuthError(
                "unknown_key",
                "the token's key id (kid) matches no key of the configured JWKS"
                if kid is not None
                else "the token has no key id (kid), and the JWKS holds several keys",
            )
        if found.algorithm_name != alg:
            raise AuthError(
                "bad_algorithm",
                f"the token says {alg} but its key {kid!r} is for {found.algorithm_name}",
            )
        return found

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            # A token without a key id names no key; a set of one key needs none.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _start_fetch(self) -> asyncio.Task[None]:
        """The fetch in flight, or a new one: concurrent lookups share it."""
        if self._fetch is None or self._fetch.done():
            self._tried = asyncio.get_running_loop().time()
            self._fetch = asyncio.get_running_loop().create_task(self._refresh())
        return self._fetch

    async def _refresh(self) -> None:
        self.fetches += 1
        try:
            key_set = await asyncio.to_thread(self._client.get_jwk_set, True)
        except jwt.PyJWTError as exc:
            # Logged without the URL's query (it may carry a credential), never raised: the
            # keys known so far stay in use.
            log.warning("fetching the JWKS failed (%s); %d keys stay in use", exc, len(self._keys))
            return
        keys: dict[str, PyJWK] = {}
        for key in key_set.keys:
            usable = key.public_key_use in ("sig", None) and key.algorithm_name in self._algorithms
            if usable and key.key_id:
                keys[key.key_id] = key
            else:
                log.debug(
                    "JWKS key %r skipped (%s, use %s)",
                    key.key_id,
                    key.algorithm_name,
                    key.public_key_use,
                )
        if not keys:
            log.warning(
                "the JWKS holds no signing key for %s", " or ".join(sorted(self._algorithms))
            )
            return
        self._keys = keys
        self._fetched = asyncio.get_running_loop().time()
        log.info("JWKS fetched: %d signing keys", len(keys))
