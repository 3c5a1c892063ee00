"""Authenticated mode against real servers and real tokens (PROTOCOL.md 1.1 "Identity"):
every refusal says which check failed, `alg: none` and algorithm confusion fail, the rooms
claim governs /ws and the HTTP API, refresh, 4001 at expiry, JWKS keys, `webchat token`, and
no token ever reaches the log."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.contract.helpers import UPGRADE_HEADERS, nothing_else
from tests.integration.test_cli import clean_env
from tests.support.client import ChatClient
from tests.support.servers import ROOT, WebchatProcess, free_port
from tests.support.timing import poll, seconds
from tests.support.tokens import TestKeys, claims, forge

AUD, ISS = "webchat", "https://id.example/"


@pytest.fixture
def servers() -> Iterator[Any]:
    started: list[WebchatProcess] = []

    def start(*args: str) -> WebchatProcess:
        proc = WebchatProcess("--drain-delay", "0", "--drain-spread", "0", *args)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


async def refusal(
    session: aiohttp.ClientSession,
    url: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **params: str,
) -> tuple[int, dict[str, Any], str | None]:
    """(status, JSON body, WWW-Authenticate) of a GET (an upgrade request for /ws)."""
    query = {**params, **({"token": token} if token is not None else {})}
    extra = UPGRADE_HEADERS if url.endswith("/ws") else {}
    async with session.get(
        url, params=query, headers={**extra, **(headers or {})}, timeout=seconds(10)
    ) as response:
        return response.status, await response.json(), response.headers.get("WWW-Authenticate")


async def metric(session: aiohttp.ClientSession, server: WebchatProcess, series: str) -> float:
    async with session.get(f"{server.url}/metrics") as response:
        body = await response.text()
    match = re.search(rf"^{re.escape(series)} (\S+)$", body, re.MULTILINE)
    assert match, f"{series} not in /metrics"
    return float(match[1])


def refusals(keys: TestKeys) -> list[tuple[str, dict[str, Any], str, str]]:
    """(token, request options, reason, what the message says) for every refusal."""
    good = claims("alice", aud=AUD, iss=ISS)
    hs = keys.hs
    return [
        ("", {}, "missing", "token is required"),
        ("", {"token": ""}, "missing", "empty"),
        ("", {"headers": {"Authorization": "Basic YWxpY2U6cHc="}}, "malformed", "Bearer"),
        (hs(good), {"both": True}, "malformed", "not both"),
        ("not.a-jwt", {}, "malformed", "not a JWT"),
        (forge({"alg": "none"}, good), {}, "bad_algorithm", "'none'"),
        (keys.rs(good), {}, "bad_algorithm", "'RS256'; this service accepts only HS256"),
        (
            hs(good, secret=b"another-secret-of-at-least-32-bytes!"),
            {},
            "bad_signature",
            "signature",
        ),
        (hs({**good, "exp": good["iat"] - 5}), {}, "expired", "expired"),
        (hs({**good, "nbf": good["iat"] + 120}), {}, "not_yet_valid", "nbf"),
        (hs({**good, "iat": good["iat"] + 120}), {}, "not_yet_valid", "iat"),
        (hs({**good, "aud": "another-service"}), {}, "wrong_audience", "aud"),
        (hs(claims("alice", iss=ISS)), {}, "wrong_audience", "no aud"),
        (hs({**good, "iss": "https://evil.example/"}), {}, "wrong_issuer", "iss"),
        (hs(claims("alice", aud=AUD)), {}, "wrong_issuer", "no iss"),
        (hs(claims(None, aud=AUD, iss=ISS)), {}, "bad_claims", "sub"),  # type: ignore[arg-type]
        (hs({**good, "sub": "x" * 129}), {}, "bad_claims", "1-128"),
        (hs({k: v for k, v in good.items() if k != "exp"}), {}, "bad_claims", "exp"),
        (hs({**good, "name": "al\u200bice"}), {}, "bad_claims", "format characters"),
        (hs({**good, "name": 42}), {}, "bad_claims", "name"),
        (hs({**good, "rooms": "lobby"}), {}, "bad_claims", "list"),
        (hs({**good, "rooms": ["team *"]}), {}, "bad_claims", "'team *'"),
    ]


async def test_every_refusal_says_which_check_failed(servers, keys):
    server = servers(
        "--auth-secret-file", str(keys.secret_file), "--auth-audience", AUD,
        "--auth-issuer", ISS, "--auth-leeway", "0", "--log-level", "debug",
    )  # fmt: skip
    cases = refusals(keys)
    counts: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        for token, options, reason, says in cases:
            params = {"room": "lobby"}
            headers = options.get("headers")
            if "token" in options:
                params["token"] = options["token"]
            elif options.get("both"):
                params["token"] = token
                headers = {"Authorization": f"Bearer {token}"}
            elif token:
                params["token"] = token
            for path in ("/ws", "/api/rooms", "/api/rooms/lobby/messages"):
                status, body, challenge = await refusal(
                    session, server.url + path, headers=headers, **params
                )
                assert status == 401, (reason, path, body)
                assert body["error"]["code"] == "unauthorized", body
                assert says in body["error"]["message"], (reason, body)
                expected = 'Bearer realm="webchat"' + (
                    "" if reason == "missing" else ', error="invalid_token"'
                )
                assert challenge == expected
                counts[reason] = counts.get(reason, 0) + 1
        # A WebSocket client sees the 401 too, before any upgrade.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(server.ws_url, params={"token": cases[4][0]})
        assert refused.value.status == 401
        counts["malformed"] += 1

        for reason, count in counts.items():
            series = f'webchat_auth_failures_total{{reason="{reason}"}}'
            assert await metric(session, server, series) == count, reason
        ws_attempts = len(cases) + 1
        status = 'webchat_connections_total{status="unauthorized"}'
        assert await metric(session, server, status) == ws_attempts
        assert await metric(session, server, 'webchat_connections_total{status="accepted"}') == 0
        # The good token of these cases is accepted.
        good = keys.hs(claims("alice", name="Alice", aud=AUD, iss=ISS))
        alice = await ChatClient.connect(session, server.ws_url, token=good)
        assert alice.welcome is not None and alice.welcome["name"] == "Alice"
        await alice.close()

    # Nothing of any token reached the log, which has every refusal at debug level.
    log = server.log()
    assert log.count("token refused on /ws") == ws_attempts, log[-2000:]
    assert_no_token_in(log, [good] + [t for t, _, _, _ in cases if t])


def assert_no_token_in(log: str, tokens: list[str]) -> None:
    for token in tokens:
        for part in token.split("."):
            if len(part) >= 16:  # header, claims, signature: none of them, not even alone
                assert part not in log, f"a token part is in the log: {part[:12]}..."


async def test_alg_none_and_key_confusion_are_refused(servers, keys):
    rsa = servers("--auth-public-key-file", str(keys.rsa_file))
    ec = servers("--auth-public-key-file", str(keys.ec_file))
    body = claims("alice")
    async with aiohttp.ClientSession() as session:
        for server, good, pem in ((rsa, keys.rs(body), keys.rsa_pem), (ec, keys.es(body), None)):
            client = await ChatClient.connect(session, server.ws_url, token=good)
            await client.close()
            pem = pem or keys.ec_file.read_bytes()
            attacks = {
                # HS256 with the public key (known to all) as the HMAC secret.
                "bad_algorithm": [
                    forge({"alg": "HS256", "typ": "JWT"}, body, hmac_key=pem),
                    forge({"alg": "none", "typ": "JWT"}, body),
                    forge({"alg": "None"}, body),
                    keys.hs(body),
                    keys.es(body) if server is rsa else keys.rs(body),
                ],
                "bad_signature": [
                    keys.rs(body, key=keys.other_rsa)
                    if server is rsa
                    else forge({"alg": "ES256"}, body, hmac_key=b"x"),
                    forge({"alg": "RS256" if server is rsa else "ES256"}, body, hmac_key=pem),
                ],
            }
            for reason, tokens in attacks.items():
                for token in tokens:
                    status, answer, _ = await refusal(session, server.ws_url, token=token)
                    assert (status, answer["error"]["code"]) == (401, "unauthorized"), answer
                series = f'webchat_auth_failures_total{{reason="{reason}"}}'
                assert await metric(session, server, series) == len(tokens), reason


async def test_the_rooms_claim_governs_rooms_history_and_the_listing(servers, keys):
    server = servers("--auth-secret-file", str(keys.secret_file))
    everywhere = keys.hs(claims("admin"))
    team = keys.hs(claims("ann", rooms=["lobby", "team-*"]))
    nowhere = keys.hs(claims("nobody", rooms=[]))
    async with aiohttp.ClientSession() as session:
        for room in ("lobby", "team-a", "team-", "other"):
            client = await ChatClient.connect(session, server.ws_url, room=room, token=everywhere)
            await client.send(f"in {room}")
            await client.expect("message")
            await client.close()
        for room in ("lobby", "team-a", "team-"):
            client = await ChatClient.connect(session, server.ws_url, room=room, token=team)
            assert client.welcome is not None and client.welcome["room"] == room
            await client.close()
        for room, token in (("teams", team), ("other", team), ("lobby2", team), ("lobby", nowhere)):
            status, body, _ = await refusal(session, server.ws_url, token=token, room=room)
            assert (status, body["error"]["code"]) == (403, "forbidden_room"), (room, body)
            assert room in body["error"]["message"]
            url = f"{server.url}/api/rooms/{room}/messages"
            status, body, _ = await refusal(
                session, url, headers={"Authorization": f"Bearer {token}"}
            )
            assert (status, body["error"]["code"]) == (403, "forbidden_room"), (room, body)
        assert (
            await metric(session, server, 'webchat_connections_total{status="forbidden_room"}') == 4
        )

        async def listed(token: str) -> set[str]:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{server.url}/api/rooms", headers=headers) as response:
                assert response.status == 200
                return {r["room"] for r in (await response.json())["rooms"]}

        assert await listed(everywhere) == {"lobby", "team-a", "team-", "other"}
        assert await listed(team) == {"lobby", "team-a", "team-"}
        assert await listed(nowhere) == set()
        url = f"{server.url}/api/rooms/team-a/messages"
        async with session.get(url, params={"token": team}) as response:
            messages = (await response.json())["messages"]
        assert [(m["text"], m["user"]) for m in messages] == [("in team-a", "admin")]


async def test_refresh_keeps_a_connection_past_its_expiry_and_4001_ends_the_other(servers, keys):
    server = servers(
        "--auth-secret-file", str(keys.secret_file), "--auth-leeway", "0", "--log-level", "debug"
    )
    first = claims("alice", ttl=5, rooms=["r"])
    short = keys.hs(first)
    async with aiohttp.ClientSession() as session:
        kept = await ChatClient.connect(session, server.ws_url, room="r", token=short)
        ends = await ChatClient.connect(session, server.ws_url, room="r", token=short)
        used = [short]

        async def refresh(token: str) -> dict[str, Any]:
            used.append(token)
            await kept.ws.send_str(json.dumps({"type": "refresh", "token": token}))
            return await kept.recv()

        refused = {
            "expired": keys.hs(claims("alice", ttl=-10)),
            "signature": keys.hs(claims("alice", ttl=60), secret=b"z" * 40),
            "another user": keys.hs(claims("mallory", ttl=60)),
            "does not allow room r": keys.hs(claims("alice", ttl=60, rooms=["elsewhere"])),
        }
        for says, token in refused.items():
            frame = await refresh(token)
            assert frame["type"] == "error" and frame["code"] == "unauthorized", frame
            assert says in frame["message"] and "keeps its current token" in frame["message"]
        assert (
            await metric(session, server, 'webchat_auth_failures_total{reason="other_user"}') == 1
        )
        await kept.ws.send_str(json.dumps({"type": "refresh"}))
        assert (await kept.expect("error"))["code"] == "bad_message"
        # The connection is still there, on its old token: it chats.
        await nothing_else(kept, ends)

        longer = claims("alice", ttl=120, rooms=["r"])
        assert await refresh(keys.hs(longer)) == {"type": "refreshed", "exp": longer["exp"]}
        # At the first token's expiry the unrefreshed connection is closed with 4001...
        code = await ends.closed(timeout=10)
        assert code == 4001 and ends.ws.close_code == 4001
        assert (
            await metric(session, server, 'webchat_disconnections_total{reason="token_expired"}')
            == 1
        )
        # ...the refreshed one is past that expiry and open.
        await kept.send("still here")
        assert (await kept.expect("message"))["text"] == "still here"
        await kept.close()
    assert_no_token_in(server.log(), used + list(refused.values()))


async def test_a_refresh_frame_costs_a_rate_limit_token(servers, keys):
    server = servers("--auth-secret-file", str(keys.secret_file), "--burst", "2", "--rate", "0.1")
    async with aiohttp.ClientSession() as session:
        token = keys.hs(claims("alice"))
        client = await ChatClient.connect(session, server.ws_url, token=token)
        for _ in range(3):
            await client.ws.send_str(json.dumps({"type": "refresh", "token": token}))
        assert (await client.recv())["type"] == "refreshed"
        assert (await client.recv())["type"] == "refreshed"
        assert (await client.recv())["code"] == "rate_limited"


def run_token(*args: str, secret_file: str | None) -> subprocess.CompletedProcess[str]:
    env = clean_env(**({"AUTH_SECRET_FILE": secret_file} if secret_file else {}))
    return subprocess.run(
        [sys.executable, "-m", "webchat", "token", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds(20), check=False,
    )  # fmt: skip


async def test_webchat_token_issues_tokens_the_service_accepts(servers, keys):
    server = servers("--auth-secret-file", str(keys.secret_file))
    result = run_token(
        "--sub", "alice", "--name", "Alice", "--rooms", "team-*", "--ttl", "1h",
        secret_file=str(keys.secret_file),
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    token = result.stdout.strip()
    async with aiohttp.ClientSession() as session:
        client = await ChatClient.connect(session, server.ws_url, room="team-x", token=token)
        assert client.welcome is not None and client.welcome["name"] == "Alice"
        status, body, _ = await refusal(session, server.ws_url, token=token, room="lobby")
        assert (status, body["error"]["code"]) == (403, "forbidden_room")
    # A refusal is one line and status 2 (every other case: tests/unit/test_auth.py).
    failed = run_token("--sub", "alice", secret_file=None)
    assert failed.returncode == 2 and failed.stdout == "", failed
    assert (
        failed.stderr == "webchat token: error: give --auth-secret-file or set AUTH_SECRET_FILE\n"
    )


async def test_the_page_is_given_its_token_source(servers, keys):
    server = servers("--auth-secret-file", str(keys.secret_file), "--auth-token-url", "/auth/token")
    async with aiohttp.ClientSession() as session, session.get(server.url + "/") as response:
        page = await response.text()
    assert response.status == 200 and response.headers["Cache-Control"] == "no-cache"
    assert '<html lang="en" data-token-url="/auth/token">' in page
    assert "Content-Security-Policy" in page


# --- JWKS --------------------------------------------------------------------------------------


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A JWKS endpoint on loopback: (its URL, the JSON it serves, which the test may change)."""
    served: dict[str, Any] = {"keys": []}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(served)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/.well-known/jwks.json", served
    await runner.cleanup()


async def test_keys_from_a_jwks_url(servers, keys, jwks_server):
    url, served = jwks_server
    served["keys"] = [keys.jwk(keys.rsa, "rsa-1"), keys.jwk(keys.ec, "ec-1")]
    # Started from a thread: the JWKS server runs in this test's event loop.
    server = await asyncio.to_thread(servers, "--auth-jwks-url", url)
    body = claims("alice")
    async with aiohttp.ClientSession() as session:
        for token in (keys.rs(body, kid="rsa-1"), keys.es(body, kid="ec-1")):
            client = await ChatClient.connect(session, server.ws_url, token=token)
            await client.close()
        cases = {
            "unknown_key": keys.rs(body, kid="rsa-2"),
            "bad_signature": keys.rs(body, key=keys.other_rsa, kid="rsa-1"),
            "bad_algorithm": keys.es(body, kid="rsa-1"),  # ES256 on the RSA key's id
        }
        for reason, token in cases.items():
            status, answer, _ = await refusal(session, server.ws_url, token=token)
            assert status == 401, answer
            series = f'webchat_auth_failures_total{{reason="{reason}"}}'
            assert await metric(session, server, series) == 1, (reason, answer)
        for forged in (
            forge({"alg": "none", "kid": "rsa-1"}, body),
            forge({"alg": "HS256", "kid": "rsa-1"}, body, hmac_key=b"k" * 32),
        ):
            status, answer, _ = await refusal(session, server.ws_url, token=forged)
            assert status == 401 and "accepts only RS256 or ES256" in answer["error"]["message"]


async def test_an_unreachable_jwks_url_is_503_not_401(servers, keys):
    server = servers("--auth-jwks-url", f"http://127.0.0.1:{free_port()}/jwks.json")
    async with aiohttp.ClientSession() as session:

        async def answered() -> tuple[int, dict[str, Any], str | None]:
            token = keys.rs(claims("alice"), kid="rsa-1")
            return await refusal(session, server.ws_url, token=token)

        status, body, _ = await poll(answered, 10, "an answer")
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        assert "JWKS" in body["error"]["message"]
        assert await metric(session, server, 'webchat_connections_total{status="unavailable"}') == 1
