"""A real redis-server for tests, on a free loopback port, with helpers to break it.

`RedisServer.start()` returns once the server answers PING (never a sleep). `stop`, `kill`,
`freeze`/`thaw` and `restart` keep the port and the data directory, so with `appendonly=True`
a restarted server comes back with its streams, as a production Redis with AOF would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import redis

from tests.support.client import ChatClient
from tests.support.servers import alive_and, free_port, require_binary, wait_until
from tests.support.timing import poll, seconds


def _ping(port: int, tls_ca: Path | None) -> bool:
    """True once the server answers PING (not -LOADING while it reads its AOF).

    With a password set the answer is -NOAUTH, which proves it is serving too.
    """
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", port), timeout=seconds(1))
            )
            if tls_ca is not None:
                context = ssl.create_default_context(cafile=str(tls_ca))
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A redis-server child process. Not started until `start()`; the URL is known before.

    `password` sets `requirepass`; `tls` serves TLS only, with a self-signed certificate for
    127.0.0.1 that the URL names as its CA; `extra_args` go to redis-server as they are.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        port: int | None = None,
        password: str | None = None,
        tls: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="webchat-redis-"))
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        if tls:
            subprocess.run(
                [
                    require_binary("openssl"),
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                    str(self.key),
                    "-out",
                    str(self.cert),
                ],
                check=True,
                capture_output=True,
                timeout=seconds(30),
            )

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.cert))}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def tls_ca(self) -> Path | None:
        return self.cert if self.tls else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        assert not self.running, "already running"
        args = ["--port", str(self.port)]
        if self.tls:
            args = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)]
        if self.password:
            args += ["--requirepass", self.password]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    require_binary("redis-server"),
                    *args,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes" if self.appendonly else "no",
                    "--dir",
                    str(self.dir),
                    "--daemonize",
                    "no",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                alive_and(
                    self.proc, "redis-server", self.log, lambda: _ping(self.port, self.tls_ca)
                ),
                seconds(10),
                f"redis-server on port {self.port} to answer PING",
            )
        except BaseException:
            self.kill()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM: Redis closes its clients and, with appendonly, flushes the AOF."""
        if not self.running:
            return
        assert self.proc is not None
        self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=seconds(10))
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients; data since the last AOF fsync may be lost."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=seconds(5))

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open but nothing answers, like a network partition."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def client(self) -> redis.Redis:
        """A synchronous client, for test set-up and fault injection (CLIENT KILL, ...)."""
        return redis.Redis.from_url(self.url, socket_timeout=seconds(5))

    def command(self, *args: Any) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --- helpers for tests on the Redis broker --------------------------------------------------


async def http_get_status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=seconds(2))) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def wait_status(
    session: aiohttp.ClientSession, url: str, status: int, timeout: float
) -> float:
    """Poll `url` until it answers `status`; return how many seconds that took."""
    started = asyncio.get_running_loop().time()

    async def answered() -> bool:
        return await http_get_status(session, url) == status

    await poll(answered, timeout, f"{status} from {url}")
    return asyncio.get_running_loop().time() - started


async def fetch_history(session: aiohttp.ClientSession, base_url: str, room: str) -> list[dict]:
    """Every message history holds for `room`, oldest first, paging with `since`."""
    messages: list[dict] = []
    since = "0-0"
    while True:
        async with session.get(
            f"{base_url}/api/rooms/{room}/messages", params={"since": since, "limit": "500"}
        ) as response:
            assert response.status == 200, await response.text()
            page = (await response.json())["messages"]
        if not page:
            return messages
        messages.extend(page)
        since = page[-1]["id"]


class Recorder:
    """Reads every frame a client receives, in the background, so a test can check them all.

    `messages` and `errors` grow as frames come; `wait(predicate, timeout)` waits, bounded,
    until `predicate()` holds. `closed` is set when the socket closes.
    """

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.name = client.welcome["name"] if client.welcome else None
        self.messages: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        ws = self.client.ws
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                kind = frame.get("type")
                if kind == "message":
                    self.messages.append(frame)
                elif kind == "error":
                    self.errors.append(frame)
                elif kind == "presence":
                    self.presence.append(frame)
                self._changed.set()
        finally:
            self.close_code = ws.close_code if ws.closed else -1
            self._changed.set()

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds(timeout)
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {what} within {timeout}s")
            self._changed.clear()
            if predicate():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]


class StallProxy:
    """A TCP forwarder to Redis whose connections can be stalled one by one.

    A stalled connection stops forwarding Redis's bytes to the client while both sockets
    stay open: the client sees a silent connection, as after a half-dead NAT entry.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.links: list[StallProxy.Link] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    class Link:
        def __init__(self, upstream: asyncio.StreamWriter) -> None:
            self.upstream = upstream
            self.flowing = asyncio.Event()
            self.flowing.set()
            self.writers: list[asyncio.StreamWriter] = [upstream]

        @property
        def upstream_port(self) -> int:
            """The local port of the proxy's connection to Redis (Redis's `addr` of it)."""
            return int(self.upstream.get_extra_info("sockname")[1])

        def stall(self) -> None:
            self.flowing.clear()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def __aenter__(self) -> StallProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in self.links:
            for writer in link.writers:
                writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = StallProxy.Link(up_writer)
        link.writers.append(writer)
        self.links.append(link)
        for source, sink, gate in ((reader, up_writer, None), (up_reader, writer, link.flowing)):
            task = asyncio.ensure_future(self._pump(source, sink, gate, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        gate: asyncio.Event | None,
        link: StallProxy.Link,
    ) -> None:
        try:
            while data := await source.read(65536):
                if gate is not None:
                    await gate.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in link.writers:
                writer.transport.abort()
