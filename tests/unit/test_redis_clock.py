"""ClockWatch: a step of Redis's clock between two presence refreshes, against this node's."""

import pytest

from webchat.broker.redis_clock import STEP, ClockWatch


def test_the_first_reading_has_nothing_to_compare_with():
    assert ClockWatch().observe(1_000_000, 50.0) == 0.0


def test_clocks_that_agree_within_the_tolerance_report_no_step():
    watch = ClockWatch()
    watch.observe(1_000_000, 50.0)
    # 9.7 s on both, give or take a slow round trip either way.
    assert watch.observe(1_009_700 + 900, 59.7) == 0.0
    assert watch.observe(1_019_400, 69.4 + 0.9) == 0.0


def test_a_step_ahead_and_a_step_back_are_measured():
    watch = ClockWatch()
    watch.observe(1_000_000, 50.0)
    # A VM paused for 40 s: this node's monotonic clock stood still, Redis's wall clock did not.
    assert watch.observe(1_049_700, 59.7) == pytest.approx(40.0)
    # The next interval is measured from the new reading, not from the first.
    assert watch.observe(1_059_400, 69.4) == 0.0
    assert watch.observe(1_059_400 + 9_700 - 20_000, 79.1) == pytest.approx(-20.0)


def test_the_tolerance_is_the_boundary():
    watch = ClockWatch()
    watch.observe(0, 0.0)
    assert watch.observe(int((10 + STEP) * 1000), 10.0) == pytest.approx(STEP)
    assert watch.observe(int((20 + STEP) * 1000) + int(STEP * 1000) - 1, 20.0) == 0.0
