"""metrics.py, monitor.py and the tracing switch in config.py: pure parts, no server.

What the service records under real traffic is tested in tests/integration/test_metrics.py and
test_tracing.py; here the rules that need no socket: exemplar trace ids, OpenMetrics
negotiation, one observation per message, the loop-lag window, and which OTEL_ variables switch
tracing on or are refused with a one-line error.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest

from webchat.broker.base import Message
from webchat.config import ConfigError, load_config, tracing_requested
from webchat.metrics import LATENCY_BUCKETS, Metrics, sampled_trace_id
from webchat.monitor import WINDOW, LoopLag

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
UNSAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-00"


def series(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)", text, re.MULTILINE)
    return float(match[1]) if match else None


def test_sampled_trace_id_reads_a_w3c_traceparent():
    assert sampled_trace_id({"traceparent": SAMPLED}) == TRACE_ID
    assert sampled_trace_id({"traceparent": UNSAMPLED}) is None
    assert sampled_trace_id({"traceparent": SAMPLED[:-2] + "03"}) == TRACE_ID  # other flags
    for junk in (None, {}, {"traceparent": "00-abc"}, {"traceparent": SAMPLED[:-2] + "zz"}):
        assert sampled_trace_id(junk) is None


def test_buckets_read_half_a_millisecond_to_ten_seconds():
    assert LATENCY_BUCKETS[0] == 0.0005 and LATENCY_BUCKETS[-1] == 10.0
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BUCKETS)]
    assert max(ratios) <= 2.5


def test_every_catalogued_series_exists_from_the_start():
    text = Metrics().render()[0].decode()
    for name in (
        "webchat_connected_users",
        'webchat_connections_total{status="accepted"}',
        'webchat_connections_total{status="forbidden_origin"}',
        'webchat_disconnections_total{reason="slow_client"}',
        'webchat_disconnections_total{reason="gap"}',
        "webchat_messages_total",
        "webchat_message_latency_seconds_count",
        "webchat_delivery_latency_seconds_count",
        "webchat_fanout_recipients_count",
        "webchat_deliveries_total",
        "webchat_send_buffer_bytes",
        "webchat_broker_ready",
        "webchat_broker_reconnects_total",
        "webchat_rooms_active",
        "webchat_event_loop_lag_seconds",
        "webchat_event_loop_lag_seconds_hist_count",
        'webchat_errors_total{type="internal"}',
    ):
        assert series(text, name) is not None, name
    build = re.search(
        r'^webchat_build_info\{python="([^"]+)",version="([^"]+)"\} 1\.0$', text, re.M
    )
    assert build, text


def test_a_batch_is_one_observation_per_message_and_one_increment():
    metrics = Metrics()
    now_us = 1_000_000 * 2_000_000_000  # far in the future: a large latency
    batch = [
        Message("1-0", "r", "a", "x", 1, None, accepted_us=now_us - 10),
        Message("1-1", "r", "a", "y", 1, None),  # backfilled: no acceptance time
    ]
    metrics.delivered(batch, recipients=250)
    text = metrics.render()[0].decode()
    assert series(text, "webchat_deliveries_total") == 500
    assert series(text, "webchat_fanout_recipients_count") == 2
    assert series(text, 'webchat_fanout_recipients_bucket{le="200.0"}') == 0
    assert series(text, 'webchat_fanout_recipients_bucket{le="500.0"}') == 2
    # Only the timed message is observed; a clock behind the broker's counts as 0 s.
    assert series(text, "webchat_delivery_latency_seconds_count") == 1
    assert series(text, 'webchat_delivery_latency_seconds_bucket{le="0.0005"}') == 1


def test_openmetrics_with_the_trace_id_exemplar_when_the_scraper_asks():
    metrics = Metrics()
    import time

    accepted = time.time_ns() // 1000 - 30_000  # 30 ms ago
    metrics.delivered(
        [
            Message("1-0", "r", "a", "x", 1, None, {"traceparent": SAMPLED}, accepted_us=accepted),
            Message("1-1", "r", "a", "y", 1, None, {"traceparent": UNSAMPLED}, accepted),
        ],
        recipients=3,
    )
    plain, plain_type = metrics.render("text/plain")
    assert plain_type.startswith("text/plain") and b"trace_id" not in plain
    body, content_type = metrics.render(
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    )
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    exemplars = re.findall(
        r'^webchat_delivery_latency_seconds_bucket\{le="([^"]+)"\} \S+ # \{trace_id="(\w+)"\}',
        text,
        re.M,
    )
    # One exemplar, on the bucket the sampled message fell in (20-50 ms), not the other's.
    assert exemplars == [("0.05", TRACE_ID)], text


def test_loop_lag_keeps_the_worst_probe_of_each_window():
    lag = LoopLag(now=0.0)
    assert not lag.probe(0.002, now=0.1)
    assert not lag.probe(0.150, now=0.2)  # a stall
    assert not lag.probe(0.001, now=0.3)
    assert lag.latest == 0.001 and lag.recent == 0.0
    assert lag.probe(0.003, now=WINDOW)
    assert lag.recent == 0.150
    assert lag.probe(0.004, now=2 * WINDOW)
    assert lag.recent == 0.004  # the stall is forgotten after its window


# --- the tracing switch --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "chat", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.01",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            True,
        ),
    ],
)
def test_tracing_is_switched_by_the_standard_variables(env, on):
    assert tracing_requested(env) is on
    assert load_config([], env).tracing is on


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "console"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://c:4317"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "1%",
            },
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_tracing_variables_it_cannot_honour_are_refused_in_one_line(env, named):
    with pytest.raises(ConfigError) as info:
        load_config([], env)
    text = str(info.value)
    assert text.startswith(named + ":") and "\n" not in text, text


def test_with_tracing_off_no_opentelemetry_module_is_loaded():
    """The app, a node and a broker set up without OTEL_ variables import no OpenTelemetry."""
    code = """
import asyncio, sys
from webchat.config import load_config
from webchat.web import make_app
from webchat.node import Node

async def main():
    config = load_config([], {})
    make_app(config)
    node = Node(config)
    await node.start()
    await node.close()

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
print("clean")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={}
    )
    assert result.stdout.strip() == "clean", result.stderr
