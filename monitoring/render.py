"""Draw the Grafana dashboard from a real Prometheus with matplotlib, for readers without Grafana.

Reads the generated dashboard JSON (grafana/dashboards/webchat.json), runs each panel's queries
as range queries over [start, end] against a Prometheus, and draws the panels where the
dashboard puts them (its 24-column grid), with their titles, units, legends and threshold
lines, in Grafana's dark colours. `snapshot.py` runs a miniature deployment and calls this;
to draw from any Prometheus that scrapes webchat:

    python monitoring/render.py --prometheus http://127.0.0.1:9090 --minutes 15 \\
        --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.dates as mdates  # after the backend is chosen
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana" / "dashboards" / "webchat.json"

# Grafana's dark theme.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2a2d33"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
PALETTE = [
    "#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
    "#37872d", "#fade2a", "#1f60c4", "#c4162a", "#8f3bb8", "#ff9830", "#96d98d", "#ffb357",
]  # fmt: skip
NAMED = {"green": "#73bf69", "red": "#f2495c", "blue": "#5794f2", "yellow": "#fade2a"}

# Inches per grid unit: Grafana's columns are about twice as wide as its rows are high on a
# 1,600-pixel screen.
UNIT_W = 0.72
UNIT_H = 0.36


@dataclass
class Series:
    name: str
    times: list[datetime]
    values: list[float]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode(
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        )
        with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{query}", timeout=30) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"{expr}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label."""
    if not template:
        return ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) or "value"
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def fetch(
    prom: Prometheus, panel: dict[str, Any], start: float, end: float, step: float
) -> list[Series]:
    series: list[Series] = []
    for target in panel.get("targets", []):
        expr = target["expr"].replace("$instance", ".*")
        for result in prom.range(expr, start, end, step):
            points = [(float(t), float(v)) for t, v in result["values"]]
            series.append(
                Series(
                    legend(target.get("legendFormat", ""), result["metric"]),
                    [datetime.fromtimestamp(t) for t, _ in points],
                    [v for _, v in points],
                )
            )
    return sorted(series, key=lambda s: s.name)


def formatter(unit: str) -> FuncFormatter:
    """Axis labels in the panel's unit, as Grafana shows them."""

    def fmt(value: float, _pos: object = None) -> str:
        return human(value, unit)

    return FuncFormatter(fmt)


def human(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for name, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}{suffix}"
        return f"{value:.0f} B{suffix}"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    for name, size in (("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {name}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def threshold_line(panel: dict[str, Any]) -> float | None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
    if style == "off":
        return None
    steps = defaults.get("thresholds", {}).get("steps", [])
    values = [s["value"] for s in steps if s.get("value") is not None]
    return float(values[0]) if values else None


@dataclass
class Box:
    """A panel's place on the figure, in inches from the top left."""

    left: float
    top: float
    width: float
    height: float


def frame(fig: Figure, box: Box, title: str) -> None:
    """The panel's background and title, as Grafana draws them."""
    fig_w, fig_h = fig.get_size_inches()
    fig.patches.append(
        plt.Rectangle(
            (box.left / fig_w, 1 - (box.top + box.height) / fig_h),
            box.width / fig_w,
            box.height / fig_h,
            transform=fig.transFigure,
            facecolor=PANEL,
            edgecolor=BORDER,
            linewidth=0.8,
            zorder=-1,  # behind the panel's axes
        )
    )
    fig.text(
        (box.left + 0.1) / fig_w,
        1 - (box.top + 0.08) / fig_h,
        title,
        color=TEXT,
        fontsize=9,
        fontweight="bold",
        va="top",
    )


def axes_in(fig: Figure, box: Box, top: float, bottom: float, left: float, right: float) -> Axes:
    """Axes inside `box`, leaving these margins (inches) for title, legend and tick labels."""
    fig_w, fig_h = fig.get_size_inches()
    ax = fig.add_axes(
        (
            (box.left + left) / fig_w,
            1 - (box.top + box.height - bottom) / fig_h,
            (box.width - left - right) / fig_w,
            (box.height - top - bottom) / fig_h,
        )
    )
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=7, length=0)
    return ax


LEGEND_LINE = 0.15  # inches per legend row
LEGEND_COLUMNS_PER_INCH = 0.55


def draw_graph(
    fig: Figure,
    box: Box,
    panel: dict[str, Any],
    series: Sequence[Series],
    span: tuple[datetime, datetime],
) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    frame(fig, box, panel["title"])
    # The legend lists the series that are not 0 throughout (every label value of webchat's
    # counters exists from the start, mostly at 0): Grafana would list them all.
    shown = [s for s in series if any(v for v in s.values if not math.isnan(v))]
    hidden = len(series) - len(shown)
    columns = max(1, min(len(shown) + (hidden > 0), int(box.width * LEGEND_COLUMNS_PER_INCH)))
    legend_rows = math.ceil((len(shown) + (hidden > 0)) / columns) if series else 0
    ax = axes_in(fig, box, top=0.35, bottom=0.3 + legend_rows * LEGEND_LINE, left=0.6, right=0.15)
    ax.grid(True, color=BORDER, linewidth=0.6)
    for index, s in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        label = s.name if s in shown else "_"
        ax.plot(s.times, s.values, color=color, linewidth=1.1, label=label)
        ax.fill_between(s.times, s.values, alpha=0.08, color=color)
    line = threshold_line(panel)
    if line is not None:
        ax.axhline(line, color=NAMED["red"], linestyle="--", linewidth=1)
    ax.set_ylim(bottom=0)
    if line is not None:
        ax.set_ylim(top=max(ax.get_ylim()[1], line * 1.15))
    ax.yaxis.set_major_formatter(formatter(unit))
    ax.set_xlim(*span)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    if not series:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    handles, labels = ax.get_legend_handles_labels()
    if hidden:
        handles.append(plt.Line2D([], [], color=PANEL))
        labels.append(f"+{hidden} series at 0")
    fig_h = fig.get_size_inches()[1]
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(
            (box.left + 0.1) / fig.get_size_inches()[0],
            1 - (box.top + box.height - legend_rows * LEGEND_LINE - 0.05) / fig_h,
        ),
        bbox_transform=fig.transFigure,
        ncol=columns,
        fontsize=6.5,
        frameon=False,
        labelcolor=TEXT,
        handlelength=1.2,
        columnspacing=1.2,
        borderaxespad=0,
        borderpad=0,
        labelspacing=0.25,
    )


def stat_colour(panel: dict[str, Any], value: float) -> tuple[str, str]:
    """The text and colour Grafana shows for `value`: a value mapping, else thresholds."""
    defaults = panel["fieldConfig"]["defaults"]
    for mapping in defaults.get("mappings", []):
        found = mapping.get("options", {}).get(f"{value:g}")
        if found:
            return found["text"], NAMED.get(found.get("color", ""), TEXT)
    colour = NAMED["blue"]
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            colour = NAMED.get(step["color"], TEXT)
    return human(value, defaults.get("unit", "short")), colour


def draw_stat(fig: Figure, box: Box, panel: dict[str, Any], series: Sequence[Series]) -> None:
    """The last value, large, over a sparkline of the whole range (Grafana's stat panel)."""
    frame(fig, box, panel["title"])
    ax = axes_in(fig, box, top=0.3, bottom=0.05, left=0.05, right=0.05)
    ax.set_xticks([])
    ax.set_yticks([])
    values = [v for s in series for v in s.values if not math.isnan(v)]
    if not series or not values:
        ax.text(0.5, 0.45, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    last = next(v for v in reversed(series[0].values) if not math.isnan(v))
    text, colour = stat_colour(panel, last)
    ax.fill_between(series[0].times, series[0].values, color=colour, alpha=0.15, linewidth=0)
    ax.set_ylim(bottom=0, top=max(values) * 2.2 or 1)
    ax.set_xlim(series[0].times[0], series[0].times[-1])
    ax.text(
        0.5,
        0.5,
        text,
        color=colour,
        ha="center",
        va="center",
        fontsize=20,
        fontweight="bold",
        transform=ax.transAxes,
    )


DPI = 100
HEADER = 0.55  # inches above the first row, for the figure's title
GAP = 0.06  # inches between panels


def render(
    prom: Prometheus, start: float, end: float, out: Path, dashboard: Path = DASHBOARD
) -> Path:
    model = json.loads(dashboard.read_text())
    panels = model["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    step = max(1.0, round((end - start) / 240))
    margin = 0.15
    fig: Figure = plt.figure(
        figsize=(24 * UNIT_W + 2 * margin, rows * UNIT_H + HEADER + margin),
        facecolor=BACKGROUND,
    )
    fig_h = fig.get_size_inches()[1]
    span = f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M} to {datetime.fromtimestamp(end):%H:%M}"
    fig.text(
        margin / fig.get_size_inches()[0],
        1 - 0.2 / fig_h,
        f"{model['title']}: the Grafana dashboard drawn from a real Prometheus, {span} "
        "(monitoring/render.py)",
        color=TEXT,
        fontsize=12,
        va="top",
    )
    window = (datetime.fromtimestamp(start), datetime.fromtimestamp(end))
    for panel in panels:
        pos = panel["gridPos"]
        box = Box(
            left=margin + pos["x"] * UNIT_W + GAP / 2,
            top=HEADER + pos["y"] * UNIT_H + GAP / 2,
            width=pos["w"] * UNIT_W - GAP,
            height=pos["h"] * UNIT_H - GAP,
        )
        if panel["type"] == "row":
            fig.text(
                box.left / fig.get_size_inches()[0],
                1 - (box.top + box.height / 2) / fig_h,
                panel["title"],
                color=TEXT,
                fontsize=11,
                fontweight="bold",
                va="center",
            )
            continue
        series = fetch(prom, panel, start, end, step)
        if panel["type"] == "stat":
            draw_stat(fig, box, panel, series)
        else:
            draw_graph(fig, box, panel, series, window)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor=BACKGROUND)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15, help="how far back from now")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    end = time.time()
    print(render(Prometheus(args.prometheus), end - args.minutes * 60, end, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
