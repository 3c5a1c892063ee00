"""Locust scenario: chat users in a few rooms, each sending at a set rate and timing its echo.

    locust -f loadtest --headless -u 50 -r 25 -t 15s --host http://127.0.0.1:8080 \
        --rooms 5 --msg-rate 1

Each simulated user opens `/ws` with websocket-client, receives in its own greenlet and sends
`{"type": "message", "text": ..., "nonce": ...}` at `--msg-rate` messages per second. It
reports to Locust's statistics (request type `WS`):

- `connect`: TCP connect plus the WebSocket upgrade, until the `welcome` frame;
- `echo`: from sending a message to receiving its own echo (PROTOCOL.md: the echo is the
  acknowledgement), matched by nonce; an echo missing after `--echo-timeout` s is a failure;
- `recv`: every message from others, timed from the server's `ts` (same host, same wall clock),
  so the request count is the number of messages received;
- `error <code>`: every `error` frame, as a failure; `closed <code>`: a close by the server.

Options come from the command line or the environment (LOCUST_ROOMS, LOCUST_MSG_RATE,
LOCUST_TEXT_SIZE, LOCUST_ECHO_TIMEOUT, LOCUST_ALLOW_REMOTE). A target other than loopback is
refused unless `--allow-remote` is given. Keep `--msg-rate` under the server's per-connection
limit (`--rate`, default 10/s), or the users measure the rate limiter.

Only Locust imports this file; pytest never collects `loadtest/`. fanout.py, beside it, is the
fan-out benchmark and does not import locust.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import gevent
import websocket
from locust import User, events, task
from locust.exception import StopUser

REQUEST_TYPE = "WS"


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("webchat")
    group.add_argument(
        "--rooms", type=int, default=5, env_var="LOCUST_ROOMS", help="users spread over N rooms"
    )
    group.add_argument(
        "--msg-rate",
        type=float,
        default=1.0,
        env_var="LOCUST_MSG_RATE",
        help="messages per second per user (0: receive only)",
    )
    group.add_argument(
        "--text-size", type=int, default=32, env_var="LOCUST_TEXT_SIZE", help="message length"
    )
    group.add_argument(
        "--echo-timeout",
        type=float,
        default=10.0,
        env_var="LOCUST_ECHO_TIMEOUT",
        help="seconds before a missing echo counts as lost",
    )
    group.add_argument(
        "--allow-remote",
        action="store_true",
        default=False,
        env_var="LOCUST_ALLOW_REMOTE",
        help="allow a host other than loopback",
    )


@events.test_start.add_listener
def _check_host(environment: Any, **_kwargs: Any) -> None:
    host = urlsplit(environment.host or "").hostname or ""
    if environment.parsed_options.allow_remote or _is_loopback(host):
        return
    raise SystemExit(f"webchat locustfile: {host!r} is not loopback; pass --allow-remote")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ws_url(host: str, room: str, name: str) -> str:
    """`http://h:p` (Locust's --host) to `ws://h:p/ws?room=...&name=...`."""
    parts = urlsplit(host)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return f"{scheme}://{parts.netloc}/ws?{urlencode({'room': room, 'name': name})}"


_user_ids = itertools.count()


class ChatUser(User):
    """One chat client: connects on start, sends on a fixed pace, receives in a greenlet."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        opts = environment.parsed_options
        self.rate: float = opts.msg_rate
        self.text_size: int = max(1, opts.text_size)
        self.echo_timeout: float = opts.echo_timeout
        uid = next(_user_ids)
        self.name = f"lt{uid}-{random.randrange(1 << 16):04x}"
        self.room = f"loadtest-{uid % max(1, opts.rooms)}"
        self.ws: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet | None = None
        self.pending: dict[str, float] = {}
        self.nonces = itertools.count()
        # Frames the server refused (error frames carry no nonce): that many expired pending
        # sends were rejected, not lost, and are already counted as `error <code>`.
        self.refused = 0
        self._next_send = 0.0

    def wait_time(self) -> float:
        """Pace the sends at `rate` per second from a fixed schedule (no drift)."""
        if self.rate <= 0:
            return 3600.0
        now = time.perf_counter()
        self._next_send = max(self._next_send + 1.0 / self.rate, now)
        return self._next_send - now

    def _fire(
        self, name: str, response_time: float, length: int = 0, exc: Exception | None = None
    ) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exc,
            context={},
        )

    def on_start(self) -> None:
        url = ws_url(self.host or "", self.room, self.name)
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=15, enable_multithread=True)
            welcome = json.loads(self.ws.recv())
            if welcome.get("type") != "welcome":
                raise ValueError(f"first frame is not welcome: {welcome!r:.200}")
        except Exception as exc:
            self._fire("connect", (time.perf_counter() - started) * 1000, exc=exc)
            if self.ws is not None:
                self.ws.close()
            raise StopUser() from exc
        self._fire("connect", (time.perf_counter() - started) * 1000)
        self.ws.settimeout(None)
        self._next_send = time.perf_counter() + random.random() / max(self.rate, 1e-9)
        self.receiver = gevent.spawn(self._receive)

    def on_stop(self) -> None:
        if self.receiver is not None:
            self.receiver.kill(block=False)
        if self.ws is not None:
            self.ws.close()
        self._expire(time.perf_counter(), everything=True)

    def _receive(self) -> None:
        ws = self.ws
        assert ws is not None
        while True:
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketConnectionClosedException as exc:
                self._closed(exc)
                return
            except Exception as exc:  # the socket broke: report it once and stop this user
                self._closed(exc)
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self._closed(None, data)
                return
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            self._frame(data)

    def _frame(self, data: bytes) -> None:
        now = time.perf_counter()
        frame = json.loads(data)
        kind = frame.get("type")
        if kind == "message":
            nonce = frame.get("nonce")
            sent = self.pending.pop(nonce, None) if nonce is not None else None
            if sent is not None:
                self._fire("echo", (now - sent) * 1000, len(data))
            else:
                self._fire("recv", max(0.0, time.time() * 1000 - frame["ts"]), len(data))
        elif kind == "error":
            code = frame.get("code", "?")
            if code in ("rate_limited", "bad_message", "unavailable"):
                self.refused += 1
            self._fire(f"error {code}", 0, len(data), RuntimeError(frame.get("message", code)))
        self._expire(now)

    def _closed(self, exc: Exception | None, data: bytes = b"") -> None:
        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        if self.environment.runner is not None and self.environment.runner.state in (
            "stopping",
            "stopped",
        ):
            return  # closed by us at the end of the test
        self._fire(f"closed {code}", 0, exc=exc or RuntimeError(f"server closed with {code}"))

    def _expire(self, now: float, everything: bool = False) -> None:
        limit = now - self.echo_timeout
        for nonce, sent in list(self.pending.items()):
            if everything or sent < limit:
                del self.pending[nonce]
                if everything:
                    continue
                if self.refused:
                    self.refused -= 1
                else:
                    self._fire("echo", (now - sent) * 1000, exc=TimeoutError("echo lost"))

    @task
    def send(self) -> None:
        if self.rate <= 0 or self.ws is None or not self.ws.connected:
            return
        nonce = f"{self.name}-{next(self.nonces)}"
        text = f"hello from {self.name} #{nonce} ".ljust(self.text_size, ".")[: self.text_size]
        payload = json.dumps({"type": "message", "text": text, "nonce": nonce})
        self.pending[nonce] = time.perf_counter()
        try:
            self.ws.send(payload)
        except Exception as exc:
            self.pending.pop(nonce, None)
            self._fire("send", 0, exc=exc)
        self._expire(time.perf_counter())
