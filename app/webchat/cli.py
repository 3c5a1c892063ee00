"""The `webchat` command: parse the configuration, run one process or N workers, drain."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from webchat.config import Config, ConfigError, load_config
from webchat.web import NODE, make_app

log = logging.getLogger("webchat")

# PROTOCOL.md: an instance exits within 10 s of SIGTERM.
EXIT_DEADLINE = 9.5


async def serve(config: Config) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return within EXIT_DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(
        runner, config.host, config.port, backlog=4096, reuse_port=config.workers > 1
    )
    await site.start()
    sockets = runner.addresses
    log.info(
        "webchat listening on %s (pid %d, %s broker)",
        sockets,
        os.getpid(),
        "in-memory" if config.memory_broker else "redis",
    )
    await stop.wait()
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


def _run_worker(config: Config) -> None:
    _setup_logging(config)
    asyncio.run(serve(config))


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_workers(config: Config) -> int:
    """N processes on one port (SO_REUSEPORT); SIGTERM to the parent drains them all."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_run_worker, args=(config,)) for _ in range(config.workers)]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    return max((abs(w.exitcode or 0) for w in workers), default=0)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"webchat: error: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        return run_workers(config)
    _setup_logging(config)
    asyncio.run(serve(config))
    return 0
