"""The engine follows the changes the HTTP API's process made in the SQLite state file.

The API runs in a process of its own (engine/api/process.py): it validates a change against its
own copy of the catalog and campaigns, persists it (``api_stores`` rows numbered by ``seq``,
engine/api/state.py; ``api_campaigns`` versions, engine/api/campaigns.py) and answers. The engine
learns of it here: between two micro-batches, at most every ``every`` seconds (``--api-follow-ms``,
20 ms) and at once when a batch arrives after an idle wait, ``check`` runs ONE query of the two
tables' newest ``seq`` (indexed: a few microseconds); only when one moved does it read the
changes after the ones it applied and apply them, as a reload lays them over the files:

* stores: ``overlay`` on the live ``FenceIndex`` (``add``/``remove`` in place, no rebuild) for
  each store's newest change, removals told to the core (``Core.stores_removed``: open visits
  there exit);
* campaigns: ``overlay_campaigns`` over the live ``CampaignSet``, swapped in with
  ``Core.reload(campaigns=...)``; each changed campaign's cached coupon counter is dropped (the
  API moved it in the file when the inventory was edited; the engine writes its counters
  relative to the file, so neither change is lost: engine/stores/sqlite_store.py).

A change made through the API is therefore in effect for the engine's batches at most ``every``
(plus one batch) after the API answered it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.api.live import FenceTarget, overlay
from engine.api.state import StoreChange, _change, _sql, _sqlite_path

log = logging.getLogger("geopush.daemon")

FOLLOW_EVERY_S = 0.02

_TOPS = (
    "SELECT (SELECT COALESCE(MAX(seq), 0) FROM api_stores),"
    " (SELECT COALESCE(MAX(seq), 0) FROM api_campaigns)"
)


def apply_store_changes(
    target: FenceTarget, changes: Sequence[StoreChange], logger: logging.Logger = log
) -> int:
    """Apply persisted store changes (in ``seq`` order) to the live index of ``target``: each
    store's newest change, skipped when the live store already equals it; removals told to
    ``target.removed``; overlay warnings go to ``logger``. Returns the number of stores changed.
    Serves both the SQLite follower here and the Redis one (engine/api/redis_state.py)."""
    from fences.catalog import to_feature

    if not changes:
        return 0
    newest = {c.store_id: c for c in changes}
    index = target.index()
    cat = index.catalog
    todo: list[StoreChange] = []
    for c in sorted(newest.values(), key=lambda c: c.seq):
        slot = cat.slot_of(c.store_id)
        if c.feature is None:
            if slot is not None:
                todo.append(c)
        elif slot is None or to_feature(cat.stores[slot]) != c.feature:
            todo.append(c)
    present = [c.store_id for c in todo if c.feature is None]
    for w in overlay(index, todo):
        logger.warning("%s", w)
    gone = [sid for sid in present if cat.slot_of(sid) is None]
    if gone:
        target.removed(gone)
    return len(todo)


class StateFollower:
    """Applies the API process's store and campaign changes to the engine (see the module)."""

    def __init__(
        self,
        state: str | Path,
        target: FenceTarget,
        *,
        store_seq: int = 0,
        campaign_seq: int = 0,
        every: float = FOLLOW_EVERY_S,
    ) -> None:
        from engine.api.campaigns import _SCHEMA

        self.path = _sqlite_path(state)
        self.target = target
        self.store_seq = store_seq
        self.campaign_seq = campaign_seq
        self.every = every
        self.next_at = 0.0
        self.checks = 0  # counters for the status and tests
        self.stores_applied = 0
        self.campaigns_applied = 0
        with _sql(self.path):
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA busy_timeout=250")
            self._db.executescript(_SCHEMA)  # (api_campaigns: made by the API on first use)
            # the newest change's number by an index, not a scan of every store changed
            self._db.execute("CREATE INDEX IF NOT EXISTS api_stores_seq ON api_stores (seq)")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def check(self) -> bool:
        """One query; when the API changed something, apply it. True when something was
        applied. A failing state file is logged and retried at the next check."""
        self.next_at = time.monotonic() + self.every
        self.checks += 1
        try:
            with _sql(self.path):
                stores, campaigns = self._db.execute(_TOPS).fetchone()
                moved = False
                if int(stores) > self.store_seq:
                    self._stores()
                    moved = True
                if int(campaigns) > self.campaign_seq:
                    self._campaigns()
                    moved = True
        except Exception as exc:  # noqa: BLE001  (the event path must go on; retried)
            log.error("applying the HTTP API's changes failed (retrying): %r", exc)
            return False
        return moved

    def _stores(self) -> None:
        rows = self._db.execute(
            "SELECT store_id, merchant_id, feature, seq FROM api_stores WHERE seq > ? ORDER BY seq",
            (self.store_seq,),
        ).fetchall()
        changes = [_change(r) for r in rows]
        if changes:
            self.stores_applied += apply_store_changes(self.target, changes)
            self.store_seq = max(c.seq for c in changes)

    def _campaigns(self) -> None:
        from engine.api.campaigns import _COLS, _version, overlay_campaigns

        rows = self._db.execute(
            f"SELECT {_COLS} FROM api_campaigns WHERE seq > ? ORDER BY seq", (self.campaign_seq,)
        ).fetchall()
        versions = [_version(r) for r in rows]
        if not versions:
            return
        self.campaign_seq = max(v.seq for v in versions)
        target: Any = self.target.campaigns
        if target is None:
            return
        merged, warnings = overlay_campaigns(target.get(), versions)
        for w in warnings:
            log.warning("%s", w)
        target.swap(merged)
        for cid in {v.campaign_id for v in versions}:
            target.counter_changed(cid)
        self.campaigns_applied += len(versions)


__all__ = ["FOLLOW_EVERY_S", "StateFollower", "apply_store_changes"]
