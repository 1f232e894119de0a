"""``engine.state.StateStore`` on a SQLite file: the daemon's durable state (no server).

Tables (schema version 1):

* ``users(user PRIMARY KEY, blob)``: each ``UserState`` as msgpack (``encode_user``): open visits,
  follows, payments, frequency-cap push times, daily counters, tags, opt-out;
* ``inventory(campaign_id PRIMARY KEY, left)``: coupons left per campaign;
* ``push_ids(push_id PRIMARY KEY)``: every push decision ever committed (``seen_push``);
* ``outbox(seq PRIMARY KEY, out_id UNIQUE, topic, payload, sent)``: every output (push, visit
  event, dead letter) committed with the batch that produced it; ``sent`` flips after PUBACK;
* ``inputs(digest PRIMARY KEY, seq)``: digests of the last N committed input messages, so a
  message the broker redelivers after a crash (committed, PUBACK lost) is recognised, not re-run;
* ``meta(key PRIMARY KEY, value)``: schema version.

``commit`` writes the touched users, changed counters, new push ids, the batch's outbox rows and
input digests in ONE transaction (the contract in engine/state.py). The connection runs in WAL mode;
``synchronous=NORMAL`` (default) survives a killed process at any instant (kill -9): a committed
transaction is in the WAL file before ``commit`` returns; ``synchronous=FULL`` also survives power
loss at the price of an fsync per batch.

Users are loaded lazily (``user``/``users``) and cached; the cache keeps at most ``cache_users``
clean records (touched records are never evicted before commit).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import StateError
from engine.state import Output, UserState, decode_user, encode_user

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (user TEXT PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inventory (campaign_id TEXT PRIMARY KEY, left INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS push_ids (push_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    out_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent, seq);
CREATE TABLE IF NOT EXISTS inputs (digest BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inputs_seq ON inputs (seq);
"""


@dataclass(frozen=True, slots=True)
class OutRow:
    """One outbox row: what to publish, under a stable id consumers dedupe by."""

    out_id: str
    topic: str
    payload: bytes


Renderer = Callable[[Output], OutRow]


class SQLiteStore:
    """Durable StateStore. Single writer: one daemon process owns the file."""

    in_memory = False  # records are loaded and written back per batch

    def __init__(
        self,
        path: str | Path,
        *,
        render: Renderer | None = None,
        synchronous: Literal["normal", "full"] = "normal",
        cache_users: int = 200_000,
        input_window: int = 100_000,
    ) -> None:
        self.path = Path(path)
        self.render = render
        self.cache_users = cache_users
        self.input_window = input_window
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state file {self.path}: {exc}") from exc
        self._cache: OrderedDict[str, UserState] = OrderedDict()
        self._touched: dict[str, UserState] = {}
        self._inventory: dict[str, int] = {}
        self._inv_dirty: set[str] = set()
        self._new_push_ids: set[str] = set()
        self._input_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM inputs")
        self._inputs_since_prune = 0

    # --- StateStore protocol ---------------------------------------------------------------------

    def user(self, user: str) -> UserState:
        st = self._touched.get(user)
        if st is not None:
            return st
        st = self._cache.pop(user, None)
        if st is None:
            st = self._load_user(user)
        self._touched[user] = st
        return st

    def users(self, users: Iterable[str]) -> None:
        missing = [u for u in set(users) if u not in self._touched and u not in self._cache]
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT user, blob FROM users WHERE user IN ({marks})", chunk)
            found = {u: decode_user(b) for u, b in rows}
            for u in chunk:
                self._cache_put(u, found.get(u) or UserState(user=u))

    def inventory_left(self, campaign_id: str, total: int | None) -> int | None:
        if total is None:
            return None
        return self._counter(campaign_id, total)

    def take_coupon(self, campaign_id: str, total: int | None) -> bool:
        if total is None:
            return True
        left = self._counter(campaign_id, total)
        if left <= 0:
            return False
        self._inventory[campaign_id] = left - 1
        self._inv_dirty.add(campaign_id)
        return True

    def seen_push(self, push_id: str) -> bool:
        if push_id in self._new_push_ids:
            return True
        return bool(self._query("SELECT 1 FROM push_ids WHERE push_id = ?", (push_id,)))

    def commit(
        self,
        outputs: Sequence[Output],
        *,
        extra: Sequence[OutRow] = (),
        inputs: Sequence[bytes] = (),
        meta: dict[str, str] | None = None,
    ) -> list[OutRow]:
        """One transaction: touched users, counters, push ids, outbox rows (rendered ``outputs``
        plus ``extra``, e.g. dead letters), input digests and ``meta`` values (e.g. the core's
        watermark). Returns the outbox rows written."""
        rows = [self._render(o) for o in outputs]
        rows.extend(extra)
        for out in outputs:
            pid = getattr(out, "push_id", None)
            if isinstance(pid, str):
                self._new_push_ids.add(pid)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if self._touched:
                for st in self._touched.values():
                    st.version += 1
                db.executemany(
                    "INSERT OR REPLACE INTO users (user, blob) VALUES (?, ?)",
                    [(u, encode_user(st)) for u, st in self._touched.items()],
                )
            if self._inv_dirty:
                db.executemany(
                    "INSERT OR REPLACE INTO inventory (campaign_id, left) VALUES (?, ?)",
                    [(c, self._inventory[c]) for c in self._inv_dirty],
                )
            if self._new_push_ids:
                db.executemany(
                    "INSERT OR IGNORE INTO push_ids (push_id) VALUES (?)",
                    [(p,) for p in self._new_push_ids],
                )
            if rows:
                db.executemany(
                    "INSERT OR IGNORE INTO outbox (out_id, topic, payload) VALUES (?, ?, ?)",
                    [(r.out_id, r.topic, r.payload) for r in rows],
                )
            if inputs:
                seq0 = self._input_seq
                db.executemany(
                    "INSERT OR REPLACE INTO inputs (digest, seq) VALUES (?, ?)",
                    [(d, seq0 + i + 1) for i, d in enumerate(inputs)],
                )
            if meta:
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items())
                )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._safe_rollback()
            self.rollback()
            raise StateError(f"commit to {self.path} failed: {exc}") from exc
        self._input_seq += len(inputs)
        self._inputs_since_prune += len(inputs)
        if self._inputs_since_prune > max(1000, self.input_window // 10):
            self._prune_inputs()
        for u, st in self._touched.items():
            self._cache_put(u, st)
        self._touched.clear()
        self._inv_dirty.clear()
        self._new_push_ids.clear()
        return rows

    # --- beyond the protocol: rollback, outbox, inputs ----------------------------------------

    def rollback(self) -> None:
        """Forget every change since the last commit (a batch the core failed on)."""
        for u in self._touched:
            self._cache.pop(u, None)
        self._touched.clear()
        for c in self._inv_dirty:
            self._inventory.pop(c, None)
        self._inv_dirty.clear()
        self._new_push_ids.clear()

    def seen_inputs(self, digests: Iterable[bytes]) -> set[bytes]:
        """Which of these input digests were committed already (redeliveries)."""
        ds = list(digests)
        seen: set[bytes] = set()
        for i in range(0, len(ds), 500):
            chunk = ds[i : i + 500]
            marks = ",".join("?" * len(chunk))
            seen.update(
                r[0]
                for r in self._query(f"SELECT digest FROM inputs WHERE digest IN ({marks})", chunk)
            )
        return seen

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def users_with_visits(self) -> list[UserState]:
        """Every stored user with an open visit (to re-arm the core's timers at start)."""
        out = []
        for _u, blob in self._query("SELECT user, blob FROM users", ()):
            st = decode_user(blob)
            if st.visits:
                out.append(st)
        return out

    def unsent(self, limit: int | None = None) -> list[OutRow]:
        sql = "SELECT out_id, topic, payload FROM outbox WHERE sent = 0 ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [OutRow(o, t, bytes(p)) for o, t, p in self._query(sql, ())]

    def mark_sent(self, out_ids: Iterable[str]) -> None:
        ids = [(o,) for o in out_ids]
        if not ids:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE outbox SET sent = 1 WHERE out_id = ?", ids)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._safe_rollback()
            raise StateError(f"mark_sent in {self.path} failed: {exc}") from exc

    def prune_sent(self, keep: int = 100_000) -> int:
        """Delete sent outbox rows beyond the newest ``keep`` (the outbox doubles as a push log)."""
        cur = self._exec(
            "DELETE FROM outbox WHERE sent = 1 AND seq <= (SELECT MAX(seq) FROM outbox) - ?",
            (keep,),
        )
        return int(cur.rowcount)

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (on graceful shutdown)."""
        self._exec("PRAGMA wal_checkpoint(TRUNCATE)", ())

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    # Introspection for tests and `geopush` tools.
    def count(self, table: str, where: str = "") -> int:
        assert table in {"users", "inventory", "push_ids", "outbox", "inputs"}
        return self._scalar(f"SELECT COUNT(*) FROM {table} {where}")

    def all_users(self) -> dict[str, UserState]:
        return {u: decode_user(b) for u, b in self._query("SELECT user, blob FROM users", ())}

    def inventory(self) -> dict[str, int]:
        return {c: int(n) for c, n in self._query("SELECT campaign_id, left FROM inventory", ())}

    def push_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT push_id FROM push_ids", ())}

    def outbox(self) -> list[tuple[str, str, bytes, bool]]:
        rows = self._query("SELECT out_id, topic, payload, sent FROM outbox ORDER BY seq", ())
        return [(o, t, bytes(p), bool(s)) for o, t, p, s in rows]

    # --- internals -------------------------------------------------------------------------------

    def _render(self, out: Output) -> OutRow:
        if self.render is None:
            raise StateError("SQLiteStore has no renderer for outputs (pass render=...)")
        return self.render(out)

    def _counter(self, campaign_id: str, total: int) -> int:
        left = self._inventory.get(campaign_id)
        if left is None:
            rows = self._query("SELECT left FROM inventory WHERE campaign_id = ?", (campaign_id,))
            left = int(rows[0][0]) if rows else total
            self._inventory[campaign_id] = left
            if not rows:
                self._inv_dirty.add(campaign_id)
        return left

    def _load_user(self, user: str) -> UserState:
        rows = self._query("SELECT blob FROM users WHERE user = ?", (user,))
        return decode_user(rows[0][0]) if rows else UserState(user=user)

    def _cache_put(self, user: str, st: UserState) -> None:
        self._cache[user] = st
        self._cache.move_to_end(user)
        while len(self._cache) > self.cache_users:
            self._cache.popitem(last=False)

    def _prune_inputs(self) -> None:
        self._inputs_since_prune = 0
        self._exec("DELETE FROM inputs WHERE seq <= ?", (self._input_seq - self.input_window,))

    def _check_schema(self) -> None:
        rows = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall()
        if not rows:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(rows[0][0]) != SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema {rows[0][0]}, this geopush expects "
                f"{SCHEMA_VERSION}: use a matching geopush version or a new --state file"
            )

    def _query(self, sql: str, params: Sequence[object]) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: {exc}") from exc

    def _scalar(self, sql: str) -> int:
        rows = self._query(sql, ())
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def _exec(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: {exc}") from exc

    def _safe_rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")


__all__ = ["OutRow", "Renderer", "SQLiteStore"]
