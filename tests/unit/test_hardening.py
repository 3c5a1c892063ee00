"""Pure rules of the hardening (docs/security.md): connection caps from the descriptor limit,
history pages bounded in bytes, allowed hosts, the security headers, throttled logs."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from webchat import api
from webchat.broker.base import Message
from webchat.config import Config as WebchatConfig
from webchat.limits import MIN_HEADROOM, RESERVE, Budget, budget
from webchat.listener import Throttled, throttle_accept_errors
from webchat.monitor import LoopLag
from webchat.node import Node
from webchat.trim import Trimmer
from webchat.web import CSP, FRONTEND, host_allowed, host_name, origin_allowed

# --- limits.py ------------------------------------------------------------------------------


@pytest.mark.parametrize("nofile", [256, 1024, 20_000, 65_536, 1 << 20])
def test_derived_caps_stay_below_the_descriptor_limit(nofile: int) -> None:
    caps = budget(0, nofile)
    assert 0 < caps.websockets < caps.sockets
    assert caps.sockets - caps.websockets >= MIN_HEADROOM  # room for plain HTTP and the 503s
    assert caps.descriptors <= nofile  # the reserve stays free for Redis, files, listeners
    assert caps.websockets >= (nofile - RESERVE) * 0.85  # and little is wasted


def test_an_explicit_cap_must_fit_the_descriptor_limit() -> None:
    assert budget(1000, 20_000) == Budget(1000, 1100)
    assert budget(10, 20_000) == Budget(10, 10 + MIN_HEADROOM)
    with pytest.raises(ValueError, match=r"100000 connections need about 110128 .* limit is 20000"):
        budget(100_000, 20_000)
    with pytest.raises(ValueError, match="too low"):
        budget(0, RESERVE + MIN_HEADROOM)


def test_a_larger_redis_pool_is_reserved_beyond_the_default() -> None:
    # The default pool (64) is inside RESERVE; 500 connections take 436 more descriptors.
    assert budget(0, 20_000, 64) == budget(0, 20_000) == budget(0, 20_000, 8)
    larger = budget(0, 20_000, 500)
    assert larger.reserve == RESERVE + 436 and larger.descriptors == 20_000
    assert larger.websockets < budget(0, 20_000).websockets
    assert budget(1000, 20_000, 500) == Budget(1000, 1100, RESERVE + 436)
    with pytest.raises(ValueError, match=r"1000 connections need about 1664 .* limit is 1500"):
        budget(1000, 1500, 500)


# --- api.py: pages bounded in bytes ----------------------------------------------------------


def messages(count: int, text: str) -> list[Message]:
    return [
        Message(f"{1000 + i}-0", "r", "alice", f"{i} {text}", 1000 + i, None) for i in range(count)
    ]


async def page(msgs: list[Message], max_bytes: int, *, keep_newest: bool, gap: bool = False):
    chunks = await api.encode_page(msgs, gap, max_bytes, keep_newest=keep_newest)
    body = b"".join(chunks)
    return json.loads(body), body, chunks


async def test_a_page_that_fits_is_whole_and_plain_json() -> None:
    msgs = messages(3, 'héllo \u2028 "quoted"')
    decoded, body, _ = await page(msgs, 1 << 20, keep_newest=True, gap=True)
    assert decoded == {
        "messages": [
            {
                "type": "message",
                "id": m.id,
                "room": "r",
                "name": "alice",
                "text": m.text,
                "ts": m.ts,
            }
            for m in msgs
        ],
        "gap": True,
    }
    assert "héllo".encode() in body  # UTF-8, not \\u escapes: a third of the bytes of emoji


@pytest.mark.parametrize("keep_newest", [True, False])
async def test_a_long_page_is_cut_at_the_byte_bound(keep_newest: bool) -> None:
    msgs = messages(500, "\U0001f600" * 2000)  # the largest messages: 8 KB of UTF-8 each
    decoded, body, chunks = await page(msgs, 1 << 20, keep_newest=keep_newest)
    assert len(body) <= 1 << 20
    kept = decoded["messages"]
    assert decoded["truncated"] is True and 100 < len(kept) < 500
    ids = [m.id for m in msgs]
    expected = ids[-len(kept) :] if keep_newest else ids[: len(kept)]
    assert [m["id"] for m in kept] == expected  # contiguous, oldest first, from the right end
    assert max(len(c) for c in chunks) < 2 * api.CHUNK  # written in pieces, not one buffer


async def test_one_message_is_kept_even_if_it_alone_is_over_the_bound() -> None:
    decoded, _, _ = await page(messages(2, "x" * 70_000), 64 * 1024, keep_newest=False)
    assert [m["id"] for m in decoded["messages"]] == ["1000-0"]
    assert decoded["truncated"] is True


async def test_an_empty_page() -> None:
    decoded, _, chunks = await page([], 64 * 1024, keep_newest=True)
    assert decoded == {"messages": [], "gap": False} and len(chunks) == 1


def test_slots_refuse_beyond_the_limit() -> None:
    slots = api.Slots(2)
    assert slots.take() and slots.take() and not slots.take()
    slots.give_back()
    assert slots.take()


# --- web.py: hosts, origins, headers --------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Chat.Example.com", "chat.example.com"),
        ("chat.example.com.:8443", "chat.example.com"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        (None, None),
        ("", None),
        ("a@evil.example", None),
        ("evil.example/x", None),
        ("chat.example.com:port", None),
        ("[::1", None),
    ],
)
def test_host_name(header: str | None, name: str | None) -> None:
    assert host_name(header) == name


def test_allowed_hosts() -> None:
    allowed = ("chat.example.com", "[::1]")
    assert host_allowed("evil.example", ())  # no list: any host
    assert host_allowed("CHAT.example.com:443", allowed)
    assert host_allowed("[::1]:8080", allowed)
    assert not host_allowed("evil.example", allowed)
    assert not host_allowed(None, allowed)
    assert not host_allowed("chat.example.com.evil.example", allowed)


def test_same_origin_counts_only_for_allowed_hosts() -> None:
    # DNS rebinding: the attacker's name resolves to the server; page and socket agree.
    rebound = ("http://evil.example:8080", "evil.example:8080")
    assert origin_allowed(*rebound, ())
    assert not origin_allowed(*rebound, (), ("chat.example.com",))
    assert origin_allowed("https://chat.example.com", "chat.example.com", (), ("chat.example.com",))
    # An explicit allow-list entry is still honoured as written.
    assert origin_allowed(
        "https://app.example", "chat.example.com", ("https://app.example",), ("chat.example.com",)
    )


def test_the_csp_header_is_the_pages_policy_plus_frame_ancestors() -> None:
    html = (FRONTEND / "index.html").read_text()
    meta = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', html)
    assert meta, "index.html has no CSP <meta>"
    assert f"{meta[1]}; frame-ancestors 'none'" == CSP


# --- listener.py: logs that cannot flood -----------------------------------------------------


def test_throttled_logs_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("webchat.test")
    throttled = Throttled(logger, logging.WARNING, interval=3600)
    with caplog.at_level(logging.WARNING, logger="webchat.test"):
        for n in range(1000):
            throttled(f"event {n}")
    assert [r.getMessage() for r in caplog.records] == ["event 0 (1 since the last report)"]
    assert all(r.exc_info is None for r in caplog.records)


# --- trim.py: memory back to the system, rarely -----------------------------------------------


async def test_trims_follow_bursts_at_most_once_per_interval() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    trimmer = Trimmer(delay=0.01, interval=0.2, trim=lambda: calls.append(loop.time()))
    started = loop.time()
    for _ in range(100):  # a burst: one trim after it
        trimmer.soon()
    await asyncio.sleep(0.05)
    assert len(calls) == 1 and calls[0] - started >= 0.01
    trimmer.soon()  # another burst right after: not before the interval has passed
    await asyncio.sleep(0.3)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.2
    trimmer.soon()
    trimmer.cancel()
    await asyncio.sleep(0.3)
    assert len(calls) == 2


def test_the_c_library_trim_is_found_here() -> None:
    # Debian's glibc has malloc_trim; without it the trimmer would silently do nothing.
    assert Trimmer()._trim is not None


async def test_failed_accepts_are_logged_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    """What asyncio reports when accept() fails (out of descriptors): one line, no traceback."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    throttle_accept_errors(loop)
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(5000):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
            # Anything else still reaches the previous handler (asyncio's: logged as before).
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(previous)
    accept = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(accept) == 1 and accept[0].exc_info is None
    assert "Too many open files" in accept[0].getMessage()
    assert any(r.getMessage() == "something else" for r in caplog.records)


# --- admission (node.py, monitor.py) --------------------------------------------------------


def test_a_reset_excuses_the_probe_that_measured_the_start_up() -> None:
    lag = LoopLag(now=0.0)
    lag.reset(now=5.0)  # after a 4.9 s start-up pause that a sleeping probe will report
    lag.probe(4.9, now=5.0)  # due at 0.1, before the reset: not counted
    assert lag.latest == 0.0
    lag.probe(0.6, now=5.8)  # due at 5.2: counted
    assert lag.latest == 0.6


async def test_admission_refuses_while_the_loop_is_late_or_the_cap_is_reached() -> None:
    node = Node(WebchatConfig(max_loop_lag=0.5), limits=Budget(websockets=2, sockets=18))
    assert node.admission() is None
    node.loop_lag.probe(0.8, now=node.loop_lag._since + 1.0)
    refusal = node.admission()
    assert refusal is not None and "overloaded" in refusal[0] and refusal[1] >= 1
    node.loop_lag.probe(0.01, now=node.loop_lag._since + 1.2)  # the next probe is on time
    assert node.admission() is None
    node.sessions = 2
    refusal = node.admission()
    assert refusal is not None and "limit of 2 connections" in refusal[0]
    off = Node(WebchatConfig(max_loop_lag=0), limits=Budget(websockets=2, sockets=18))
    off.loop_lag.probe(30.0, now=off.loop_lag._since + 31.0)
    assert off.admission() is None  # 0: never refuse for lag


def test_close_frame_is_rfc_6455_with_a_short_reason() -> None:
    from webchat.protocol import ws_close_frame

    frame = ws_close_frame(1008, "rate limit abuse")
    assert frame[0] == 0x88 and frame[1] == 2 + len("rate limit abuse")
    assert int.from_bytes(frame[2:4], "big") == 1008 and frame[4:] == b"rate limit abuse"
    long = ws_close_frame(1013, "x" * 500)  # a control frame's payload is at most 125 bytes
    assert long[1] == 125 and len(long) == 127
