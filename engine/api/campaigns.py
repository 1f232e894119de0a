"""Campaigns as the HTTP API sees them: validated as the campaign file is, scoped to a merchant,
versioned, changed live.

Layering, as for stores (engine/api/live.py): the campaign file (``--campaigns``) is the
**baseline**; the state file holds the **changes made through the API**, every version of every
campaign changed, in table ``api_campaigns`` (created here, ``CREATE TABLE IF NOT EXISTS``):
``seq`` numbers the changes in order; each row holds the campaign's id, its version (1, 2, ...),
the action (``create``, ``update``, ``delete``, ``pause``, ``resume``), the campaign's body as
sent (NULL for a deletion), whether it is paused, who made the change (token id and name, role,
the token's merchant) and when. The newest row of a campaign is its live state: the daemon lays
those over the file's campaigns at start-up and on reload (``overlay_campaigns``). The API swaps
its target's ``CampaignSet`` at each change (the API process's copy); the engine reads the new
versions between two micro-batches and swaps its core's set (``Core.reload(campaigns=...)``,
engine/api/follow.py).

A paused or deleted campaign is left out of the live set. Caps and inventory are counted by
campaign id in the state store (engine/decisions.py), so a change (an edit, a pause, even a
delete and re-create under the same id) never resets what was already spent.

No FastAPI here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.api.errors import AccessDenied, Conflict, InvalidRequest, NotFound
from engine.api.state import Principal
from engine.campaigns import DAYS, Campaign, CampaignSet, campaign_problems, parse_campaign
from engine.errors import CampaignError, StateError
from fences.catalog import Catalog
from fences.store import Store

log = logging.getLogger("geopush.api")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_campaigns (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    merchant_id TEXT NOT NULL,
    action TEXT NOT NULL,
    body TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    token_id TEXT,
    token_name TEXT,
    role TEXT,
    token_merchant TEXT,
    ts REAL NOT NULL,
    UNIQUE (campaign_id, version)
);
"""

_COLS = (
    "seq, campaign_id, version, merchant_id, action, body, paused, token_id, token_name, role,"
    " token_merchant, ts"
)


@dataclass(frozen=True, slots=True)
class CampaignVersion:
    """One change of one campaign made through the API."""

    seq: int
    campaign_id: str
    version: int
    merchant_id: str
    action: str  # create | update | delete | pause | resume
    body: dict[str, Any] | None  # None: deleted
    paused: bool
    token_id: str | None
    token_name: str | None
    role: str | None
    token_merchant: str | None
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "action": self.action,
            "campaign": self.body,
            "status": "deleted" if self.body is None else ("paused" if self.paused else "active"),
            "author": {
                "token_id": self.token_id,
                "name": self.token_name,
                "role": self.role,
                "merchant_id": self.token_merchant,
            },
            "time": self.ts,
        }


def _version(row: tuple[Any, ...]) -> CampaignVersion:
    return CampaignVersion(
        int(row[0]), row[1], int(row[2]), row[3], row[4],
        None if row[5] is None else json.loads(row[5]), bool(row[6]),
        row[7], row[8], row[9], row[10], float(row[11]),
    )  # fmt: skip


@contextlib.contextmanager
def _sql(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StateError(f"state file {path}: {exc}") from exc


class CampaignLog:
    """The ``api_campaigns`` table on a connection of its own to the state file (WAL)."""

    BUSY_TIMEOUT_MS = 250  # on the event loop: a longer wait is a 503

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with _sql(self.path):
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(self.BUSY_TIMEOUT_MS)}")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def latest(self, campaign_id: str | None = None) -> dict[str, CampaignVersion]:
        """The newest version of each campaign changed through the API (or of one)."""
        q = f"SELECT {_COLS} FROM api_campaigns a WHERE version = (SELECT MAX(version) FROM api_campaigns b WHERE b.campaign_id = a.campaign_id)"
        args: tuple[Any, ...] = ()
        if campaign_id is not None:
            q += " AND campaign_id = ?"
            args = (campaign_id,)
        with _sql(self.path):
            rows = self._db.execute(q, args).fetchall()
        return {r[1]: _version(r) for r in rows}

    def history(self, campaign_id: str) -> list[CampaignVersion]:
        with _sql(self.path):
            rows = self._db.execute(
                f"SELECT {_COLS} FROM api_campaigns WHERE campaign_id = ? ORDER BY version",
                (campaign_id,),
            ).fetchall()
        return [_version(r) for r in rows]

    def record(
        self, campaign_id: str, merchant_id: str, action: str, body: dict[str, Any] | None,
        paused: bool, who: Principal, inventory_delta: int = 0,
    ) -> CampaignVersion:  # fmt: skip
        """Append a version in one transaction; ``inventory_delta``: moves the campaign's
        coupons-left counter (the state store's ``inventory`` table, when it has one) by that
        much in the same transaction, so an edit of ``inventory`` keeps what was spent. It may
        go below zero (an inventory lowered below what was spent): nothing sells then
        (``take_coupon`` needs ``left > 0``), and a later raise counts from the true spend."""
        now = round(time.time(), 3)
        with _sql(self.path):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                (last,) = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM api_campaigns WHERE campaign_id = ?",
                    (campaign_id,),
                ).fetchone()
                cur = db.execute(
                    "INSERT INTO api_campaigns (campaign_id, version, merchant_id, action, body,"
                    " paused, token_id, token_name, role, token_merchant, ts)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        campaign_id, int(last) + 1, merchant_id, action,
                        None if body is None else json.dumps(body, separators=(",", ":")),
                        int(paused), who.token_id, who.name, who.role, who.merchant_id, now,
                    ),
                )  # fmt: skip
                seq = cur.lastrowid
                if inventory_delta and db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'inventory'"
                ).fetchone():
                    db.execute(
                        "UPDATE inventory SET left = left + ? WHERE campaign_id = ?",
                        (inventory_delta, campaign_id),
                    )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return CampaignVersion(
            int(seq or 0), campaign_id, int(last) + 1, merchant_id, action, body, paused,
            who.token_id, who.name, who.role, who.merchant_id, now,
        )  # fmt: skip


def read_campaign_changes(state: str | Path, after: int = 0) -> list[CampaignVersion]:
    """The campaign versions of a state file numbered after ``after``, in order (reads only);
    none when the file or the table does not exist, or for a Redis state."""
    text = str(state)
    if text.startswith(("redis://", "rediss://", "unix://")):
        return []
    path = Path(text)
    if not path.exists():
        return []
    with _sql(path), contextlib.closing(sqlite3.connect(str(path))) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'api_campaigns'").fetchone():
            return []
        rows = db.execute(
            f"SELECT {_COLS} FROM api_campaigns WHERE seq > ? ORDER BY seq", (after,)
        ).fetchall()
    return [_version(r) for r in rows]


def _with(base: CampaignSet, campaigns: dict[str, Campaign]) -> CampaignSet:
    return CampaignSet(tuple(campaigns.values()), base.max_pushes_per_user_per_day, base.quiet_hours)


def overlay_campaigns(
    base: CampaignSet, changes: Sequence[CampaignVersion]
) -> tuple[CampaignSet, list[str]]:
    """Lay API changes (in order, the newest of a campaign wins) over a campaign set: a
    deleted or paused campaign is left out, another replaces the file's campaign of that id.
    A version that no longer validates is skipped with a warning (the file's version stays)."""
    out = {c.id: c for c in base.campaigns}
    warnings: list[str] = []
    for v in changes:
        if v.body is None or v.paused:
            out.pop(v.campaign_id, None)
            continue
        try:
            out[v.campaign_id] = parse_campaign(v.body, f"campaign {v.campaign_id!r}")
        except CampaignError as exc:
            warnings.append(
                f"campaign {v.campaign_id!r} changed through the API is invalid now: {exc}"
            )
    return _with(base, out), warnings


def overlay_campaigns_state(base: CampaignSet, state: str | Path, after: int = 0) -> tuple[CampaignSet, int]:
    """``overlay_campaigns`` the changes persisted in a state file after ``after``; logs the
    warnings; (the new set, the number of the last change read)."""
    changes = read_campaign_changes(state, after)
    if not changes:
        return base, after
    merged, warnings = overlay_campaigns(base, changes)
    for w in warnings:
        log.warning("%s", w)
    log.info("%d campaign change(s) made through the API laid over the campaigns", len(changes))
    return merged, max(c.seq for c in changes)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def campaign_to_raw(c: Campaign) -> dict[str, Any]:
    """A campaign as a campaign file's entry (``parse_campaign`` gives back an equal one)."""
    raw: dict[str, Any] = {"id": c.id, "merchant_id": c.merchant_id, "trigger": c.trigger}
    if c.dwell_s is not None:
        raw["dwell_s"] = c.dwell_s
    if c.stores is not None:
        raw["stores"] = sorted(c.stores)
    raw["audience"] = {
        "segment": c.segment,
        "tags_any": sorted(c.tags_any),
        "exclude_tags": sorted(c.exclude_tags),
    }
    sched: dict[str, Any] = {
        "days": [DAYS[d] for d in sorted(c.days)],
        "start": _hhmm(c.start_min),
        "end": "24:00" if c.end_min == 24 * 60 else _hhmm(c.end_min),
    }
    if c.valid_from is not None:
        sched["valid_from"] = c.valid_from
    if c.valid_until is not None:
        sched["valid_until"] = c.valid_until
    raw["schedule"] = sched
    caps: dict[str, Any] = {"cooldown_s": c.cooldown_s}
    if c.per_user is not None:
        caps["per_user"] = c.per_user
        caps["period_s"] = c.period_s
    raw["caps"] = caps
    if c.inventory is not None:
        raw["inventory"] = c.inventory
    raw["priority"] = c.priority
    cp = c.coupon
    raw["coupon"] = {
        "title": cp.title, "value": cp.value, "currency": cp.currency,
        "expires_in_s": cp.expires_in_s,
    }  # fmt: skip
    return raw


def _nothing(_c: Any) -> None:
    return None


def _none() -> Any:
    return None


@dataclass
class CampaignTarget:
    """Where campaign changes go: ``get()`` the live set, ``swap(new)`` installs one
    (``Core.reload(campaigns=new)``); ``config()`` / ``profiles()``: the live core's presence
    settings and profile book, for forecasts (None: defaults / none); ``counter_changed(id)``:
    the campaign's coupon counter was changed in the state file (the store drops its cached
    value)."""

    get: Callable[[], CampaignSet]
    swap: Callable[[CampaignSet], None] = _nothing
    counter_changed: Callable[[str], None] = _nothing
    config: Callable[[], Any] = _none
    profiles: Callable[[], Any] = _none


@dataclass(frozen=True, slots=True)
class CampaignView:
    """A campaign as the API shows it."""

    campaign_id: str
    merchant_id: str
    body: dict[str, Any]
    status: str  # active | paused
    source: str  # file | api
    version: int  # 0: the file's, never changed through the API
    changed: float | None
    changed_by: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.campaign_id,
            "merchant_id": self.merchant_id,
            "status": self.status,
            "source": self.source,
            "version": self.version,
            "changed": self.changed,
            "changed_by": self.changed_by,
            "campaign": self.body,
        }


def _view(v: CampaignVersion) -> CampaignView:
    assert v.body is not None
    return CampaignView(
        v.campaign_id, v.merchant_id, v.body, "paused" if v.paused else "active", "api",
        v.version, v.ts, v.to_dict()["author"],
    )  # fmt: skip


def _file_view(c: Campaign) -> CampaignView:
    return CampaignView(c.id, c.merchant_id, campaign_to_raw(c), "active", "file", 0, None, None)


def _scope_reason(scope: str, merchant_id: Any) -> str:
    return (
        f"this token may only put campaigns of merchant {scope!r}, not {merchant_id!r}; set "
        f'"merchant_id": {json.dumps(scope)} or use an operator token'
    )


class LiveCampaigns:
    """The API's campaign operations over the live core and the state file.

    ``catalog()``: the live store catalog, for the check that a campaign lists only its
    merchant's stores, and for forecasts."""

    def __init__(
        self, target: CampaignTarget, log_: CampaignLog, catalog: Callable[[], Catalog]
    ) -> None:
        self.target = target
        self.log = log_
        self.catalog = catalog

    def store_merchant(self, store_id: str) -> str | None:
        cat = self.catalog()
        slot = cat.slot_of(store_id)
        return None if slot is None else cat.stores[slot].merchant_id

    def stores_snapshot(self) -> list[Store]:
        """The live stores now (for a forecast's own copy of the index)."""
        return [s for _, s in self.catalog().alive()]

    # --- reads -----------------------------------------------------------------------------------

    def view(self, campaign_id: str, scope: str | None) -> CampaignView:
        v = self.log.latest(campaign_id).get(campaign_id)
        view: CampaignView | None = None
        if v is not None:
            view = None if v.body is None else _view(v)
        else:
            c = self.target.get().get(campaign_id)
            view = None if c is None else _file_view(c)
        if view is None or (scope is not None and view.merchant_id != scope):
            raise NotFound(
                f"no campaign {campaign_id!r}" + ("" if scope is None else f" of merchant {scope!r}")
            )
        return view

    def find(self, scope: str | None, merchant_id: str | None = None) -> list[CampaignView]:
        if scope is not None:
            if merchant_id is not None and merchant_id != scope:
                raise AccessDenied(
                    f"this token sees only the campaigns of merchant {scope!r}; drop merchant_id "
                    "or use an operator token"
                )
            merchant_id = scope
        latest = self.log.latest()
        views = {c.id: _file_view(c) for c in self.target.get().campaigns if c.id not in latest}
        views.update({cid: _view(v) for cid, v in latest.items() if v.body is not None})
        return [
            views[k] for k in sorted(views)
            if merchant_id is None or views[k].merchant_id == merchant_id
        ]  # fmt: skip

    def history(self, campaign_id: str, scope: str | None) -> list[CampaignVersion]:
        versions = self.log.history(campaign_id)
        if not versions:
            self.view(campaign_id, scope)  # 404 unless a file campaign: no versions yet
            return []
        if scope is not None and versions[-1].merchant_id != scope:
            raise NotFound(f"no campaign {campaign_id!r} of merchant {scope!r}")
        return versions

    # --- checks ----------------------------------------------------------------------------------

    def check(self, campaign_id: str, raw: Any, who: Principal) -> tuple[Campaign, list[str]]:
        """Validate a campaign for ``campaign_id`` as ``who`` would put it: (the campaign, the
        warnings). Raises InvalidRequest (422, every problem), AccessDenied, Conflict."""
        problems = campaign_problems(raw, "campaign")
        if isinstance(raw, dict) and raw.get("id") not in (None, campaign_id):
            problems.append(
                f"campaign.id: {raw.get('id')!r} differs from the URL's {campaign_id!r}; make them "
                "equal (to rename a campaign, PUT the new id and DELETE the old)"
            )
        if problems:
            raise InvalidRequest(f"{len(problems)} problem(s); fix each and retry", problems)
        c = parse_campaign(raw)
        scope = who.scope
        if scope is not None and c.merchant_id != scope:
            raise AccessDenied(_scope_reason(scope, c.merchant_id))
        old = self._current_merchant(campaign_id)
        if old is not None and scope is not None and old != scope:
            raise Conflict(
                f"campaign id {campaign_id!r} is taken by another merchant; choose another id"
            )
        warnings: list[str] = []
        for sid in sorted(c.stores or ()):
            owner = self.store_merchant(sid)
            if owner is not None and owner != c.merchant_id:
                reason = f"store {sid!r} belongs to another merchant"
                if scope is None:
                    reason = f"store {sid!r} belongs to merchant {owner!r}, not {c.merchant_id!r}"
                problems.append(f"campaign.stores: {reason}; list only stores of {c.merchant_id!r}")
            elif owner is None and scope is not None:
                problems.append(
                    f"campaign.stores: {sid!r} is not a live store of merchant {scope!r}; create "
                    "the store first (PUT /v1/stores/...) or drop it from the list"
                )
            elif owner is None:
                warnings.append(
                    f"store {sid!r} is not in the live catalog: the campaign pushes there once it is"
                )
        if problems:
            raise InvalidRequest(f"{len(problems)} problem(s); fix each and retry", problems)
        return c, warnings

    def _current_merchant(self, campaign_id: str) -> str | None:
        v = self.log.latest(campaign_id).get(campaign_id)
        if v is not None:
            return None if v.body is None else v.merchant_id
        c = self.target.get().get(campaign_id)
        return None if c is None else c.merchant_id

    # --- changes ---------------------------------------------------------------------------------

    def put(self, campaign_id: str, raw: Any, who: Principal) -> tuple[CampaignView, bool, list[str]]:
        """Create or replace a campaign: (its view, created, warnings). An unchanged campaign
        makes no new version."""
        c, warnings = self.check(campaign_id, raw, who)
        prior = self.log.latest(campaign_id).get(campaign_id)
        paused = prior is not None and prior.body is not None and prior.paused
        existing: Campaign | None
        if prior is not None:
            existing = None if prior.body is None else parse_campaign(prior.body)
        else:
            existing = self.target.get().get(campaign_id)
        if existing is not None and existing == c:
            return self.view(campaign_id, who.scope), False, warnings
        # The coupons left move with the inventory (what was spent stays spent), also when the
        # id is re-created after a delete: the counter is the id's.
        before = existing if existing is not None else self._last_version(campaign_id)
        delta = 0
        if before is not None and before.inventory is not None and c.inventory is not None:
            delta = c.inventory - before.inventory
        action = "create" if existing is None else "update"
        version = self.log.record(
            campaign_id, c.merchant_id, action, raw, paused, who, inventory_delta=delta
        )
        if delta:
            self.target.counter_changed(campaign_id)
        self._swap(campaign_id, None if paused else c)
        return _view(version), existing is None, warnings

    def _last_version(self, campaign_id: str) -> Campaign | None:
        """The campaign's last version before it was deleted (None: none)."""
        for v in reversed(self.log.history(campaign_id)):
            if v.body is not None:
                try:
                    return parse_campaign(v.body)
                except CampaignError:
                    return None
        return None

    def delete(self, campaign_id: str, who: Principal) -> None:
        view = self.view(campaign_id, who.scope)
        self.log.record(campaign_id, view.merchant_id, "delete", None, False, who)
        self._swap(campaign_id, None)

    def set_paused(self, campaign_id: str, paused: bool, who: Principal) -> CampaignView:
        view = self.view(campaign_id, who.scope)
        if (view.status == "paused") == paused:
            return view
        action = "pause" if paused else "resume"
        version = self.log.record(campaign_id, view.merchant_id, action, view.body, paused, who)
        self._swap(campaign_id, None if paused else parse_campaign(view.body))
        return _view(version)

    def _swap(self, campaign_id: str, campaign: Campaign | None) -> None:
        live = self.target.get()
        out = {c.id: c for c in live.campaigns}
        if campaign is None:
            out.pop(campaign_id, None)
        else:
            out[campaign_id] = campaign
        self.target.swap(_with(live, out))

    def forecast_target(
        self, campaign_id: str, proposed: Any, who: Principal
    ) -> tuple[Campaign, int | str]:
        """What a forecast runs: the campaign as ``proposed`` (checked as a PUT would be), or
        its live version when nothing is proposed; with that version (or ``"proposed"``)."""
        if proposed is None:
            view = self.view(campaign_id, who.scope)
            return parse_campaign(view.body), view.version
        target, _warnings = self.check(campaign_id, proposed, who)
        return target, "proposed"

    def with_campaign(self, campaign: Campaign) -> CampaignSet:
        """The live set with ``campaign`` in it (for a forecast)."""
        live = self.target.get()
        out = {c.id: c for c in live.campaigns}
        out[campaign.id] = campaign
        return _with(live, out)


__all__ = [
    "CampaignLog",
    "CampaignTarget",
    "CampaignVersion",
    "CampaignView",
    "LiveCampaigns",
    "campaign_to_raw",
    "overlay_campaigns",
    "overlay_campaigns_state",
    "read_campaign_changes",
]
