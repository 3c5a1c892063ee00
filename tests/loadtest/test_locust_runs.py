"""`locust -f loadtest` against real webchat processes: clean runs, a lossy server, remote guard.

Each run is a real Locust subprocess with real sockets; what it reports is checked against the
server's own counters (webchat_messages_total), not only against itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from tests.conftest import MakeServer
from tests.loadtest.conftest import LOADTEST, LocustRun
from tests.support.servers import WebchatProcess, free_port, http_status, wait_until
from tests.support.timing import seconds

ROOM_SIZE = 4
# One broker is enough here: the Redis broker is loaded by the reconnect storm.
MEMORY = pytest.mark.parametrize("broker", ["memory"], indirect=True)
FAST_STOP = ("--drain-delay", "0", "--drain-spread", "0")


def messages_accepted(server: WebchatProcess) -> int:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^webchat_messages_total (\S+)$", text, re.MULTILINE)
    assert match, "no webchat_messages_total on /metrics"
    return int(float(match[1]))


def small_rooms(server: WebchatProcess, users: int, *extra: str, msg_rate: int = 3) -> list[str]:
    """The arguments of a SmallRooms run of `users` against `server`; `extra` adds options."""
    rate = ("--msg-rate", str(msg_rate))
    return ["SmallRooms", "-u", str(users), "-r", "50", "--host", server.url, *rate, *extra]


def assert_clean(run: LocustRun, server: WebchatProcess) -> int:
    """Exit 0, no failure, and every message the server accepted reached the whole room.

    Returns how many messages were sent (acknowledged), which the server counted too.
    """
    assert run.returncode == 0, run.explain()
    assert run.failures == [], run.explain()
    sent = run.requests("ack")  # one per message the server accepted and echoed
    assert sent == messages_accepted(server), run.explain()
    assert run.requests("deliver") == sent * ROOM_SIZE, run.explain()
    return sent


@MEMORY
def test_clean_headless_run(make_server: MakeServer, locust) -> None:
    """Connect and delivery rows, zero failures, exit 0, and every message reached everyone."""
    server = make_server(*FAST_STOP)
    run = locust(
        *small_rooms(server, 3 * ROOM_SIZE, "--loss-timeout", "2"),
        run_time=5,
        env={"LOCUST_ROOM_SIZE": str(ROOM_SIZE)},  # options come from the environment too
    ).wait()
    sent = assert_clean(run, server)
    assert int(run.stats["Aggregated"]["Failure Count"]) == 0, run.explain()
    assert run.requests("connect") == 3 * ROOM_SIZE, run.explain()
    assert sent > 3 * ROOM_SIZE, run.explain()  # everyone talked, more than once
    assert "Shutting down (exit code 0)" in run.output


@MEMORY
def test_users_sign_their_own_tokens_for_an_authenticated_server(
    make_server: MakeServer, locust, keys
) -> None:
    """With the deployment's secret, every user connects with its own token: a clean run.

    Without the option the same run is refused (401 on every connect), so the tokens did it.
    """
    server = make_server(*FAST_STOP, "--auth-secret-file", str(keys.secret_file))
    common = small_rooms(server, ROOM_SIZE, "--loss-timeout", "2", msg_rate=2)
    env = {"LOCUST_ROOM_SIZE": str(ROOM_SIZE)}
    signed = locust(*common, "--auth-secret-file", str(keys.secret_file), run_time=4, env=env)
    run = signed.wait()
    assert assert_clean(run, server) > 0, run.explain()
    assert run.requests("connect") == ROOM_SIZE, run.explain()

    anonymous = locust(*common, run_time=3, env=env).wait()
    assert anonymous.returncode != 0, anonymous.explain()
    refused = [f for f in anonymous.failures if "HTTP 401" in f["Error"]]
    assert sum(int(f["Occurrences"]) for f in refused) == ROOM_SIZE, anonymous.explain()


@MEMORY
def test_two_worker_processes_keep_each_room_in_one(make_server: MakeServer, locust) -> None:
    """--processes 2: each room's senders and receivers live in one worker, the master sums."""
    server = make_server(*FAST_STOP)
    port = str(free_port())  # the master's, for its workers: not Locust's default 5557
    workers = ("--processes", "2", "--master-bind-port", port, "--master-port", port)
    options = ("--room-size", str(ROOM_SIZE), "--loss-timeout", "1")
    run = locust(*small_rooms(server, 2 * ROOM_SIZE, *workers, *options), run_time=5).wait()
    assert assert_clean(run, server) > 2 * ROOM_SIZE, run.explain()
    assert run.output.count("Shutting down (exit code 0)") == 3  # master and both workers


@MEMORY
def test_a_lost_message_fails_the_run(make_server: MakeServer, locust) -> None:
    """A server that drops one delivery (a test-only fault): the run reports exactly that."""
    server = make_server(*FAST_STOP, module="tests.support.lossy_webchat", env={"LOSSY_NTH": "15"})
    options = ("--room-size", str(ROOM_SIZE), "--loss-timeout", "1")
    run = locust(*small_rooms(server, ROOM_SIZE, *options), run_time=5).wait()
    assert "lossy_webchat: dropped message" in server.log()
    assert run.returncode == 1, run.explain()
    failures = [(f["Name"], f["Error"], f["Occurrences"]) for f in run.failures]
    assert failures == [("missing", "accepted message never delivered", "1")], run.explain()
    sent = run.requests("ack")
    assert run.requests("deliver") == sent * ROOM_SIZE - 1, run.explain()


def test_a_remote_host_from_the_environment_is_refused(locust) -> None:
    """A host that came from LOCUST_HOST, not the command line, is not loaded by accident."""
    run = locust(run_time=1, env={"LOCUST_HOST": "http://192.0.2.1:8080"}).wait()
    assert run.returncode == 1, run.explain()
    assert "'192.0.2.1' is not loopback" in run.output, run.explain()
    assert "--allow-remote" in run.output
    assert run.stats == {}  # stopped before any test started


@MEMORY
def test_web_ui_starts_and_stops_a_clean_run(make_server: MakeServer, tmp_path) -> None:
    """`locust -f loadtest` with its web UI: start from the form, webchat options included."""
    server = make_server(*FAST_STOP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    ui = f"http://127.0.0.1:{port}"
    with (tmp_path / "ui.log").open("wb") as log:
        command = [sys.executable, "-m", "locust", "-f", str(LOADTEST), "--host", server.url]
        proc = subprocess.Popen(
            [*command, "--web-host", "127.0.0.1", "--web-port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: http_status(ui + "/") == 200, seconds(20), "Locust's web UI")
        form = {"user_count": "4", "spawn_rate": "10", "host": server.url}
        form |= {"room_size": "4", "msg_rate": "4"}  # the webchat options, as custom parameters
        answer = json.loads(post(ui + "/swarm", form))
        assert answer["success"], answer

        def delivered() -> bool:
            stats = {row["name"]: row for row in get_json(ui + "/stats/requests")["stats"]}
            return stats.get("deliver", {}).get("num_requests", 0) >= 4 * 4 * 2

        wait_until(delivered, seconds(20), "deliveries in the web UI's statistics")
        post(ui + "/stop", {})
        wait_until(
            lambda: get_json(ui + "/stats/requests")["state"] == "stopped",
            seconds(20),
            "the run to stop",
        )
        stats = get_json(ui + "/stats/requests")
        rows = {row["name"]: row for row in stats["stats"]}
        assert stats["errors"] == [] and rows["Aggregated"]["num_failures"] == 0, stats
        assert rows["connect"]["num_requests"] == 4
        assert rows["deliver"]["num_requests"] == 4 * rows["ack"]["num_requests"]
    finally:
        proc.terminate()
        code = proc.wait(timeout=seconds(20))
    assert code == 0, (tmp_path / "ui.log").read_text()[-3000:]


def post(url: str, form: dict[str, str]) -> str:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(url, data=data, timeout=10) as response:
        return str(response.read().decode())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
