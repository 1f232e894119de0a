"""Stopping helper tasks when a cancellation is lost (engine/daemon/tasks.py): Python 3.11's
``asyncio.wait_for`` returns its inner result instead of raising when the cancel lands as that
result arrives, so one ``cancel()`` can leave a ``while True`` loop running."""

from __future__ import annotations

import asyncio
import sys

import pytest

from engine.daemon.tasks import cancel_and_wait


def _loop_that_loses_a_cancel() -> tuple[asyncio.Future[int], asyncio.Task[None], list[int]]:
    """A helper loop over ``wait_for`` whose first await is on ``first``: resolve it and cancel
    the task in the same turn and the cancel is swallowed (on 3.11)."""
    first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    turns: list[int] = []

    async def loop() -> None:
        turns.append(await asyncio.wait_for(first, 5))
        while True:  # stopped only by cancellation, like the broker watch's loop
            turns.append(await asyncio.wait_for(asyncio.sleep(0.01, 1), 5))

    return first, asyncio.create_task(loop(), name="helper"), turns


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps cancellations from 3.12")
async def test_one_cancel_can_be_lost_in_wait_for():
    first, task, turns = _loop_that_loses_a_cancel()
    await asyncio.sleep(0)
    first.set_result(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done and len(turns) > 1  # the loop ran on after the cancel
    assert await cancel_and_wait([task]) == []  # (a second single cancel can be lost too)


async def test_cancel_and_wait_ends_a_loop_that_lost_a_cancel():
    first, task, turns = _loop_that_loses_a_cancel()
    await asyncio.sleep(0)
    first.set_result(0)
    left = await cancel_and_wait([task, None])  # its first cancel lands as `first` resolves
    assert left == [] and task.cancelled()


async def test_cancel_and_wait_gives_up_on_a_task_that_never_stops(caplog):
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    left = await cancel_and_wait([task], timeout=0.6)
    assert left == [task] and not task.done()
    assert "stubborn did not stop" in caplog.text
    stop.set()
    await task
