"""What-if: replay a recorded trace against a snapshot of the live stores and campaigns, with one
campaign as proposed (or as it is now), and count what it would do. Nothing live is touched:
the replay runs ``engine.core.Core`` over a ``MemoryStore`` (caps and inventory start from
zero), a copy of the live catalog and an immutable ``CampaignSet``, in a worker thread.

The trace is the request body: JSONL, one wire event (or batch) per line, as ``geopush replay``
reads a trace file; its first line may instead be ``{"campaign": {...}}``, a proposed version of
the campaign (validated as a PUT; not saved). At most ``MAX_TRACE_BYTES``.

Each decision where the campaign was a candidate (its merchant, trigger and stores) is counted:
a push, or the first rule that refused it, in ``decide``'s order (engine/decisions.py):
opt-out, quiet hours, the daily limit, schedule, audience, cooldown, per-user cap, inventory;
or ``outranked`` when a campaign ahead of it in decision order pushed instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from engine.campaigns import Campaign, CampaignSet
from engine.core import Core, CoreConfig
from engine.decisions import audience_ok, caps_ok, local_time, quiet, schedule_ok, utc_day
from engine.errors import DecodeError
from engine.events import Event, decode
from engine.outputs import Push
from engine.presence import Transition
from engine.state import MemoryStore, UserState
from engine.traces import sort_events
from fences.catalog import Catalog
from fences.index import FenceIndex
from fences.store import Store

MAX_TRACE_BYTES = 32 * 1024 * 1024
BATCH = 1000
CAP_KINDS = ("per_user", "cooldown", "inventory", "daily_limit", "quiet_hours")
OTHER_REASONS = ("opt_out", "schedule", "audience", "outranked")


def parse_trace(body: bytes, max_problems: int = 20) -> tuple[Any, list[Event], list[str]]:
    """(the proposed campaign's raw body or None, the events sorted by ts, problems)."""
    proposed: Any = None
    events: list[Event] = []
    problems: list[str] = []
    first = True
    for no, line in enumerate(body.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if first:
            first = False
            head = _campaign_line(line)
            if head is not None:
                proposed = head
                continue
        try:
            events.extend(decode(line))
        except DecodeError as exc:
            if len(problems) < max_problems:
                problems.append(f"line {no}: {exc.reason}: {exc.detail}")
            else:
                problems[-1] = "... and more bad lines"
    if not events and not problems:
        problems.append(
            "the trace holds no events: send JSONL, one wire event per line (docs/protocol.md)"
        )
    return proposed, sort_events(events), problems


def _campaign_line(line: bytes) -> Any:
    """The proposed campaign of a ``{"campaign": {...}}`` line (None: an event line)."""
    if b'"campaign"' not in line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None  # the decoder reports it as a bad line
    if isinstance(obj, dict) and "campaign" in obj and "type" not in obj:
        return obj["campaign"]
    return None


class _Counting(Core):
    """The core, counting what became of ``target`` at each decision it was a candidate in."""

    def __init__(self, target: Campaign, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.pushes = 0
        self.users: set[str] = set()
        self.by_store: dict[str, int] = {}
        self.refused: dict[str, int] = dict.fromkeys(CAP_KINDS + OTHER_REASONS, 0)
        self.candidate = 0

    def _decide(self, st: UserState, tr: Transition) -> Any:
        c = self.target
        v = tr.visit
        key = f"dwell:{tr.dwell_s}" if tr.kind == "dwell" else tr.kind
        cands = self.campaigns.lookup((v.merchant_id, key))
        if c not in cands or (c.stores is not None and v.store_id not in c.stores):
            return super()._decide(st, tr)
        self.candidate += 1
        reason = self._why_not(st, tr)
        push = super()._decide(st, tr)
        if isinstance(push, Push) and push.campaign_id == c.id:
            self.pushes += 1
            self.users.add(st.user)
            self.by_store[v.store_id] = self.by_store.get(v.store_id, 0) + 1
            return push
        ahead = {x.id for x in cands[: cands.index(c)]}
        if isinstance(push, Push) and push.campaign_id in ahead:
            reason = "outranked"
        if reason is not None:
            self.refused[reason] += 1
        return push

    def _why_not(self, st: UserState, tr: Transition) -> str | None:
        """The first rule that would refuse the target now (before the decision)."""
        c = self.target
        cs = self.campaigns
        v = tr.visit
        ts = tr.ts
        tags, opt_out = self._profile(st)
        if opt_out:
            return "opt_out"
        slot = self.catalog.slot_of(v.store_id)
        tz = self.catalog.stores[slot].tz if slot is not None else "UTC"
        weekday, minute = local_time(ts, tz)
        if quiet(cs.quiet_hours, minute):
            return "quiet_hours"
        limit = cs.max_pushes_per_user_per_day
        if limit is not None and st.day_pushes is not None and st.day_pushes.get(utc_day(ts), 0) >= limit:
            return "daily_limit"
        if not schedule_ok(c, ts, weekday, minute):
            return "schedule"
        if not audience_ok(c, tags, v, st):
            return "audience"
        times = st.push_times.get(c.id) if st.push_times is not None else None
        if times and c.cooldown_s > 0.0 and ts - max(times) < c.cooldown_s:
            return "cooldown"
        if not caps_ok(c, st, ts):
            return "per_user"
        left = self.store.inventory_left(c.id, c.inventory)
        if left is not None and left <= 0:
            return "inventory"
        return None


def run_forecast(
    stores: Sequence[Store],
    campaigns: CampaignSet,
    target: Campaign,
    events: Sequence[Event],
    *,
    config: CoreConfig | None = None,
    profiles: Any = None,
) -> dict[str, Any]:
    """Replay ``events`` (sorted) over a copy of ``stores`` with ``campaigns`` (holding
    ``target``); what ``target`` would do. Pure: may run in a worker thread."""
    t0 = time.perf_counter()
    index = FenceIndex(Catalog(stores))
    store = MemoryStore()
    core = _Counting(target, index, campaigns, store, config or CoreConfig(), profiles)
    for i in range(0, len(events), BATCH):
        store.commit(core.process(events[i : i + BATCH]))
    if core.watermark > float("-inf"):
        store.commit(core.flush(core.watermark))
    users = {ev.user for ev in events}
    inv = None
    if target.inventory is not None:
        inv = {"limit": target.inventory, "used": core.pushes, "left": target.inventory - core.pushes}
    return {
        "campaign_id": target.id,
        "events": len(events),
        "users": len(users),
        "visits": dict(core.stats.visits),
        "decisions": core.candidate,
        "pushes": core.pushes,
        "distinct_users": len(core.users),
        "pushes_by_store": dict(sorted(core.by_store.items())),
        "inventory": inv,
        "caps_binding": {k: core.refused[k] for k in CAP_KINDS},
        "refused": {k: core.refused[k] for k in OTHER_REASONS},
        "pushes_all_campaigns": core.stats.pushes,
        "seconds": round(time.perf_counter() - t0, 3),
    }


__all__ = ["CAP_KINDS", "MAX_TRACE_BYTES", "parse_trace", "run_forecast"]
