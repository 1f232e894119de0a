"""Stopping helper tasks for good.

``task.cancel()`` once is not enough on Python 3.11: ``asyncio.wait_for`` (used by the MQTT
link's connect and disconnect, among others) swallows a cancellation that lands just as its inner
awaitable finishes and returns that result instead (python/cpython#86296, fixed in 3.12), so a
``while True`` loop stopped only by one ``cancel()`` can run on, and a shutdown that awaits it
hangs. ``cancel_and_wait`` cancels again until the tasks end, within a bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("geopush.daemon")

RECANCEL_S = 0.5  # a task still running this long after a cancel is cancelled again


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any] | None], timeout: float = 10.0
) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` (None entries skipped) and wait until they end, cancelling again every
    ``RECANCEL_S`` (a lost cancellation); after ``timeout`` give up on the rest, log them and
    return them. A task's own exception is logged, not raised: the caller is shutting down."""
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    ended: set[asyncio.Task[Any]] = set()
    while pending:
        for t in pending:
            t.cancel()
        done, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, timeout))
        ended |= done
        if pending and loop.time() >= deadline:
            for t in pending:
                log.warning("task %s did not stop within %.0f s; left behind", t.get_name(), timeout)
            break
    for t in ended:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s task failed while stopping: %r", t.get_name(), t.exception())
    return sorted(pending, key=lambda t: t.get_name())
