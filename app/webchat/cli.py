"""The `webchat` command: parse the configuration, run one process or N workers, drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from webchat.collector import collect_garbage
from webchat.config import Config, ConfigError, load_config
from webchat.limits import Budget, budget, raise_descriptor_limit
from webchat.listener import Gate, Runner, throttle_accept_errors
from webchat.metrics import MULTIPROCESS_ENV, forget_process
from webchat.web import NODE, SECURITY_HEADERS, make_app

log = logging.getLogger("webchat")

# PROTOCOL.md: an instance exits within 10 s of SIGTERM.
EXIT_DEADLINE = 9.5


async def serve(config: Config) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return within EXIT_DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    throttle_accept_errors(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limits = connection_limits(config)
    app = make_app(config, limits)
    gate = Gate(limits, config.header_timeout, dict(SECURITY_HEADERS))
    runner = Runner(app, gate, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(
        runner, config.host, config.port, backlog=4096, reuse_port=config.workers > 1
    )
    await site.start()
    # Start-up objects live as long as the process: keep the collector from rescanning them,
    # and collect the young generation less often (about 30 % less CPU per connect).
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    # What those thresholds leave (each closed socket's transport) is collected here.
    collector = asyncio.create_task(collect_garbage(gate, config.gc_after))
    # Start-up pauses (imports, that collection) are not overload: admission starts afresh.
    app[NODE].loop_lag.reset(loop.time())
    sockets = runner.addresses
    log.info(
        "webchat listening on %s (pid %d, %s broker, at most %d WebSockets and %d sockets)",
        sockets,
        os.getpid(),
        "in-memory" if config.memory_broker else "redis",
        limits.websockets,
        limits.sockets,
    )
    orphaned = None
    if config.workers > 1:
        orphaned = asyncio.create_task(_stop_when_orphaned(os.getppid(), stop))
    try:
        await stop.wait()
    finally:
        for task in (orphaned, collector):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    started = time.monotonic()
    log.info("draining: refusing new clients, closing connected ones with 1012")
    try:
        async with asyncio.timeout(EXIT_DEADLINE - 2.0):
            await app[NODE].drain()
    except TimeoutError:
        log.warning("drain took too long; dropping the remaining connections")
    remaining = max(0.5, EXIT_DEADLINE - (time.monotonic() - started))
    try:
        async with asyncio.timeout(remaining):
            await runner.cleanup()
    except TimeoutError:
        log.warning("shutdown did not finish in time; exiting anyway")


def connection_limits(config: Config) -> Budget:
    """The connection caps under this process's descriptor limit (raised to the hard limit
    first); ConfigError naming --max-connections if they cannot fit."""
    try:
        pool = 0 if config.memory_broker else config.redis_pool
        return budget(config.max_connections, raise_descriptor_limit(), pool)
    except ValueError as exc:
        option = "--max-connections" if config.max_connections else "file descriptors"
        raise ConfigError(f"{option}: {exc}") from None


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) drains and exits rather than linger."""
    # Polled: the parent's death raises no event a spawned worker could wait on portably.
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            break
    log.error("the supervising process %d is gone; draining this worker", parent)
    stop.set()


def _run_worker(config: Config) -> None:
    _setup_logging(config)
    asyncio.run(serve(config))


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
        stream=sys.stderr,
    )
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server_log.filters):
        server_log.addFilter(_MalformedRequests())


class _MalformedRequests(logging.Filter):
    """A request aiohttp could not parse (answered 400) is the client's error, not ours.

    aiohttp logs it at ERROR with a traceback and the request line, so any client could fill
    the log with tracebacks, trip error alerts and have a `key=` written to it. Kept: one INFO
    line with what was wrong, and nothing the client sent.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        what = str(exc.message).split(":", 1)[0].strip()[:80] or type(exc).__name__
        record.msg, record.args = "malformed HTTP request answered %d: %s", (exc.code, what)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


# Workers stop within EXIT_DEADLINE of the signal by themselves; a straggler is killed after
# this, so the parent still exits within PROTOCOL.md's 10 s.
STOP_DEADLINE = 9.8

# A worker that dies unasked is replaced, unless this many died within CRASH_WINDOW seconds
# (a worker that cannot start at all, e.g. the port is taken): then the parent gives up.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


class _Supervisor:
    """Runs the workers; the parent process only supervises and serves nothing itself."""

    def __init__(self, config: Config, metrics_dir: str) -> None:
        self.config = config
        self.metrics_dir = metrics_dir
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, BaseProcess] = {}  # by sentinel
        self.stopping: int | None = None  # the signal that asked us to stop
        self.deadline = 0.0  # once stopping: when stragglers are killed
        self.status = 0
        self.crashes: deque[float] = deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def _on_signal(self, signum: int, _frame: object) -> None:
        first = self.stopping is None
        self.stopping = signum
        if first:
            self.deadline = time.monotonic() + STOP_DEADLINE
        for worker in self.workers.values():
            if worker.pid is not None and worker.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")  # wake the supervision loop

    def _start_worker(self) -> None:
        worker = self.context.Process(target=_run_worker, args=(self.config,), daemon=False)
        worker.start()
        self.workers[worker.sentinel] = worker

    def _reap(self, worker: BaseProcess) -> None:
        worker.join()
        assert worker.pid is not None
        # A dead worker's live gauges (connected users) and exemplars must not count any more.
        forget_process(worker.pid, self.metrics_dir)

    def _crashed(self, worker: BaseProcess) -> None:
        """A worker ended without being asked: report it, then replace it or give up."""
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - CRASH_WINDOW:
            self.crashes.popleft()
        how = _describe_exit(worker.exitcode)
        if len(self.crashes) < CRASH_LIMIT:
            log.error("worker %d died (%s); starting a replacement", worker.pid, how)
            self._start_worker()
            return
        log.error(
            "worker %d died (%s): %d worker deaths in %.0f s; stopping all workers",
            worker.pid,
            how,
            len(self.crashes),
            CRASH_WINDOW,
        )
        self.status = 1
        self._on_signal(signal.SIGTERM, None)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for _ in range(self.config.workers):
            if self.stopping is None:
                self._start_worker()
        while self.workers:
            timeout = None
            if self.stopping is not None:
                timeout = max(0.0, self.deadline - time.monotonic())
            ready = wait([self._wake_read, *self.workers], timeout)
            if self._wake_read in ready:
                os.read(self._wake_read, 512)
            ended = [self.workers.pop(s) for s in ready if s in self.workers]
            for worker in ended:
                self._reap(worker)
                if self.stopping is None:
                    self._crashed(worker)
                elif worker.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT):
                    # Killed by the signal before it could handle it is still a clean stop.
                    log.error(
                        "worker %d %s while stopping", worker.pid, _describe_exit(worker.exitcode)
                    )
                    self.status = 1
            if self.stopping is not None and not ready and time.monotonic() >= self.deadline:
                for worker in self.workers.values():
                    log.error("worker %d did not stop in time; killing it", worker.pid)
                    worker.kill()
                    self._reap(worker)
                self.workers.clear()
                self.status = 1
        os.close(self._wake_read)
        os.close(self._wake_write)
        return self.status


def run_workers(config: Config) -> int:
    """N processes on one port (SO_REUSEPORT); SIGTERM to the parent drains them all.

    Metrics aggregate across the workers: each records into a fresh directory (prometheus-
    client multiprocess mode), removed when the parent exits.
    """
    _setup_logging(config)
    metrics_dir = tempfile.mkdtemp(prefix="webchat-metrics-")
    # Read by prometheus-client when each (spawned, so freshly importing) worker imports it.
    os.environ[MULTIPROCESS_ENV] = metrics_dir
    log.info(
        "starting %d workers on port %d (parent pid %d); metrics aggregated in %s",
        config.workers,
        config.port,
        os.getpid(),
        metrics_dir,
    )
    try:
        status = _Supervisor(config, metrics_dir).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("all workers stopped; exiting with status %d", status)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["token"]:  # `webchat token --sub alice ...`: sign a token (tokens.py)
        from webchat.tokens import main as token_main

        return token_main(args[1:], os.environ)
    try:
        config = load_config(args, os.environ)
        connection_limits(config)  # workers inherit the raised descriptor limit
    except ConfigError as exc:
        print(f"webchat: error: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        return run_workers(config)
    _setup_logging(config)
    asyncio.run(serve(config))
    return 0
