"""Step-load arithmetic without Locust: window histograms, percentiles, the verdict, the plan.

Locust keeps each request name's latencies as a cumulative {rounded ms: count} dict (1 ms wide
below 100 ms, then ~2 significant digits). A step's latencies are the difference between two
snapshots of that dict; its percentiles are read the way Locust reads its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    users: int
    rate: float | None  # --msg-rate for this step, or None: unchanged


def make_plan(users: Sequence[int], rates: Sequence[float], fixed_users: int) -> list[Step]:
    """Steps from --steps (user counts) and/or --step-rates; both given: same length."""
    if users and rates and len(users) != len(rates):
        raise ValueError(
            f"--steps has {len(users)} values and --step-rates {len(rates)}; give as many of "
            "each, or only one of them"
        )
    if users:
        return [Step(u, rates[i] if rates else None) for i, u in enumerate(users)]
    if rates and fixed_users < 1:
        raise ValueError("--step-rates needs the number of users: give -u/--users")
    return [Step(fixed_users, r) for r in rates]


def diff(new: Mapping[int, int], old: Mapping[int, int]) -> dict[int, int]:
    return {k: v - old.get(k, 0) for k, v in new.items() if v - old.get(k, 0) > 0}


def percentile(hist: Mapping[int, int], p: float) -> float | None:
    """The smallest bucket value with at least fraction `p` of the samples at or below it."""
    total = sum(hist.values())
    if not total:
        return None
    rank = max(1, -(-int(total * p * 1_000_000) // 1_000_000))  # ceil without float error
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def verdict(
    p99_ms: float | None,
    p99_max: float,
    failures: Mapping[str, int],
    deliveries: int,
    offered_deliveries_per_s: float,
) -> tuple[bool, str]:
    """A step is good when its delivery p99 is within the limit and nothing failed."""
    why = []
    failed = {k: v for k, v in failures.items() if v}
    if failed:
        why.append("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failed.items())))
    if p99_ms is not None and p99_ms > p99_max:
        why.append(f"delivery p99 {p99_ms:g} ms > {p99_max:g} ms")
    if deliveries == 0 and offered_deliveries_per_s > 0:
        why.append("nothing delivered")
    return (not why, "; ".join(why) or "ok")


LOSS_NAMES = ("missing", "duplicate", "out-of-order", "late", "unacknowledged", "gap")


def lost(failures: Mapping[str, int]) -> int:
    """Messages lost or mangled (the loss-type failures, not refusals or closes)."""
    return sum(failures.get(name, 0) for name in LOSS_NAMES)


def capacity(steps: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The last good step before the first bad one (steps in order)."""
    best = None
    for step in steps:
        if not step.get("good"):
            break
        best = step
    return best
