"""The reconnect storm against a real two-instance deployment: one Redis, two webchat processes.

Every client drops and resumes with `since` every few seconds, and one instance is restarted
(drained with 1012, then started again on its port) while the run goes on: clients resume on
the other instance or on the restarted one. Nothing may be missed, duplicated or reordered.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeServer
from tests.loadtest.test_locust_runs import messages_accepted
from tests.support.servers import wait_until
from tests.support.timing import seconds

ROOM_SIZE = 4
USERS = 12


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_storm_and_restart_lose_nothing(make_server: MakeServer, locust) -> None:
    fast = ("--drain-delay", "0", "--drain-spread", "0.5", "--presence-grace", "0.3")
    a, b = make_server(*fast), make_server(*fast)
    run = locust(
        "ReconnectStorm",
        "-u",
        str(USERS),
        "-r",
        "100",
        "--host",
        a.url,
        "--targets",
        f"{a.url},{b.url}",
        "--room-size",
        str(ROOM_SIZE),
        "--msg-rate",
        "4",
        "--storm-every",
        "3",
        "--reconnect-base",
        "0.1",
        "--reconnect-cap",
        "1",
        "--loss-timeout",
        "3",
        run_time=12,
    )
    # Restart instance A once messages flow through it, while Locust keeps going.
    wait_until(lambda: messages_accepted(a) >= 30, seconds(20), "messages through instance A")
    a.stop()
    a.start()
    assert run.proc.poll() is None, "the run ended before the restart; lengthen it"
    result = run.wait()

    assert "draining" in a.log()  # the clients on A were closed with 1012 and had to resume
    assert result.returncode == 0, result.explain()
    assert result.failures == [], result.explain()
    assert result.requests("connect") == USERS
    # Three storms of every client, plus A's clients after the restart.
    assert result.requests("resume") >= 3 * USERS, result.explain()
    sent = result.requests("ack")
    assert sent > 100, result.explain()
    # Every accepted message reached every member of its room exactly once.
    assert result.requests("deliver") == sent * ROOM_SIZE, result.explain()
