"""webchat's Grafana dashboard, as code: `make dashboards` writes dashboards/webchat.json.

Each panel below is its title, its unit and its PromQL, so a review reads the queries here, not
in the generated JSON (which is committed, and which Grafana loads through
provisioning/dashboards/webchat.yml). Do not edit the JSON: tests/unit/test_monitoring.py fails
when it differs from what this module generates.

Conventions:
- Panels read the recording rules of ../prometheus/rules/webchat-recording.yml where one
  exists; other rates use the same 1-minute window, so all panels and the alerts' inputs agree.
- Panels select by the scrape job names of ../prometheus/*.yml: webchat, redis, nginx, node.
- `$instance` is the dashboard's instance filter (all instances by default).

`python monitoring/grafana/dashboards.py --check` exits 1 if the committed JSON is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    GraphTresholdsStyleMode,  # sic: the SDK spells it so
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "webchat.json"

# The datasource provisioned by provisioning/datasources/prometheus.yml.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")

# The delivery latency SLO of ../prometheus/rules/webchat-alerts.yml, drawn on the latency panel.
SLO_SECONDS = 0.1
# WebchatEventLoopLagHigh's threshold, drawn on the loop-lag panel.
LOOP_LAG_SECONDS = 0.05

# The selectors every webchat panel starts from.
WEBCHAT = 'job="webchat", instance=~"$instance"'


@dataclass(frozen=True)
class Q:
    """One PromQL query of a panel and the legend of its series (Grafana's {{label}} syntax)."""

    expr: str
    legend: str = ""
    # Ask Prometheus for exemplars too: webchat attaches a sampled message's trace id to its
    # delivery-latency observation (needs Prometheus's --enable-feature=exemplar-storage).
    exemplars: bool = False


def _target(query: Q, ref: str) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE).range()
    if query.legend:
        target = target.legend_format(query.legend)
    if query.exemplars:
        target = target.exemplar(True)
    return target


def _thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    """Colour steps: (None, base colour) first, then (value, colour from this value on)."""
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def graph(
    title: str,
    description: str,
    unit: str,
    *queries: Q,
    width: int = 12,
    height: int = 8,
    line_at: float | None = None,
) -> timeseries.Panel:
    """A time-series panel. `line_at` draws a dashed red line (an alert threshold) at that value."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .min(0)
        .fill_opacity(10)
        .line_width(1)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    if line_at is not None:
        panel = panel.thresholds(_thresholds((None, "green"), (line_at, "red"))).thresholds_style(
            GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED)
        )
    for number, query in enumerate(queries):
        panel = panel.with_target(_target(query, chr(ord("A") + number)))
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    query: Q,
    *,
    width: int = 4,
    height: int = 4,
    thresholds: dash.ThresholdsConfig | None = None,
    mappings: dict[str, tuple[str, str]] | None = None,
) -> stat.Panel:
    """A stat panel: one number (the last value), coloured by `thresholds`.

    `mappings` shows a value as text: {"1": ("yes", "green")}.
    """
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .with_target(_target(query, "A"))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(BigValueGraphMode.AREA)
        .color_mode(BigValueColorMode.VALUE)
        .thresholds(thresholds or _thresholds((None, "blue")))
    )
    if mappings:
        panel = panel.mappings(
            [
                ValueMap(
                    {
                        value: ValueMappingResult(text=text, color=color, index=index)
                        for index, (value, (text, color)) in enumerate(mappings.items())
                    }
                )
            ]
        )
    return panel


def instance_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable("instance")
        .label("instance")
        .datasource(DATASOURCE)
        .query('label_values(up{job="webchat"}, instance)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


# --- the panels, row by row ---------------------------------------------------------------


def service_row(d: dash.Dashboard) -> dash.Dashboard:
    """The whole service at a glance, then each instance's traffic, latency and trouble."""
    d = d.with_row(dash.Row("Service"))
    d = (
        d.with_panel(
            single(
                "Instances up",
                "webchat instances Prometheus scrapes successfully.",
                "short",
                Q('sum(up{job="webchat"})'),
                thresholds=_thresholds((None, "red"), (1, "green")),
            )
        )
        .with_panel(
            single(
                "Connected users",
                "WebSocket connections open on all instances.",
                "short",
                Q('sum(webchat_connected_users{job="webchat"})'),
            )
        )
        .with_panel(
            single(
                "Messages / s",
                "Messages accepted from clients, all instances (1-minute rate).",
                "short",
                Q("sum(job:webchat_messages:rate1m)"),
            )
        )
        .with_panel(
            single(
                "Deliveries / s",
                "Message frames written to sockets, all instances (1-minute rate).",
                "short",
                Q("sum(job:webchat_deliveries:rate1m)"),
            )
        )
        .with_panel(
            single(
                "Delivery p99 (5 min)",
                "99th percentile of delivery latency over every instance's deliveries in the "
                "last 5 minutes. The SLO is 100 ms.",
                "s",
                Q("max(job:webchat_delivery_latency_seconds:p99_5m)"),
                thresholds=_thresholds((None, "green"), (SLO_SECONDS, "red")),
            )
        )
        .with_panel(
            single(
                "Redis reachable",
                "Whether every instance reaches its broker (webchat_broker_ready); "
                "NO means some instance is unready.",
                "none",
                Q('min(webchat_broker_ready{job="webchat"})'),
                mappings={"1": ("yes", "green"), "0": ("NO", "red")},
            )
        )
    )
    return (
        d.with_panel(
            graph(
                "Connected users",
                "WebSocket connections open on each instance.",
                "short",
                Q(f"sum by (instance) (webchat_connected_users{{{WEBCHAT}}})", "{{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Connects and disconnects / s",
                "Accepted WebSocket upgrades, and connections that ended by reason "
                "(client: the client left; timeout: heartbeat; slow_client: 1013; drain: 1012).",
                "short",
                Q(
                    f'sum(rate(webchat_connections_total{{{WEBCHAT}, status="accepted"}}[1m]))',
                    "connects",
                ),
                Q(
                    f"sum by (reason) (rate(webchat_disconnections_total{{{WEBCHAT}}}[1m]))",
                    "disconnects: {{reason}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Messages / s",
                "Messages accepted from clients by each instance (1-minute rate).",
                "short",
                Q('instance:webchat_messages:rate1m{instance=~"$instance"}', "{{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Deliveries / s",
                "Message frames each instance wrote to its sockets: messages x local "
                "recipients (1-minute rate).",
                "short",
                Q('instance:webchat_deliveries:rate1m{instance=~"$instance"}', "{{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Delivery latency p50 / p95 / p99",
                "From the broker accepting a message to its write into the local recipients' "
                "sockets, per instance and for all, over 1 minute; the dots are exemplars "
                "(trace ids of sampled messages). Dashed: the 100 ms SLO (the alert judges p99 "
                "over 5 minutes).",
                "s",
                Q(
                    'instance:webchat_delivery_latency_seconds:p50_1m{instance=~"$instance"}',
                    "p50 {{instance}}",
                ),
                Q(
                    'instance:webchat_delivery_latency_seconds:p95_1m{instance=~"$instance"}',
                    "p95 {{instance}}",
                ),
                Q(
                    'instance:webchat_delivery_latency_seconds:p99_1m{instance=~"$instance"}',
                    "p99 {{instance}}",
                ),
                # Recorded series carry no exemplars: this one reads the buckets themselves.
                Q(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(webchat_delivery_latency_seconds_bucket{{{WEBCHAT}}}[1m])))",
                    "p99 all instances",
                    exemplars=True,
                ),
                width=24,
                height=9,
                line_at=SLO_SECONDS,
            )
        )
        .with_panel(
            graph(
                "Errors / s",
                "Error frames sent to clients, by code (unavailable and internal are the "
                "service's; the others the clients'), and WebSocket upgrades refused, by "
                "status.",
                "short",
                Q(
                    f"sum by (type) (rate(webchat_errors_total{{{WEBCHAT}}}[1m]))",
                    "error: {{type}}",
                ),
                Q(
                    "sum by (status) (rate(webchat_connections_total"
                    f'{{{WEBCHAT}, status!="accepted"}}[1m]))',
                    "refused: {{status}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Slow-client closes (1013) per 5 min",
                "Connections closed because their send buffer overflowed. The alert fires when "
                "this exceeds 1 % of an instance's connections (and 5) for 10 minutes.",
                "short",
                Q(
                    "sum by (instance) (increase(webchat_disconnections_total"
                    f'{{{WEBCHAT}, reason="slow_client"}}[5m]))',
                    "{{instance}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Broker reconnects per 5 min",
                "Times each instance reconnected its Redis pub/sub connection.",
                "short",
                Q(
                    "sum by (instance) (increase(webchat_broker_reconnects_total"
                    f"{{{WEBCHAT}}}[5m]))",
                    "{{instance}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Event-loop lag",
                "How late each instance's event loop runs a timer: every delivery waits this "
                "long before it starts. Dashed: the 50 ms alert threshold.",
                "s",
                Q(f"webchat_event_loop_lag_seconds{{{WEBCHAT}}}", "{{instance}}"),
                line_at=LOOP_LAG_SECONDS,
            )
        )
    )


def redis_row(d: dash.Dashboard) -> dash.Dashboard:
    """Redis from its exporter (job redis), and as webchat sees it."""
    return (
        d.with_row(dash.Row("Redis"))
        .with_panel(
            single(
                "Redis up",
                "redis_up: the exporter reaches Redis.",
                "none",
                Q('min(redis_up{job="redis"})'),
                height=7,
                mappings={"1": ("up", "green"), "0": ("DOWN", "red")},
            )
        )
        .with_panel(
            graph(
                "Redis commands / s",
                "Commands Redis processed (webchat's publishes, reads, presence, the exporter's).",
                "short",
                Q('rate(redis_commands_processed_total{job="redis"}[1m])', "{{instance}}"),
                width=5,
                height=7,
            )
        )
        .with_panel(
            graph(
                "Redis clients",
                "Connections to Redis: each webchat process holds a command pool and a "
                "pub/sub connection.",
                "short",
                Q('redis_connected_clients{job="redis"}', "{{instance}}"),
                width=5,
                height=7,
            )
        )
        .with_panel(
            graph(
                "Redis memory",
                "Memory Redis uses, and its maxmemory (0: no limit). Room histories are "
                "trimmed to --history-size, so this levels off.",
                "bytes",
                Q('redis_memory_used_bytes{job="redis"}', "used {{instance}}"),
                Q('redis_memory_max_bytes{job="redis"}', "maxmemory {{instance}}"),
                width=5,
                height=7,
            )
        )
        .with_panel(
            graph(
                "Pub/sub channels",
                "Room channels some instance subscribes to: rooms with members somewhere.",
                "short",
                Q('redis_pubsub_channels{job="redis"}', "{{instance}}"),
                width=5,
                height=7,
            )
        )
        .with_panel(
            graph(
                "Redis latency seen by webchat (p99)",
                "99th percentile of webchat's Redis calls, by operation, over all instances.",
                "s",
                Q(
                    "histogram_quantile(0.99, sum by (operation, le) "
                    f"(rate(webchat_redis_latency_seconds_bucket{{{WEBCHAT}}}[1m])))",
                    "{{operation}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Redis operations / s seen by webchat",
                "webchat's Redis calls by operation and outcome (ok or error).",
                "short",
                Q(
                    "sum by (operation, status) "
                    f"(rate(webchat_redis_operations_total{{{WEBCHAT}}}[1m]))",
                    "{{operation}} {{status}}",
                ),
            )
        )
    )


def nginx_row(d: dash.Dashboard) -> dash.Dashboard:
    """The load balancer from its exporter (stub_status; job nginx)."""
    return (
        d.with_row(dash.Row("Nginx"))
        .with_panel(
            single(
                "Nginx up",
                "nginx_up: the exporter reads nginx's stub_status.",
                "none",
                Q('min(nginx_up{job="nginx"})'),
                height=7,
                mappings={"1": ("up", "green"), "0": ("DOWN", "red")},
            )
        )
        .with_panel(
            graph(
                "Nginx connections",
                "Client connections open on nginx (WebSockets included), and what they do: "
                "waiting is idle keep-alive; an open WebSocket counts as writing.",
                "short",
                Q('nginx_connections_active{job="nginx"}', "active {{instance}}"),
                Q('nginx_connections_reading{job="nginx"}', "reading {{instance}}"),
                Q('nginx_connections_writing{job="nginx"}', "writing {{instance}}"),
                Q('nginx_connections_waiting{job="nginx"}', "waiting {{instance}}"),
                width=10,
                height=7,
            )
        )
        .with_panel(
            graph(
                "Nginx requests and connections / s",
                "HTTP requests (each WebSocket upgrade is one), connections accepted, and "
                "accepted but not handled (dropped: worker_connections exhausted).",
                "short",
                Q('rate(nginx_http_requests_total{job="nginx"}[1m])', "requests {{instance}}"),
                Q('rate(nginx_connections_accepted{job="nginx"}[1m])', "accepted {{instance}}"),
                Q(
                    'rate(nginx_connections_accepted{job="nginx"}[1m])'
                    ' - rate(nginx_connections_handled{job="nginx"}[1m])',
                    "dropped {{instance}}",
                ),
                width=10,
                height=7,
            )
        )
    )


def hosts_row(d: dash.Dashboard) -> dash.Dashboard:
    """The machines, from node_exporter (job node): fan-out is CPU-bound, so CPU comes first."""
    return (
        d.with_row(dash.Row("Hosts"))
        .with_panel(
            graph(
                "CPU busy",
                "Share of each host's CPU time not idle (all cores).",
                "percentunit",
                Q(
                    '1 - avg by (instance) (rate(node_cpu_seconds_total{job="node", '
                    'mode="idle"}[1m]))',
                    "{{instance}}",
                ),
                width=8,
                height=7,
            )
        )
        .with_panel(
            graph(
                "Memory available",
                "Memory the kernel can give to processes without swapping.",
                "bytes",
                Q('node_memory_MemAvailable_bytes{job="node"}', "{{instance}}"),
                width=8,
                height=7,
            )
        )
        .with_panel(
            graph(
                "Network sent / s",
                "Bytes sent on each host's interfaces (loopback excluded): deliveries leave here.",
                "Bps",
                Q(
                    'sum by (instance) (rate(node_network_transmit_bytes_total{job="node", '
                    'device!="lo"}[1m]))',
                    "{{instance}}",
                ),
                width=8,
                height=7,
            )
        )
    )


def overview() -> dash.Dashboard:
    d = (
        dash.Dashboard("webchat")
        .uid("webchat-overview")
        .description(
            "webchat: connections, traffic, delivery latency and trouble per instance, then "
            "Redis, Nginx and the hosts. Generated by monitoring/grafana/dashboards.py."
        )
        .tags(["webchat"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(instance_variable())
    )
    for row in (service_row, redis_row, nginx_row, hosts_row):
        d = row(d)
    return d


DASHBOARDS = {OUTPUT: overview}


def render(build: dash.Dashboard) -> str:
    """The dashboard as Grafana JSON: stable key order, so a diff shows only real changes."""
    model = json.loads(JSONEncoder().encode(build.build()))
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if a committed JSON file is not up to date"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, build in DASHBOARDS.items():
        text = render(build())
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent.parent)}")
    for path in stale:
        print(f"{path} is not what dashboards.py generates: run `make dashboards`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
