"""webchat load tests for Locust: `locust -f loadtest [UserClass ...] --host URL`.

    locust -f loadtest --host http://127.0.0.1:8080                        # web UI, SmallRooms
    locust -f loadtest --headless -u 200 -r 50 -t 1m --host https://chat.example.com
    locust -f loadtest --headless BusyRoom -u 20 -r 5 -t 1m --msg-rate 10 --host ...
    locust -f loadtest --headless BusyRoom --steps 5,10,20,40 --step-out steps.jsonl --host ...

Scenarios (user classes; name one or more, the default is SmallRooms). What one Locust user is:

- SmallRooms: everyday group chat, many rooms of --room-size where everyone talks. One client.
- BusyRoom: one busy room per process; --talkers talk, everyone else listens (the listener-heavy
  class). --sockets-per-user listeners; the process's first BusyRoom user also holds the talkers.
- IdleConnections: connections at scale that say nothing but answer pings; one probe message
  per room every --idle-probe s. --sockets-per-user clients in a room of their own.
- Churn: join/leave churn over --rooms rooms: stay ~--churn-stay s talking, away ~--churn-away s.
  One client after another.
- ReconnectStorm: every client of the process drops at once every --storm-every s and resumes
  with `since`; nothing may be missed. One client.

What is measured (request type `WS`; the names are stable so runs compare):
`connect` (TCP connect to `welcome`), `deliver` (one entry per message frame received; latency
from the sender's send on the same process clock: a room's senders and receivers always live in
one process, also with --processes N or --master/--worker), `ack` (a sender's own message back:
accepted), `resume` (from losing a connection to the last missed message replayed). Failures are
named by cause: `missing`, `duplicate`, `out-of-order`, `late`, `unacknowledged`, `gap`,
`closed <code>`, `error <code>` (e.g. `error rate_limited`), and failed `connect`/`resume`. A
clean run against a healthy server ends with zero failures and exit code 0.

Every option is also an environment variable (`--msg-rate` = LOCUST_MSG_RATE); see `--help`.
https/wss targets work (`--insecure` for a self-signed certificate, `--ca-file` for a private
CA). A target that is not loopback must be named on the command line (--host/--targets) or in
the web UI; one from LOCUST_HOST or a config file needs --allow-remote.

Only Locust imports this file (pytest runs Locust as a subprocess). The machinery is in the
`_*.py` modules beside it, which Locust does not load as locustfiles; fanout.py, summarize.py
and report.py define no users.
"""

from __future__ import annotations

import random
import time

import gevent
from locust import User, constant, task

import _hooks  # noqa: F401  # registers the event listeners
from _engine import Client, Engine
from _hooks import engine


class WebchatUser(User):
    """Base: a user owns some clients and leaves with them when Locust stops it."""

    abstract = True
    wait_time = constant(1)  # tasks never return; Locust requires a wait_time nonetheless

    def __init__(self, environment: object) -> None:
        super().__init__(environment)
        self.clients: list[Client] = []

    def on_stop(self) -> None:
        for client in self.clients:
            client.leave(wait=not engine().stopping)


class SmallRooms(WebchatUser):
    """Everyday group chat: each user is one client of a room of --room-size; rooms fill in
    order and start talking once full; every client sends --msg-rate messages/s. Offered load:
    users x rate x room size deliveries/s."""

    def on_start(self) -> None:
        e = engine()
        size = e.s.room_size
        room = e.room("small", e.slot("small") // size, expected=size)
        client = e.client(room)
        client.talks = True
        self.clients = [client]
        client.join()

    @task
    def chat(self) -> None:
        engine().talk(self.clients)


class BusyRoom(WebchatUser):
    """One busy room per load-generator process: a few talkers, many listeners. The first
    BusyRoom user of a process opens --talkers talking clients; every user opens
    --sockets-per-user listeners. All sockets of a process are read by one greenlet, frames cut
    straight from the byte stream: the listener-heavy class, for the fan-out capacity. Offered
    load: talkers x rate x everyone in the room."""

    def on_start(self) -> None:
        e = engine()
        room = e.room("busy", 0, expected=e.s.talkers)
        talkers: list[Client] = []
        if e.claim("busy-talkers"):
            talkers = [e.client(room) for _ in range(e.s.talkers)]
            for client in talkers:
                client.talks = True
        self.talkers = talkers
        self.clients = talkers + [e.client(room) for _ in range(e.s.sockets_per_user)]
        e.join_all(self.clients)

    @task
    def chat(self) -> None:
        _talk_or_idle(engine(), self.talkers)


class IdleConnections(WebchatUser):
    """Connections at scale that say nothing (and answer the server's heartbeat pings): each
    user holds --sockets-per-user clients in a room of their own; one of them sends a probe every
    --idle-probe seconds, so every idle socket is checked for delivery too."""

    def on_start(self) -> None:
        e = engine()
        n = e.s.sockets_per_user
        room = e.room("idle", e.slot("idle"), expected=n)
        self.clients = [e.client(room) for _ in range(n)]
        probe = self.clients[0]
        probe.talks = e.s.idle_probe > 0
        probe.own_rate = lambda: 1.0 / e.s.idle_probe if e.s.idle_probe > 0 else 0.0
        e.join_all(self.clients)

    @task
    def chat(self) -> None:
        e = engine()
        probe = self.clients[0]
        _talk_or_idle(e, [probe] if probe.talks else [], rate=probe.rate)


class Churn(WebchatUser):
    """Join/leave churn: join one of --rooms rooms, talk at --msg-rate for an exponentially
    distributed time (mean --churn-stay s), leave with a close, stay away (mean --churn-away s),
    join again as a new client in a random room. Measures connects and presence under churn, and
    loss while present."""

    @task
    def churn(self) -> None:
        e = engine()
        while True:
            room = e.room("churn", random.randrange(e.s.rooms))
            client = e.client(room)
            client.talks = True
            self.clients = [client]
            if client.join():
                e.talk(
                    self.clients, until=time.monotonic() + random.expovariate(1 / e.s.churn_stay)
                )
            client.leave()
            self.clients = []
            if e.s.churn_away > 0:
                gevent.sleep(random.expovariate(1 / e.s.churn_away))


class ReconnectStorm(WebchatUser):
    """A reconnect storm: SmallRooms, but every --storm-every seconds (first at --storm-at) every
    client of the process loses its connection at once, as in a network cut, and resumes with
    `since` after a jittered backoff, resending its unanswered messages with their nonces. Closes
    by the server (1012 while it drains, 1013) are resumed the same way and are no failure here.
    Nothing may be missed: `missing` must stay 0; `resume` times each recovery."""

    def on_start(self) -> None:
        e = engine()
        size = e.s.room_size
        room = e.room("storm", e.slot("storm") // size, expected=size)
        client = e.client(room, storm=True)
        client.talks = True
        client.storm = True
        self.clients = [client]
        client.join()

    @task
    def chat(self) -> None:
        engine().talk(self.clients)


def _talk_or_idle(e: Engine, talkers: list[Client], rate: object = None) -> None:
    if talkers:
        e.talk(talkers, rate=rate)  # type: ignore[arg-type]  # a rate callable or None
    while True:
        gevent.sleep(3600)
