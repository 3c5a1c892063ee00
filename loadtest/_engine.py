"""This process's share of a load test: chat clients, their rooms, their accounting, Locust stats.

One `Engine` per test run and process (Locust's local runner, or each worker), created at
`test_start` and torn down at `test_stop`. It owns:

- the `Mux`, the one greenlet that reads every socket of the process (_gws.py);
- the rooms (`Room`: a `RoomLedger` plus who is connected) and the `Client`s in them. Rooms are
  named with this process's random token, so a room's senders and receivers are all here and
  latency is measured on one clock (`time.monotonic_ns()`), also with `--processes N`;
- a checker greenlet that judges the ledgers (missing, unanswered) and a flusher that puts the
  counts into Locust's statistics a few times a second (_locuststats.py);
- the settle at the end: senders stop, stragglers get `--loss-timeout` to arrive, then every
  ledger is judged for good, so a clean run ends with zero failures and a lossy one cannot end
  green.

Locust request names (type `WS`): `connect` (TCP connect to welcome), `deliver` (every message
frame received, first copies only: latency from the sender's send), `ack` (own message echoed:
the server accepted it), `resume` (connection lost to the last missed message replayed).
Failures are named by cause: `missing`, `duplicate`, `out-of-order`, `late`, `unacknowledged`,
`gap`, `closed <code>`, `error <code>`, and `connect`/`resume` entries with the reason.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.pool import Group, Pool

from _gws import Conn, Mux, Target
from _ledger import (
    DUPLICATE,
    FIRST,
    LATE,
    OUT_OF_ORDER,
    OWN,
    UNEXPECTED,
    Judgement,
    Member,
    RoomLedger,
)
from _locuststats import Histogram, fail_many, log_many
from _tokens import Tokens, with_token
from _wsproto import ID_KEY, ID_SEQ_BITS, MARK, MESSAGE_PREFIX, marker_text, text_frame, ws_path

log = logging.getLogger("webchat.loadtest")

REFUSAL_CODES = frozenset({"rate_limited", "bad_message", "unavailable"})
PRESENCE_PREFIX = b'{"type":"presence"'
CHECK_EVERY = 0.5
FLUSH_EVERY = 0.25

ERRORS = {
    "missing": "accepted message never delivered",
    "duplicate": "message delivered twice",
    "out-of-order": "message older than one delivered before it",
    "late": "message delivered after it was counted missing",
    "unacknowledged": "sent message got neither its echo nor an error frame",
    "gap": "server sent a gap frame: history no longer held the missed messages",
}


class Settings:
    """The options an Engine needs, checked and converted (see _options.py for their meaning)."""

    def __init__(self, **values: Any) -> None:
        self.msg_rate = 1.0
        self.room_size = 10
        self.talkers = 5
        self.sockets_per_user = 50
        self.text_size = 64
        self.idle_probe = 10.0
        self.rooms = 10
        self.churn_stay = 10.0
        self.churn_away = 2.0
        self.storm_every = 30.0
        self.storm_at = 0.0
        self.reconnect_base = 0.25
        self.reconnect_cap = 5.0
        self.connect_timeout = 15.0
        self.connect_concurrency = 50
        self.ack_timeout = 10.0
        self.loss_timeout = 5.0
        self.resume_timeout = 30.0
        self.__dict__.update(values)


def raise_file_limit() -> None:
    """Every socket is a descriptor: take the hard limit (Locust itself stops at 10,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Room:
    """A room of this process: its ledger, its clients, and whether it talks yet."""

    __slots__ = ("connected", "expected", "ledger", "name", "talking")

    def __init__(self, name: str, expected: int) -> None:
        self.name = name
        self.ledger = RoomLedger(name)
        self.expected = expected  # clients to wait for before talking (0: talk at once)
        self.connected: set[Client] = set()
        self.talking = expected == 0

    def joined(self, client: Client) -> None:
        self.connected.add(client)
        if not self.talking and len(self.connected) >= self.expected:
            self.talking = True


class Engine:
    """See the module docstring. `current` holds the running one."""

    def __init__(
        self,
        environment: Any,
        settings: Settings,
        targets: Sequence[Target],
        tokens: Tokens | None = None,
    ) -> None:
        self.environment = environment
        self.tokens = tokens  # None: anonymous mode
        self.stats = environment.stats
        self.s = settings
        self.targets = list(targets)
        self.token = secrets.token_hex(3)
        self.mux = Mux()
        self.rooms: dict[str, Room] = {}
        self.clients: set[Client] = set()
        self.resuming: set[Client] = set()  # lost a connection, resume not yet reported
        self.storm_clients: list[Client] = []
        self.rate = settings.msg_rate
        self.sending = True
        self.stopping = False
        self.judgement = Judgement()
        self._reported = Judgement()
        self.deliveries = Histogram()
        self.acks = Histogram()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.counters: Counter[str] = Counter()  # kind -> next slot, for room assignment
        self.names = 0
        self.claimed: set[str] = set()
        self.started = time.monotonic()
        raise_file_limit()
        self.group = Group()
        self.group.spawn(self._every, CHECK_EVERY, self.check)
        self.group.spawn(self._every, FLUSH_EVERY, self.flush)

    # --- rooms and clients ------------------------------------------------------------------

    def room(self, kind: str, index: int, expected: int = 0) -> Room:
        name = f"lt-{self.token}-{kind}{index}"
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, expected)
        return room

    def slot(self, kind: str) -> int:
        """The next free slot of `kind` in this process: rooms fill in order."""
        n = self.counters[kind]
        self.counters[kind] += 1
        return n

    def claim(self, what: str) -> bool:
        """True the first time `what` is claimed in this run and process."""
        if what in self.claimed:
            return False
        self.claimed.add(what)
        return True

    def client(self, room: Room, *, storm: bool = False) -> Client:
        self.names += 1
        client = Client(self, room, f"u{self.names}", self.names)
        if storm:
            self.storm_clients.append(client)
            if len(self.storm_clients) == 1:
                self.group.spawn(self._storms)
        return client

    def join_all(self, clients: Sequence[Client]) -> None:
        """Join `clients` with at most --connect-concurrency handshakes in flight."""
        pool = Pool(max(1, self.s.connect_concurrency))
        for client in clients:
            pool.spawn(client.join)
        pool.join()

    def talk(
        self,
        clients: Sequence[Client],
        rate: Callable[[], float] | None = None,
        until: float | None = None,
    ) -> None:
        """Send from each client at `rate()` messages/s (default --msg-rate or the step's) on
        its own fixed schedule, until `until` (time.monotonic) or until the greenlet is killed.
        A client sends only while connected and while its room talks (full, for SmallRooms)."""
        if not clients:
            return
        rate = rate or (lambda: self.rate)
        now = time.monotonic()
        due = [now + random.random() / max(rate(), 1e-3) for _ in clients]
        while until is None or now < until:
            r = rate()
            if r <= 0 or not self.sending:
                gevent.sleep(0.2 if until is None else min(0.2, max(0.0, until - now)))
                now = time.monotonic()
                due = [now + random.random() / max(r, 1e-3) for _ in clients]
                continue
            i = min(range(len(due)), key=due.__getitem__)
            at = due[i]
            if until is not None and at > until:
                gevent.sleep(max(0.0, until - now))
                return
            if at > now:
                gevent.sleep(at - now)
            client = clients[i]
            if self.sending and client.connected and client.room.talking:
                client.send()
            now = time.monotonic()
            due[i] = max(at + 1.0 / r, now - 1.0 / r)  # late: catch up by one, not a burst

    # --- accounting --------------------------------------------------------------------------

    def stats_request(self, name: str, started: float, exc: Exception | None = None) -> None:
        """One `connect` or `resume` sample: rare enough for Locust's ordinary path."""
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.monotonic() - started) * 1000,
            response_length=0,
            exception=exc,
            context={},
        )

    def fail(self, name: str, error: str | None = None, n: int = 1) -> None:
        self.failures[(name, error or ERRORS.get(name, name))] += n

    def check(self, final: bool = False) -> None:
        now = time.monotonic_ns()
        ack_to = int(self.s.ack_timeout * 1e9)
        loss_to = int(self.s.loss_timeout * 1e9)
        for room in list(self.rooms.values()):
            room.ledger.judge(now, ack_to, loss_to, final=final, counts=self.judgement)
        if not final:
            for client in list(self.resuming):
                client.check_resume()

    def flush(self) -> None:
        """Counts since the last flush into Locust's statistics."""
        hist, self.deliveries = self.deliveries, Histogram()
        log_many(self.stats, "deliver", hist)
        hist, self.acks = self.acks, Histogram()
        log_many(self.stats, "ack", hist)
        j, r = self.judgement, self._reported
        if j.missing > r.missing:
            self.fail("missing", n=j.missing - r.missing)
        if j.unanswered > r.unanswered:
            self.fail("unacknowledged", n=j.unanswered - r.unanswered)
        r.missing, r.unanswered = j.missing, j.unanswered
        failures, self.failures = self.failures, Counter()
        for (name, error), n in failures.items():
            fail_many(self.stats, name, error, n)

    def _every(self, seconds: float, what: Callable[[], None]) -> None:
        while True:
            gevent.sleep(seconds)
            try:
                what()
            except Exception:
                log.exception("load-test %s failed", getattr(what, "__name__", what))

    def quiet(self) -> bool:
        return all(room.ledger.quiet() for room in self.rooms.values())

    def settle(self) -> None:
        """Stop sending, give stragglers --loss-timeout to arrive, judge everything for good."""
        if self.stopping:
            return
        self.sending = False
        deadline = time.monotonic() + self.s.loss_timeout
        while time.monotonic() < deadline and not self.quiet():
            gevent.sleep(0.05)
        self.stopping = True  # from here on, closes are ours
        self.check(final=True)
        self.flush()

    def close(self) -> None:
        self.stopping = True
        self.group.kill(block=True)
        self.flush()
        for client in list(self.clients):
            client.leave(wait=False)
        self.mux.close()

    # --- what the step shape reads ------------------------------------------------------------

    def sockets(self) -> int:
        return sum(len(room.connected) for room in self.rooms.values())

    def offered(self) -> dict[str, float]:
        """Messages/s and deliveries/s the talking clients of this process offer right now."""
        msgs = deliveries = 0.0
        for room in self.rooms.values():
            if not room.talking:
                continue
            talkers = sum(1 for c in room.connected if c.talks)
            rate = sum(c.rate() for c in room.connected if c.talks) if talkers else 0.0
            msgs += rate
            deliveries += rate * len(room.connected)
        return {"msgs_per_s": round(msgs, 2), "deliveries_per_s": round(deliveries, 1)}

    def report(self) -> dict[str, Any]:
        return {"sockets": self.sockets(), "rate": self.rate, **self.offered()}

    def _storms(self) -> None:
        first = self.s.storm_at or self.s.storm_every
        gevent.sleep(max(0.0, self.started + first - time.monotonic()))
        while self.s.storm_every > 0:
            victims = [c for c in self.storm_clients if c.connected]
            log.info("reconnect storm: dropping %d clients", len(victims))
            self.counters["storms"] += 1
            for client in victims:
                client.drop()
            gevent.sleep(self.s.storm_every)


class Client:
    """One simulated chat client: a `Member` of a room and its current connection."""

    def __init__(self, engine: Engine, room: Room, name: str, number: int) -> None:
        self.engine = engine
        self.room = room
        self.name = name
        self.number = number
        self.member = Member(room.ledger, name)
        self.conn: MemberConn | None = None
        self.connected = False
        self.joined_once = False
        self.left = False
        self.talks = False
        self.own_rate: Callable[[], float] | None = None
        self.storm = False
        self.outcome: AsyncResult | None = None  # of the connection being opened
        self.lost_at: float | None = None  # time.monotonic of the loss being resumed
        self.resume_reported = False
        self.gap_expected = False
        self.resumer: gevent.Greenlet | None = None

    def rate(self) -> float:
        return self.own_rate() if self.own_rate else self.engine.rate

    def target(self, attempt: int = 0) -> Target:
        targets = self.engine.targets
        return targets[(self.number + attempt) % len(targets)]

    def _path(self, since: str | None) -> str:
        """This client's `/ws?...` path, with its own signed token on an authenticated target."""
        return with_token(ws_path(self.room.name, self.name, since), self.engine.tokens, self.name)

    def join(self) -> bool:
        """Connect (first time): records `connect`; False (and a failure) if it did not work."""
        engine = self.engine
        started = time.monotonic()
        try:
            self._open(self.target(), self._path(None))
        except Exception as exc:  # every reason is a failure of `connect`, named by the error
            engine.stats_request("connect", started, exc=exc)
            return False
        engine.stats_request("connect", started)
        engine.clients.add(self)
        return True

    def _open(self, target: Target, path: str) -> None:
        """Connect, upgrade and wait for the welcome; raises what went wrong."""
        s = self.engine.s
        conn = MemberConn(self.engine.mux, self)
        outcome = self.outcome = AsyncResult()
        deadline = time.monotonic() + s.connect_timeout
        self.conn = conn
        conn.open(target, path, s.connect_timeout)
        try:
            outcome.get(timeout=max(0.0, deadline - time.monotonic()))
        except gevent.Timeout:
            conn.close()
            raise TimeoutError(f"no welcome within {s.connect_timeout:g}s") from None
        except BaseException:
            conn.close()
            raise

    def on_welcome(self, frame: dict[str, Any]) -> None:
        """From the Mux: the server has attached this client; messages sent from now on are
        owed to it."""
        if not self.joined_once:
            self.room.ledger.join(self.member)
            self.joined_once = True
        else:
            self.member.resume_wait = self.room.ledger.unseen_accepted(self.member)
            ledger = self.room.ledger
            for seq in self.member.prepare_resend():
                self._send_frame(seq, ledger.sent_at(seq))
        self.connected = True
        self.room.joined(self)
        if self.outcome is not None:
            self.outcome.set(True)
        self.check_resume()

    def send(self) -> None:
        member = self.member
        now = time.monotonic_ns()
        seq = member.ledger.send(member, now)
        self._send_frame(seq, now)

    def _send_frame(self, seq: int, sent_ns: int) -> None:
        if self.conn is None:
            return
        text = marker_text(seq, sent_ns, self.engine.s.text_size)
        self.conn.write(
            text_frame(b'{"type":"message","text":"%s","nonce":"%d"}' % (text.encode(), seq))
        )

    def drop(self) -> None:
        if self.conn is not None and self.connected:
            self.conn.drop()

    def on_lost(self, code: int, why: str) -> None:
        """From the Mux: the connection ended without us asking. Resume it with `since`."""
        self.connected = False
        self.room.connected.discard(self)
        engine = self.engine
        if engine.stopping or self.left:
            return
        if not self.storm:
            engine.fail(f"closed {code}", why)
        if self.resumer is None or self.resumer.dead:
            self.lost_at = time.monotonic()
            self.resume_reported = False
            engine.resuming.add(self)
            self.resumer = engine.group.spawn(self._resume)

    def _resume(self) -> None:
        engine = self.engine
        s = engine.s
        attempt = 0
        while not engine.stopping and not self.left:
            delay = random.uniform(0, min(s.reconnect_cap, s.reconnect_base * 2**attempt))
            gevent.sleep(delay)
            if engine.stopping or self.left:
                return
            since, self.gap_expected = self.member.since()
            try:
                self._open(self.target(attempt), self._path(since))
            except Exception as exc:
                log.debug("resume of %s failed: %r", self.name, exc)
                attempt += 1
                continue
            if self.connected:
                return  # the welcome handler resent what was pending; check_resume times the rest
            attempt = 0  # lost again between its welcome and here (on_lost saw us alive): again

    def check_resume(self) -> None:
        """Report `resume` once the replay brought every message missed (or once it is late)."""
        if self.lost_at is None:
            self.member.resume_wait = None
            return
        wait = self.member.resume_wait
        if self.connected and wait is not None and not wait:
            self.engine.stats_request("resume", self.lost_at)
            self.lost_at = None
            self.member.resume_wait = None
            self.engine.resuming.discard(self)
        elif (
            not self.resume_reported
            and time.monotonic() - self.lost_at > self.engine.s.resume_timeout
        ):
            self.resume_reported = True
            self.engine.stats_request(
                "resume",
                self.lost_at,
                exc=TimeoutError(f"not resumed within {self.engine.s.resume_timeout:g}s"),
            )

    def leave(self, wait: bool = True) -> None:
        """Leave on purpose: let own messages be answered (bounded), then close with 1000."""
        if self.left:
            return
        if wait:
            deadline = time.monotonic() + self.engine.s.ack_timeout
            while self.member.pending and self.connected and time.monotonic() < deadline:
                gevent.sleep(0.05)
        self.left = True
        if self.resumer is not None:
            self.resumer.kill(block=False)
        self.room.ledger.leave(self.member)
        self.room.connected.discard(self)
        self.engine.clients.discard(self)
        self.engine.resuming.discard(self)
        self.connected = False
        if self.conn is not None:
            self.conn.close()


class MemberConn(Conn):
    """A client's socket: the per-message path is `on_text`, run in the Mux greenlet."""

    def __init__(self, mux: Mux, client: Client) -> None:
        super().__init__(mux)
        self.client = client
        self.member = client.member
        self.engine = client.engine
        self.welcomed = False

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        if data.startswith(MESSAGE_PREFIX, start):
            i = data.find(MARK, start, end)
            if i >= 0:
                j = data.find(b":", i + 3, end)
                k = data.find(b":", j + 1, end)
                m = data.find(ID_KEY, start, end) + 6
                d = data.find(b"-", m, end)
                q = data.find(b'"', d, end)
                try:
                    seq = int(data[i + 3 : j])
                    sent = int(data[j + 1 : k])
                    key = (int(data[m:d]) << ID_SEQ_BITS) | int(data[d + 1 : q])
                except ValueError:
                    self.engine.counters["foreign"] += 1
                    return
                engine = self.engine
                result = self.member.receive(seq, key, now, engine.judgement)
                if result in (FIRST, UNEXPECTED):
                    engine.deliveries.add((now - sent) * 1e-6, end - start)
                elif result == OWN:
                    ms = (now - sent) * 1e-6
                    engine.deliveries.add(ms, end - start)
                    engine.acks.add(ms, end - start)
                elif result == OUT_OF_ORDER:
                    engine.deliveries.add((now - sent) * 1e-6, end - start)
                    engine.fail("out-of-order")
                elif result == DUPLICATE:
                    engine.fail("duplicate")
                elif result == LATE:
                    engine.fail("late")
                if self.member.resume_wait is not None and not self.member.resume_wait:
                    self.client.check_resume()
                return
            self.engine.counters["foreign"] += 1  # a message without the marker: not ours
            return
        if data.startswith(PRESENCE_PREFIX, start):
            return
        try:
            frame = json.loads(data[start:end])
        except ValueError:
            self.engine.fail("bad frame", f"not JSON: {data[start : start + 60]!r}")
            return
        kind = frame.get("type")
        if kind == "welcome":
            self.welcomed = True
            self.client.on_welcome(frame)
        elif kind == "error":
            code = str(frame.get("code", "?"))
            if code in REFUSAL_CODES:
                self.member.refused()
            self.engine.fail(f"error {code}", str(frame.get("message", code))[:120])
        elif kind == "gap" and not self.client.gap_expected:
            self.engine.fail("gap")

    def on_lost(self, code: int, why: str) -> None:
        client = self.client
        if client.conn is not self:
            return
        if not self.welcomed:
            if client.outcome is not None and not client.outcome.ready():
                client.outcome.set_exception(ConnectionError(f"closed before the welcome: {why}"))
            return
        client.on_lost(code, why)
