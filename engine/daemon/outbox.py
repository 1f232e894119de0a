"""Publishing committed outputs: many QoS 1 PUBLISHes in flight, marked sent after PUBACK.

Every row handed to ``Outbox.push`` is already committed in the SQLite outbox table (written in
the same transaction as the state change that produced it). The outbox publishes them
concurrently (up to ``max_in_flight`` awaiting PUBACK), collects the acknowledged ids and marks
them sent in small transactions. When the connection drops, in-flight rows simply stay unsent:
``reset_from_store`` reloads every unsent row after the reconnect (and on start), so a row is
published at least once; a crash between PUBACK and ``mark_sent`` repeats a message with the same
``out_id``, which consumers deduplicate on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

from engine.daemon.metrics import Metrics
from engine.daemon.mqtt import MqttLink
from engine.daemon.sqlite_store import OutRow, SQLiteStore
from engine.errors import TransportError

log = logging.getLogger("geopush.daemon")


class Outbox:
    def __init__(
        self,
        link: MqttLink,
        store: SQLiteStore,
        metrics: Metrics,
        *,
        max_in_flight: int = 200,
        mark_every: float = 0.05,
    ) -> None:
        self.link = link
        self.store = store
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.mark_every = mark_every
        # (row, receive time of the triggering message or None, topic kind)
        self._pending: collections.deque[tuple[OutRow, float | None]] = collections.deque()
        self._in_flight = 0
        self._acked: list[str] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._push_marker = "/push/"
        self._running = False

    @property
    def pending(self) -> int:
        """Rows committed but not yet acknowledged by the broker (queued + in flight)."""
        return len(self._pending) + self._in_flight

    def push(self, rows: list[OutRow], received: float | None = None) -> None:
        for r in rows:
            self._pending.append((r, received))
        if rows:
            self._idle.clear()
            # Hand them to paho right away (latency): the run task only mops up what the
            # in-flight limit held back, and marks rows sent.
            self._send()
            self._wake.set()

    def _send(self) -> None:
        while self._pending and self._in_flight < self.max_in_flight and self.link.connected:
            row, t0 = self._pending.popleft()
            fut = self.link.publish_nowait(row.topic, row.payload, qos=1)
            self._in_flight += 1
            fut.add_done_callback(self._done_cb(row, t0))

    def reset_from_store(self) -> int:
        """After (re)connecting: forget the in-memory queue, reload every unsent row."""
        self.flush_marks()
        self._pending.clear()
        rows = self.store.unsent()
        for r in rows:
            self._pending.append((r, None))
        if rows:
            self._idle.clear()
            self._wake.set()
        return len(rows)

    async def wait_below(self, limit: int) -> None:
        """Backpressure for the intake: wait while more than ``limit`` rows are pending."""
        while self.pending > limit and self.link.connected:
            self._idle.clear()
            await asyncio.sleep(0.001)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until everything pushed has been acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline and self.link.connected:
            await asyncio.sleep(0.01)
        self.flush_marks()
        return self.pending == 0

    def stop(self) -> None:
        """Make ``run`` return (cancelling a task blocked in wait_for can be lost on 3.11)."""
        self._running = False
        self._wake.set()

    async def run(self) -> None:
        """Publish until ``stop`` (one task per connection)."""
        last_mark = time.monotonic()
        self._running = True
        while self._running:
            self._wake.clear()
            self._send()
            self.metrics.outbox.set(len(self._pending))
            self.metrics.in_flight.set(self._in_flight)
            now = time.monotonic()
            if self._acked and (now - last_mark >= self.mark_every or len(self._acked) >= 5000):
                self.flush_marks()
                last_mark = now
            if not self._wake.is_set() and self._running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.mark_every)

    def flush_marks(self) -> None:
        acked, self._acked = self._acked, []
        if acked:
            self.store.mark_sent(acked)

    def _done_cb(self, row: OutRow, t0: float | None) -> Callable[[asyncio.Future[None]], None]:
        def done(fut: asyncio.Future[None]) -> None:
            self._in_flight -= 1
            exc = fut.exception()
            if exc is None:
                self._acked.append(row.out_id)
                self.metrics.published.inc()
                self.metrics.totals["published"] += 1
                if t0 is not None and self._push_marker in row.topic:
                    self.metrics.event_to_push.observe(time.time() - t0)
            elif not isinstance(exc, TransportError):
                log.error("publish of %s failed: %r", row.out_id, exc)
            # failed rows stay unsent in SQLite; reset_from_store picks them up after reconnect
            self._wake.set()

        return done


__all__ = ["Outbox"]
