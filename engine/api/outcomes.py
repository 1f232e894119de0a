"""What followed the visits: the outcome log (pushes, holdout decisions, redemption answers,
attributed orders) and the merchant report over it and the visit log.

**Why a log of its own.** ``engine/report.py`` is a pure function of the daemon's outputs. The
outbox holds them all, but keeps only the newest 100,000 sent rows (pushes and visits together),
so a report straight off the outbox forgets last week on a busy day. The visit log
(engine/api/visits.py) already keeps the visit events; this module keeps the rest the same way:

* ``api_outcomes(seq PRIMARY KEY, merchant_id, kind, ts, user, campaign_id, visit_id,
  payload)``: the outbox's rows whose JSON ``kind`` is ``push``, ``holdout``, ``redeem`` or
  ``order`` (topics ``{prefix}/push/``, ``/redemptions/``, ``/outcomes/``), byte for byte,
  copied off the event loop (a worker thread, its own connection, a short transaction per
  5,000 rows) every second and before each read, as the visit log is; the newest
  ``OUTCOME_LOG_KEEP`` (2,000,000) are kept. ``seq`` is the outbox seq (never reused).
* ``api_outcomes_cursor``: the outbox seq copied up to.

``merchant_report`` feeds ``build_report`` the merchant's visit events and outcomes with ``ts``
in ``[from, to)``: the figures are those of ``geopush report`` over the same outputs. A push
counts as delivered unless its outbox row is still unsent (the outbox deletes only sent rows).

No FastAPI here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from engine.api.state import _sql
from engine.api.visits import OutboxCopy
from engine.errors import DecodeError
from engine.loop import ATTRIBUTION_WINDOW_S
from engine.outputs import AnyOutput, Push, decode_output
from engine.report import build_report

OUTCOME_LOG_KEEP = 2_000_000
PRUNE_EVERY = 10_000
KINDS = ("push", "holdout", "redeem", "order")

_TABLES = """
CREATE TABLE IF NOT EXISTS api_outcomes (
    seq INTEGER PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    user TEXT,
    campaign_id TEXT,
    visit_id TEXT,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS api_outcomes_merchant ON api_outcomes (merchant_id, ts);
CREATE INDEX IF NOT EXISTS api_outcomes_visit ON api_outcomes (visit_id) WHERE visit_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS api_outcomes_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER);
"""

# read outside the write transaction (see VisitLog.catch_up)
_READ = """
SELECT seq, json_extract(t, '$.merchant_id'), json_extract(t, '$.kind'), json_extract(t, '$.ts'),
       json_extract(t, '$.user'), json_extract(t, '$.campaign_id'), json_extract(t, '$.visit_id'),
       payload
FROM (SELECT seq, payload, CAST(payload AS TEXT) AS t FROM outbox
      WHERE seq > ? AND seq <= ?
        AND (substr(topic, 1, ?) = ? OR substr(topic, 1, ?) = ? OR substr(topic, 1, ?) = ?))
WHERE json_valid(t) AND json_extract(t, '$.kind') IN ('push', 'holdout', 'redeem', 'order')
  AND json_extract(t, '$.merchant_id') IS NOT NULL
"""
_INSERT = (
    "INSERT OR IGNORE INTO api_outcomes"
    " (seq, merchant_id, kind, ts, user, campaign_id, visit_id, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class OutcomeLog(OutboxCopy):
    """The outcome table (``OutboxCopy``)."""

    TABLES = _TABLES
    name = "outcome log"
    CURSOR = "api_outcomes_cursor"

    def __init__(
        self,
        state: str | Path,
        prefix: str = "geopush",
        *,
        keep: int = OUTCOME_LOG_KEEP,
        prune_every: int = PRUNE_EVERY,
        window_s: float = ATTRIBUTION_WINDOW_S,
    ) -> None:
        self.topics = tuple(f"{prefix}/{t}/" for t in ("push", "redemptions", "outcomes"))
        self._args: list[Any] = [x for t in self.topics for x in (len(t), t)]  # _READ's topics
        self.window_s = window_s  # the daemon's attribution window: where lift windows end
        self._open(state, keep, prune_every)

    def _read(self, db: Any, after: int, upto: int) -> list[Any]:
        rows: list[Any] = db.execute(_READ, (after, upto, *self._args)).fetchall()
        return rows

    def _write(self, db: Any, rows: list[Any]) -> None:
        db.executemany(_INSERT, rows)

    def _prune(self) -> None:
        row = self._db.execute(
            "SELECT seq FROM api_outcomes ORDER BY seq DESC LIMIT 1 OFFSET ?", (self.keep,)
        ).fetchone()
        if row is not None:
            with self._tx() as db:
                db.execute("DELETE FROM api_outcomes WHERE seq <= ?", (int(row[0]),))

    def outputs(self, merchant_id: str, lo: float, hi: float) -> list[AnyOutput]:
        """The merchant's visit events (from the visit log) and outcomes with lo <= ts < hi."""
        with self._lock, _sql(self.path):
            rows = self._db.execute(
                "SELECT payload FROM api_outcomes WHERE merchant_id = ? AND ts >= ? AND ts < ?"
                " ORDER BY seq",
                (merchant_id, lo, hi),
            ).fetchall()
            has_visits = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'api_visits'"
            ).fetchone()
            if has_visits:
                rows += self._db.execute(
                    "SELECT payload FROM api_visits WHERE merchant_id = ? AND ts >= ? AND ts < ?"
                    " AND event = 'enter' ORDER BY seq",
                    (merchant_id, lo, hi),
                ).fetchall()
        out: list[AnyOutput] = []
        for (payload,) in rows:
            with contextlib.suppress(DecodeError):
                out.append(decode_output(bytes(payload)))
        return out

    def unsent(self) -> set[str]:
        """The out_ids of outbox rows not yet acknowledged by the broker."""
        with self._lock, _sql(self.path):
            rows = self._db.execute("SELECT out_id FROM outbox WHERE sent = 0").fetchall()
        return {str(r[0]) for r in rows}

    def pushes_for(self, visit_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The pushes (and holdout decisions) of these visits: visit_id -> their JSON."""
        import json

        out: dict[str, list[dict[str, Any]]] = {}
        if not visit_ids:
            return out
        marks = ",".join("?" * len(visit_ids))
        with self._lock, _sql(self.path):
            rows = self._db.execute(
                f"SELECT visit_id, payload FROM api_outcomes WHERE visit_id IN ({marks})"  # noqa: S608
                " AND kind IN ('push', 'holdout') ORDER BY seq",
                visit_ids,
            ).fetchall()
        for vid, payload in rows:
            out.setdefault(str(vid), []).append(json.loads(payload))
        return out

    def recent_enters(self, merchant_id: str, limit: int = 30) -> list[dict[str, Any]]:
        """The merchant's newest enter events (the visit log), newest first, each with ``id``,
        the pushes and holdout decisions of its visit (``pushes``; a push redeemed has
        ``redeemed: true``)."""
        import json

        with self._lock, _sql(self.path):
            has = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'api_visits'"
            ).fetchone()
            rows = (
                self._db.execute(
                    "SELECT seq, payload FROM api_visits WHERE merchant_id = ? AND event = 'enter'"
                    " ORDER BY seq DESC LIMIT ?",
                    (merchant_id, limit),
                ).fetchall()
                if has
                else []
            )
        out = [{"id": int(q), **json.loads(p)} for q, p in rows]
        pushes = self.pushes_for([v["visit_id"] for v in out])
        ids = [p["push_id"] for ps in pushes.values() for p in ps if p.get("kind") == "push"]
        redeemed: set[str] = set()
        if ids:
            marks = ",".join("?" * len(ids))
            with self._lock, _sql(self.path):
                redeemed = {
                    str(r[0])
                    for r in self._db.execute(
                        "SELECT ref FROM (SELECT json_extract(CAST(payload AS TEXT), '$.push_ref')"
                        " AS ref, json_extract(CAST(payload AS TEXT), '$.status') AS status"
                        f" FROM api_outcomes WHERE merchant_id = ? AND kind = 'redeem')"
                        f" WHERE status = 'ok' AND ref IN ({marks})",  # noqa: S608
                        [merchant_id, *ids],
                    )
                }
        for v in out:
            v["pushes"] = pushes.get(v["visit_id"], [])
            for p in v["pushes"]:
                p["redeemed"] = p.get("push_id") in redeemed
        return out

    def last_fixes(self, users: list[str]) -> dict[str, tuple[float, float]]:
        """Each user's last accepted GPS fix (lon, lat) from the daemon's user records (none for
        a user seen only through WiFi, beacons or NFC)."""
        from engine.state import decode_user

        out: dict[str, tuple[float, float]] = {}
        if not users:
            return out
        marks = ",".join("?" * len(users))
        with self._lock, _sql(self.path):
            rows = self._db.execute(
                f"SELECT user, blob FROM users WHERE user IN ({marks})",
                users,  # noqa: S608
            ).fetchall()
        for user, blob in rows:
            with contextlib.suppress(Exception):  # a record the daemon will quarantine: no dot
                fix = decode_user(bytes(blob)).last_fix
                if fix is not None:
                    out[str(user)] = (fix[0], fix[1])
        return out


def merchant_report(
    log: OutcomeLog, merchant_id: str, lo: float, hi: float, *, catch_up: bool = True
) -> dict[str, Any]:
    """``geopush report``'s figures for one merchant over outputs with ``lo <= ts < hi``
    (blocking: call in a worker thread)."""
    if catch_up:
        log.catch_up()
    outputs = log.outputs(merchant_id, lo, hi)
    unsent = log.unsent()
    delivered = {o.out_id for o in outputs if type(o) is Push and o.out_id not in unsent}
    rep = build_report(outputs, delivered=delivered, window_s=log.window_s)
    rows = [m for m in rep["merchants"] if m["merchant_id"] == merchant_id]
    if rows:
        row = rows[0]
    else:
        empty = build_report([], delivered=set())["total"]
        row = {"merchant_id": merchant_id, **empty, "campaigns": []}
    return {
        "merchant_id": merchant_id,
        "from": lo,
        "to": hi,
        **{k: v for k, v in row.items() if k != "merchant_id"},
        "lift_method": rep["lift_method"],
        "min_users_per_arm": rep["min_users_per_arm"],
        "min_conversions": rep["min_conversions"],
    }
