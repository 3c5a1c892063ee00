"""cancel_until_done: a task that swallows a cancel is cancelled again; one that never ends is left,
named in the log, once the bound has passed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from webchat.broker.memory import MemoryBroker
from webchat.cancelling import cancel_until_done
from webchat.hub import Hub
from webchat.metrics import Metrics


async def swallows_one_cancel() -> None:
    """As a loop inside Python 3.11's asyncio.wait_for can: the first cancel is lost."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)  # "forever": only a cancel ends these sleeps
    await asyncio.sleep(3600)


async def ignores_cancels(until: asyncio.Event) -> None:
    while not until.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await until.wait()


async def test_a_loop_that_swallowed_a_cancel_is_cancelled_again():
    task = asyncio.create_task(swallows_one_cancel(), name="stubborn")
    await asyncio.sleep(0)  # started: inside its first sleep
    async with asyncio.timeout(2):
        await cancel_until_done([task], "loops", timeout=1)
    assert task.cancelled()


async def test_hub_close_cancels_a_task_that_swallowed_a_cancel_again():
    """Hub.close stops its background tasks (presence leaves, releases) the same way."""
    hub = Hub(MemoryBroker(), presence_grace=0, presence_limit=10, metrics=Metrics())
    hub._spawn(swallows_one_cancel())
    await asyncio.sleep(0)  # started: inside its first sleep
    async with asyncio.timeout(2):
        await hub.close()
    assert not hub._tasks  # ended, and dropped by its done callback


async def test_a_loop_that_never_ends_is_left_after_the_bound_and_named(caplog):
    caplog.set_level(logging.ERROR, "webchat.cancelling")
    release = asyncio.Event()
    task = asyncio.create_task(ignores_cancels(release), name="presence refresh")
    ended = asyncio.create_task(asyncio.sleep(3600), name="health")  # ends when cancelled
    await asyncio.sleep(0)  # both started
    try:
        async with asyncio.timeout(2):
            await cancel_until_done([task, ended], "Redis broker loops", timeout=0.3)
        assert ended.cancelled() and not task.done()
        assert "still running after 0.3 s of cancels: presence refresh" in caplog.text
    finally:
        release.set()
        await task


async def test_an_exception_a_stopped_task_ended_with_is_taken():
    """As gather(return_exceptions=True) took it: no 'exception was never retrieved' later."""

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("failed while stopping") from None

    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        task = asyncio.create_task(fails_when_cancelled())
        await asyncio.sleep(0)  # started: inside its sleep
        await cancel_until_done([task], "tasks", timeout=1)
        assert task.done() and not task.cancelled()  # it ended with its exception
        del task
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
