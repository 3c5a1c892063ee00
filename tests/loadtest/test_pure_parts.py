"""Frame cutting, the upgrade check, step arithmetic and option checks of loadtest/, without I/O."""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import types

import pytest

from _bench import bounded, latency_summary, pid_list
from _options import (
    OptionError,
    check_targets,
    command_line_targets,
    host_from_command_line,
    number,
    number_list,
)
from _stepcalc import Step, capacity, diff, lost, make_plan, percentile, verdict
from _wsproto import (
    WS_GUID,
    FrameReader,
    UpgradeError,
    check_upgrade,
    marker_text,
    parse_id,
    split_target,
    upgrade_request,
)


class Recorder(FrameReader):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[bytes] = []
        self.events: list[tuple[str, object]] = []

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        self.texts.append(data[start:end])

    def on_ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def on_close(self, code: int) -> None:
        self.events.append(("close", code))

    def on_protocol_error(self, why: str) -> None:
        self.events.append(("error", why))


def server_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


@pytest.mark.parametrize(("big", "cuts"), [(300, (1, 2, 3, 7)), (70_000, (1000, 65536, 1 << 20))])
def test_frames_of_every_length_cut_anywhere(big: int, cuts: tuple[int, ...]) -> None:
    payloads = [b"a", b"x" * 125, b"y" * 126, b"z" * big, b"{}"]
    stream = b"".join(server_frame(p) for p in payloads) + server_frame(b"\x03\xe9", 0x8)
    for cut in cuts:
        reader = Recorder()
        for i in range(0, len(stream), cut):
            reader.feed(stream[i : i + cut], 0)
        assert reader.texts == payloads
        assert reader.events == [("close", 1001)]


def test_pings_are_reported_and_masked_frames_refused() -> None:
    reader = Recorder()
    reader.feed(server_frame(b"hb", 0x9) + server_frame(b"", 0xA) + bytes((0x81, 0x81)), 0)
    assert reader.events == [("ping", b"hb"), ("error", "server frame is masked")]


def test_upgrade_answer_is_checked() -> None:
    request, key = upgrade_request("chat.example.com", "/ws?room=a&name=b")
    assert request.startswith(b"GET /ws?room=a&name=b HTTP/1.1\r\nHost: chat.example.com\r\n")
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    check_upgrade(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept, key)
    with pytest.raises(UpgradeError, match="wrong Sec-WebSocket-Accept"):
        check_upgrade(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x", key)
    with pytest.raises(UpgradeError, match=re.escape('HTTP 503 {"error"')):
        check_upgrade(b"HTTP/1.1 503 Service Unavailable", key, b'{"error": {"code": "x"}}')


def test_markers_ids_and_targets() -> None:
    text = marker_text(42, 123456789, 40)
    assert text.startswith("LT:42:123456789:") and len(text) == 40
    assert parse_id("1732650000000-7") < parse_id("1732650000000-8") < parse_id("1732650000001-0")
    assert split_target("https://chat.example.com") == (
        "https",
        "chat.example.com",
        443,
        True,
        "chat.example.com",
    )
    assert split_target("ws://127.0.0.1:8080")[1:4] == ("127.0.0.1", 8080, False)
    with pytest.raises(ValueError, match="scheme"):
        split_target("ftp://x")


def test_step_percentiles_over_a_window() -> None:
    before = {1: 10, 2: 5}
    after = {1: 60, 2: 25, 5: 14, 40: 1}
    window = diff(after, before)
    assert window == {1: 50, 2: 20, 5: 14, 40: 1}  # 85 samples
    assert percentile(window, 0.5) == 1
    assert percentile(window, 0.95) == 5
    assert percentile(window, 0.99) == 40
    assert percentile({}, 0.99) is None


def test_bench_latency_summaries_keep_each_benchmarks_columns() -> None:
    """fanout.py's summary and storms.py's narrower one (0.1 ms) come from one function."""
    us = list(range(1000, 101_000, 1000))  # 1..100 ms, nearest rank
    assert latency_summary(us) == {
        "samples": 100,
        "p50_ms": 50.0,
        "p95_ms": 95.0,
        "p99_ms": 99.0,
        "p999_ms": 100.0,
        "max_ms": 100.0,
        "mean_ms": 50.5,
    }
    assert latency_summary([1234, 5678], (0.50, 0.99), digits=1, mean=False) == {
        "samples": 2,
        "p50_ms": 1.2,
        "p99_ms": 5.7,
        "max_ms": 5.7,
    }
    assert latency_summary([])["p50_ms"] is None


def test_bench_argument_types() -> None:
    assert bounded(int, 1, 10)("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="must be between 1 and 10, got 11"):
        bounded(int, 1, 10)("11")
    assert pid_list("12,34,") == [12, 34]


def test_verdict_and_capacity() -> None:
    assert verdict(20, 50, {}, 100, 100) == (True, "ok")
    good, why = verdict(80, 50, {"error rate_limited": 3, "closed 1006": 0}, 100, 100)
    assert not good and why == "failures: error rate_limited 3; delivery p99 80 ms > 50 ms"
    assert verdict(None, 50, {}, 0, 10) == (False, "nothing delivered")
    assert lost({"missing": 2, "duplicate": 1, "error rate_limited": 5}) == 3
    steps = [{"step": 1, "good": True}, {"step": 2, "good": True}, {"step": 3, "good": False}]
    assert capacity(steps) == {"step": 2, "good": True}
    assert capacity([{"step": 1, "good": False}]) is None


def test_step_plans() -> None:
    assert make_plan([2, 4], [], 0) == [Step(2, None), Step(4, None)]
    assert make_plan([], [1, 5], 8) == [Step(8, 1), Step(8, 5)]
    assert make_plan([2, 4], [1, 5], 0) == [Step(2, 1), Step(4, 5)]
    with pytest.raises(ValueError, match="as many"):
        make_plan([1, 2, 3], [1, 2], 0)
    with pytest.raises(ValueError, match="-u/--users"):
        make_plan([], [1], 0)


def test_option_values_are_checked_with_their_name() -> None:
    opts = types.SimpleNamespace(msg_rate="x", room_size="0", steps="1,2,a", step_rates="1,-1")
    with pytest.raises(OptionError, match="--msg-rate: expected a float, got 'x'"):
        number(opts, "msg-rate")
    with pytest.raises(OptionError, match="--room-size: must be between 1 and 10"):
        number(opts, "room-size", int, 1, 10)
    with pytest.raises(OptionError, match="--steps: expected comma-separated numbers"):
        number_list(opts, "steps")
    with pytest.raises(OptionError, match="--step-rates: every value must be at least 0"):
        number_list(opts, "step-rates")


def test_remote_targets_need_to_be_named() -> None:
    argv = ["-f", "loadtest", "--host", "https://chat.example.com/", "--targets=http://10.0.0.5:81"]
    assert host_from_command_line(argv) == "https://chat.example.com/"
    assert host_from_command_line(["-Hhttp://a:1"]) == "http://a:1"
    named = command_line_targets(argv)
    assert named == {"https://chat.example.com", "http://10.0.0.5:81"}
    check_targets(["https://chat.example.com", "http://10.0.0.5:81"], named, False)
    check_targets(["http://127.0.0.1:8080", "ws://localhost:1", "http://[::1]:2"], set(), False)
    with pytest.raises(OptionError, match=r"'192\.0\.2\.1' is not loopback"):
        check_targets(["http://192.0.2.1:80"], named, False)
    check_targets(["http://192.0.2.1:80"], named, True)  # --allow-remote
    with pytest.raises(OptionError, match="expected http"):
        check_targets(["chat.example.com"], set(), True)
