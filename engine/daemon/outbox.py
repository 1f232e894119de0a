"""Publishing committed outputs: many QoS 1 PUBLISHes in flight, marked sent after PUBACK.

Every row handed to ``Outbox.push`` is already committed in the SQLite outbox table (written in
the same transaction as the state change that produced it). The outbox publishes them
concurrently (up to ``max_in_flight`` awaiting PUBACK) and collects the acknowledged ids. Under
load the service hands them to the store before each batch commit (``fold_marks``), so they are
marked sent inside that batch's transaction; when no batch comes for ``mark_every`` seconds they
are marked in a transaction of their own (``flush_marks``; stores without ``defer_sent``, e.g.
Redis, always so). When the connection drops, in-flight rows simply stay unsent:
``reset_from_store`` reloads every unsent row after the reconnect (and on start), so a row is
published at least once; a crash between PUBACK and the commit that marks it repeats a message
with the same ``out_id``, which consumers deduplicate on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable

from engine.daemon.metrics import Metrics
from engine.errors import TransportError
from engine.stores.sqlite_store import OutRow, SQLiteStore
from engine.transport.mqtt import MqttLink

log = logging.getLogger("geopush.daemon")


class Outbox:
    def __init__(
        self,
        link: MqttLink,
        store: SQLiteStore,
        metrics: Metrics,
        *,
        max_in_flight: int = 200,
        mark_every: float | None = None,
    ) -> None:
        self.link = link
        self.store = store
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        # (row, receive time of the triggering message or None, topic kind)
        self._pending: collections.deque[tuple[OutRow, float | None]] = collections.deque()
        self._in_flight = 0
        self._published = 0
        self._acked: list[str] = []
        # A SQLite store takes acked ids into its next batch commit: the timer marks them only
        # when no batch came for mark_every (longer than a busy batch takes, or it would race
        # the next commit). Other stores mark them on the timer, every mark_every.
        self._defer = getattr(store, "defer_sent", None)
        if mark_every is None:
            mark_every = 0.05 if self._defer is None else 0.5
        self.mark_every = mark_every
        self._flush_at = 50_000 if self._defer is not None else 5000  # acked ids kept at most
        self._last_mark = time.monotonic()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._push_marker = "/push/"
        self._running = False
        self._sending = False
        # Called with each commit's rows as they are pushed (the HTTP API's live visit feed).
        self.on_commit: Callable[[list[OutRow]], None] | None = None
        self.on_push: Callable[[], None] | None = None  # told of committed rows (webhooks)

    @property
    def pending(self) -> int:
        """Rows committed but not yet acknowledged by the broker (queued + in flight)."""
        return len(self._pending) + self._in_flight

    def push(self, rows: list[OutRow], received: float | None = None) -> None:
        if self.on_commit is not None:
            self.on_commit(rows)
        for r in rows:
            self._pending.append((r, received))
        if rows:
            if self.on_push is not None:
                self.on_push()
            self._idle.clear()
            # Hand them to paho right away (latency): the run task only mops up what the
            # in-flight limit held back, and marks rows sent.
            self._send()
            self._wake.set()

    def _send(self) -> None:
        if self._sending:  # a publish that fails at once calls back into _send: no recursion
            return
        self._sending = True
        try:
            publish, link = self.link.publish_cb, self.link
            while self._pending and self._in_flight < self.max_in_flight and link.connected:
                row, t0 = self._pending.popleft()
                self._in_flight += 1
                publish(row.topic, row.payload, functools.partial(self._done, row, t0), 1)
        finally:
            self._sending = False

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
        """Backpressure for the intake: wait while more than ``limit`` rows are pending. The
        link reads on meanwhile, past its inbox's bound: the PUBACKs this waits for come behind
        the PUBLISHes a paused read would leave unread (engine/transport/mqtt.py)."""
        with self.link.read_past_bound():
            while self.pending > limit and self.link.connected:
                self._idle.clear()
                await asyncio.sleep(0.001)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until everything pushed has been acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.link.read_past_bound():  # (as wait_below)
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
        self._running = True
        while self._running:
            self._wake.clear()
            self._send()
            self.count_published()
            self.metrics.outbox.set(len(self._pending))
            self.metrics.in_flight.set(self._in_flight)
            now = time.monotonic()
            if self._acked and (
                now - self._last_mark >= self.mark_every or len(self._acked) >= self._flush_at
            ):
                self.flush_marks()
            if not self._wake.is_set() and self._running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(self.mark_every, 0.05))

    def count_published(self) -> None:
        """Add the outputs acknowledged since the last call to the metrics."""
        n, self._published = self._published, 0
        if n:
            self.metrics.published.inc(n)
            self.metrics.totals["published"] += n

    def fold_marks(self) -> None:
        """Before a batch commit: the store marks the acknowledged rows sent in that commit's
        transaction (no transaction of their own). A store that cannot leaves them to the timer."""
        self.count_published()
        if self._defer is not None:
            acked, self._acked = self._acked, []
            if acked:
                self._defer(acked)
            self._last_mark = time.monotonic()

    def flush_marks(self) -> None:
        """Mark every acknowledged row sent now (with the store's deferred ones)."""
        self.count_published()
        acked, self._acked = self._acked, []
        if acked or self._defer is not None:
            self.store.mark_sent(acked)
        self._last_mark = time.monotonic()

    def _done(self, row: OutRow, t0: float | None, exc: BaseException | None) -> None:
        """PUBACK (``exc`` None) or failure of one row; runs inside paho's read callback."""
        self._in_flight -= 1
        if exc is None:
            self._acked.append(row.out_id)
            self._published += 1  # counted into the metrics by the run task (not per PUBACK)
            if t0 is not None and self._push_marker in row.topic:
                self.metrics.event_to_push.observe(time.time() - t0)
            if self._pending:
                self._send()  # refill the in-flight window now, not on the run task's next turn
            if len(self._acked) >= self._flush_at:
                self._wake.set()
        else:
            if not isinstance(exc, TransportError):
                log.error("publish of %s failed: %r", row.out_id, exc)
            # failed rows stay unsent in SQLite; reset_from_store picks them up after reconnect
            self._wake.set()


__all__ = ["Outbox"]
