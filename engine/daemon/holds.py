"""A worker group's per-user order across workers: the holds (``--group``, Redis state).

After a Redis outage every worker registers, per user, the oldest event time it has received
and not applied (its "holds"); a worker's batch then waits while another worker holds an older
event of one of its users (``HeldBack``, engine/stores/redis_store.py), so a user's events apply
in event-time order across the group, whichever worker received them (docs/operations.md,
"Scaling out"). ``Service`` (engine/daemon/service.py) calls the small interface below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from engine.daemon.pipeline import Decoder
from engine.errors import DecodeError, GeopushError
from engine.stores.redis_store import HeldBack, RedisStore, rearm
from engine.transport.mqtt import Inbound, MqttLink

log = logging.getLogger("geopush.daemon")

# A worker group after a Redis restart: every worker the restart stalled is back (its retries
# back off to 0.5 s at most) and has registered its holds before any worker applies its backlog
# once Redis has been up this long (docs/operations.md, "Scaling out").
RESYNC_GRACE_S = 3.0
HOLD_WAIT_S = 10.0  # waiting this long for a hold (its worker stuck?), a worker applies without


class GroupHolds:
    """One worker's side of the group's holds, over the group's store."""

    def __init__(self, group: RedisStore, decoder: Decoder, control: str) -> None:
        self.group = group
        self.decoder = decoder
        self.control = control  # the control topic: its messages carry no events
        self._outages = 0  # the group store's failed-and-retried Redis calls seen so far
        self._held_since: float | None = None  # since when the inbox's head waits for a hold
        self._ignored_until = 0.0

    def start(self) -> None:
        """Forget a previous run's holds (it died holding)."""
        self.group.set_holds({})
        self._outages = self.group.outages

    def release(self) -> None:
        """A clean stop: what this worker held back is left to the broker."""
        with contextlib.suppress(GeopushError):
            self.group.set_holds({})

    def outage_seen(self) -> bool:
        """Redis failed (and was retried) since the last resync: resync before applying more."""
        return self.group.outages != self._outages

    def holding(self) -> bool:
        """Anyone (this worker or another) holds: batches are cut (``cut``)."""
        if time.monotonic() < self._ignored_until:
            return False
        return bool(self.group.holds or self.group.others_holding)

    def order(self, events: Sequence[Any]) -> dict[str, float] | None:
        """user -> the newest event time of the batch, for the commit's hold check (None while
        the holds are ignored, see ``cut``)."""
        if time.monotonic() < self._ignored_until:
            return None
        order: dict[str, float] = {}
        for ev in events:
            if ev.ts > order.get(ev.user, -1.0):
                order[ev.user] = ev.ts
        return order

    def refresh(self, inbox: deque[Inbound]) -> None:
        """Keep this worker's holds current (committed with the batch) while anyone holds."""
        group = self.group
        if group.holds or group.others_holding:
            group.next_holds = self.inbox_holds(list(inbox))

    def held_back(self, exc: HeldBack, core: Any) -> None:
        """A commit was held back: nothing was applied; re-arm the core's users and roll back."""
        group = self.group
        group.users(exc.touched)
        rearm(core, [group.peek(u) for u in exc.touched])
        group.rollback()

    def user_span(self, x: Inbound) -> tuple[str, float, float] | None:
        """(user, oldest, newest event time) of a message; None for one without events."""
        if x.topic == self.control:
            return None
        try:
            evs = self.decoder(x.topic, x.payload)
        except DecodeError:
            return None
        if not evs:
            return None
        ts = [ev.ts for ev in evs]
        return str(evs[0].user), min(ts), max(ts)

    def inbox_holds(self, msgs: Sequence[Inbound]) -> dict[str, float]:
        """user -> the oldest event time of the user among ``msgs`` (received, not applied)."""
        holds: dict[str, float] = {}
        for x in msgs:
            span = self.user_span(x)
            if span is not None and span[1] < holds.get(span[0], float("inf")):
                holds[span[0]] = span[1]
        return holds

    def cut(self, batch: list[Inbound], inbox: deque[Inbound]) -> list[Inbound]:
        """The longest head of ``batch`` whose users no other worker holds an older event of;
        the rest goes back to ``inbox``, in order (a user's events then apply in event-time
        order across the group, whichever worker received them)."""
        spans = [self.user_span(x) for x in batch]
        others = self.group.others_holds(sorted({sp[0] for sp in spans if sp is not None}))
        n = 0
        for sp in spans:
            if sp is not None and sp[2] > others.get(sp[0], float("inf")):
                break
            n += 1
        if n == 0:
            now = time.monotonic()
            if self._held_since is None:
                self._held_since = now
            elif now - self._held_since > HOLD_WAIT_S:
                log.warning(
                    "waited %.0f s for another worker's older events of %s: applying without",
                    HOLD_WAIT_S, spans[0][0] if spans[0] else "?",
                )  # fmt: skip
                self._held_since = None
                self._ignored_until = now + HOLD_WAIT_S
                return batch
        else:
            self._held_since = None
        inbox.extendleft(reversed(batch[n:]))
        return batch[:n]

    async def resync(self, link: MqttLink) -> None:
        """Redis was unreachable (a restart, a failover, the network): every worker of the group
        may have a backlog that holds some user's older events while another worker holds their
        newer ones. Register this worker's holds (its whole backlog), and after a restart wait
        until every stalled worker did too (RESYNC_GRACE_S), before applying anything more."""
        group = self.group
        self._outages = group.outages
        uptime = group.uptime_s()
        misses = 0
        for _ in range(10_000):  # all the socket holds (pump stops at a PUBACK among them)
            misses = 0 if link.pump(1 << 16) else misses + 1
            if misses == 3:
                break
        holds = self.inbox_holds(list(link.inbox))
        group.set_holds(holds)
        self._outages = group.outages
        log.warning(
            "redis was unreachable (up %.1f s): %d users held back for the group's order",
            uptime, len(holds),
        )  # fmt: skip
        if uptime < RESYNC_GRACE_S:
            await asyncio.sleep(RESYNC_GRACE_S - uptime)


__all__ = ["HOLD_WAIT_S", "RESYNC_GRACE_S", "GroupHolds"]
