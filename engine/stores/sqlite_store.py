"""``engine.state.StateStore`` on a SQLite file: the daemon's durable state (no server).

Tables (schema version 4):

* ``users(user PRIMARY KEY, blob)``: each ``UserState`` as msgpack (``encode_user``): open visits,
  follows, payments, frequency-cap push times, daily counters, tags, opt-out;
* ``inventory(campaign_id PRIMARY KEY, left)``: coupons left per campaign;
* ``push_ids(push_id PRIMARY KEY)``: every push decision ever committed (``seen_push``);
* ``outbox(seq PRIMARY KEY, out_id, topic, payload, sent)``: every output (push, visit event,
  dead letter) committed with the batch that produced it, the newest ``outbox_keep`` kept once
  sent (pruned as commits go; dead letters, ``TRANSIENT_PREFIX``, are deleted once sent);
  ``sent`` flips after PUBACK, by ``seq``
  (the store remembers the seq of each row it wrote or loaded until it is marked). The one index,
  ``outbox_unsent``, is partial: the unsent rows only (``_UNSENT_INDEX``). Schema 2 had a
  ``UNIQUE`` index on ``out_id``: a random B-tree insert per output and a random look-up per
  mark, the largest cost outside the core under batch load; a single writer never commits an
  output twice (redeliveries are recognised by their input digest first), so it went (opening a
  schema-2 file rebuilds the table);
* ``input_log(seq PRIMARY KEY, digest)``: digests of the last N committed input messages, so a
  message the broker redelivers after a crash (committed, PUBACK lost) is recognised, not re-run.
  An append-only log (inserts at the end, pruned from the front, both cheap) mirrored by an
  in-memory window that answers ``seen_inputs``. One row per commit: ``digest`` holds the
  batch's 16-byte digests end to end and ``seq`` numbers the batch's LAST input (inputs are
  numbered 1, 2, ... across commits), so a row whose ``seq`` fell out of the window holds only
  digests older than the window. A row per input cost ~1.4 µs of the engine's ~19 per
  single-event message (one more executemany step each); files written that way (one digest
  per row, numbered the same) read the same. Schema 1 kept them in a table keyed by digest,
  whose random inserts and deletes cost ~20% of the engine's time on single-event messages
  (opening a schema-1 file migrates it);
* ``meta(key PRIMARY KEY, value)``: schema version;
* ``api_stores`` and ``api_tokens`` (schema 4): the HTTP API's store changes (laid over the
  catalog file at start) and its hashed tokens; read and written by engine/api/state.py on a
  connection of its own (this class never touches them).
* ``quarantine(user, blob, error, at)``: made only by ``quarantine_corrupt``: user records that
  could not be decoded, moved out of ``users`` (kept, never deleted by geopush).

Opening refuses what is not a geopush state file, so a lost or damaged file is never silently
taken for a new, empty state (visits, push log and coupon counts gone: an inventory-1 coupon sold
twice): a new file is made only where the path does not exist, or, with ``new=True`` (``geopush
run --new-state``), over an existing EMPTY file (0 bytes, or a SQLite database without tables).
A file that is not SQLite, or SQLite without geopush's ``meta`` schema row, is refused even then.

``commit`` writes the touched users, changed counters, new push ids, the batch's outbox rows and
input digests in ONE transaction (the contract in engine/state.py), plus the ``sent`` flags of
outputs the broker acknowledged since the previous commit (``defer_sent``: no transaction of their
own under load; ``mark_sent`` writes them at once when no batch comes). The connection runs in WAL
mode; ``synchronous=NORMAL`` (default) survives a killed process at any instant (kill -9): a
committed transaction is in the WAL file before ``commit`` returns; ``synchronous=FULL`` also
survives power loss at the price of an fsync per batch.

Checkpoints (copying the WAL into the main file, with an fsync of each) do not run inside
``commit``, as SQLite's automatic checkpoint would (it cost ~half of the commit's time on the
event loop): a background thread checkpoints (PASSIVE: it never blocks the writer) on its own
connection after commits, chasing the log's tail until the writer can restart it (see
``_Checkpointer._checkpoint``), and the writer checkpoints itself only if the WAL nonetheless
grows past ``WAL_LIMIT_BYTES`` (counted in ``inline_checkpoints``). Durability is the same: a
transaction is durable (to ``synchronous``'s standard) once in the WAL, whoever copies it later.

Users are loaded lazily (``user``/``users``) and cached; the cache keeps at most ``cache_users``
clean records (touched records are never evicted before commit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from engine.errors import StateError
from engine.state import Output, UserState, decode_user, encode_user

SCHEMA_VERSION = 4
# The writer checkpoints itself when the WAL file passes this size: the background checkpointer
# fell behind (or something holds an old read snapshot). SQLite truncates the WAL back to this size
# when it restarts the log, so the file size says whether it has been restarted since.
WAL_LIMIT_BYTES = 32 * 1024 * 1024
# Outbox rows whose out_id starts with this (dead letters, engine/daemon/pipeline.py) are deleted
# once the broker has them, not kept as a log: a flood of bad messages cannot fill the disk.
TRANSIENT_PREFIX = "dl:"
DIGEST_BYTES = 16  # input digests (engine.daemon.pipeline.digest), packed per commit in input_log

log = logging.getLogger("geopush.daemon")

_OUTBOX = """CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    out_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);"""

# The unsent rows, for ``unsent`` (start, reconnect) and the API's ``WHERE sent = 0``: a partial
# index, holding only them. It was ``(sent, seq)`` over every row until 2026-12-07: each output
# then cost an entry appended to it and, at its mark, one deleted and one inserted (measured
# alone, ~0.4 µs of a row's ~3.3 to write it, ~0.45 of ~1.0 to mark it). Now a row leaves the
# index when marked, and the index stays as small as the unsent tail. Files with the old index
# get the new one at open (``_index_unsent``); an older geopush reads either.
_UNSENT_INDEX = "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent = 0"

# The HTTP API's tables (engine/api/state.py): store changes made live (``feature`` NULL: the
# store was deleted; ``seq`` numbers the changes) and API tokens (only a SHA-256 of each secret).
_API_TABLES = """
CREATE TABLE IF NOT EXISTS api_stores (
    store_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    feature TEXT,
    seq INTEGER NOT NULL,
    changed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    merchant_id TEXT,
    name TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    revoked REAL
);
"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (user TEXT PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inventory (campaign_id TEXT PRIMARY KEY, left INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS push_ids (push_id TEXT PRIMARY KEY) WITHOUT ROWID;
{_OUTBOX}
{_UNSENT_INDEX};
CREATE TABLE IF NOT EXISTS input_log (seq INTEGER PRIMARY KEY, digest BLOB NOT NULL);
{_API_TABLES}
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
        outbox_keep: int = 100_000,
        new: bool = False,
        quarantine_corrupt: bool = False,
    ) -> None:
        self.path = Path(path)
        self.render = render
        self.cache_users = cache_users
        self.input_window = input_window
        self.outbox_keep = outbox_keep
        # An undecodable user record: moved to the quarantine table (True) or a StateError.
        self.quarantine_corrupt = quarantine_corrupt
        self.quarantined = 0  # records moved to the quarantine table by this store
        # "new": made by this open; "existing": a geopush state file
        self.created = _check_file(self.path, new=new)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            # checkpoints run in the background (_Checkpointer), not inside our COMMITs
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            # 64 MiB of page cache (SQLite's default is 2 MiB): the outbox's and push log's
            # indexes on random ids outgrow 2 MiB quickly, and every insert then reads pages
            self._db.execute("PRAGMA cache_size=-65536")
            if not self.created:
                self._check_geopush(new=new)
            if self.created or not self._tables():
                # a new file: tables and schema row in one transaction (a crash in between must
                # not leave a file the next start would refuse as foreign)
                self._db.executescript(
                    f"BEGIN;{_SCHEMA}INSERT INTO meta (key, value) VALUES "
                    f"('schema', '{SCHEMA_VERSION}');COMMIT;"
                )
                self.created = True
            else:
                self._db.executescript(_SCHEMA)
                self._check_schema()
                self._index_unsent()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error, AttributeError):
                self._db.close()
            raise StateError(
                f"cannot open state file {self.path}: {exc} (a damaged file: restore it from a "
                "backup, or move it away to start with a new, empty state)"
            ) from exc
        except StateError:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            raise
        self._cache: OrderedDict[str, UserState] = OrderedDict()
        self._touched: dict[str, UserState] = {}
        self._inventory: dict[str, int] = {}
        self._inv_dirty: set[str] = set()
        # coupons taken per campaign since the last commit: the commit writes the counter
        # relative to the file (``left - taken``), so a change the HTTP API's process made to it
        # meanwhile (an inventory edit, engine/api/campaigns.py) is kept, never overwritten
        self._inv_taken: dict[str, int] = {}
        self._inv_stale: set[str] = set()  # forgotten while dirty: dropped after the commit
        self._new_push_ids: set[str] = set()
        self._input_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM input_log")
        self._inputs_since_prune = 0
        # The last ``input_window`` committed digests, numbered as in the log.
        logged = self._logged_digests(input_window)
        self._recent = _InputWindow(input_window, start=self._input_seq - len(logged))
        self._recent.add(logged)
        self._sent_later: list[str] = []  # acknowledged outputs, marked sent with the next commit
        # the highest seq ever written (AUTOINCREMENT's record), not the highest left: sent dead
        # letters are deleted, and their numbers must not come back (seqs are the API's ids)
        self._out_seq = self._scalar(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM outbox), 0),"
            " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0))"
        )
        # Rows written or loaded and not yet marked sent, for the marks (which go by seq):
        # out_id -> seq of its oldest such row, and, for the rare id with several (the same id
        # committed again, e.g. a dead letter's), its later seqs in the order seen. One int per
        # row, set and taken by C-level dict operations in the common case (a list per row and
        # a Python loop over the rows at each end cost ~1 µs a row).
        self._seq_of: dict[str, int] = {}
        self._more_seqs: dict[str, list[int]] = {}
        # seqs of unsent rows deleted, not kept, once sent (dead letters: TRANSIENT_PREFIX)
        self._transient: set[int] = set()
        # sent rows at or below this seq are pruned (by this process; 0: not yet, so the first
        # prune reads the whole front once); a row there still unsent is deleted when marked
        self._pruned_to = 0
        self._wal_path = f"{self.path}-wal"
        self._checkpointer: _Checkpointer | None = None  # started by the first commit
        self.inline_checkpoints = 0  # the WAL outgrew WAL_LIMIT_BYTES: checkpointed by the writer

    # --- StateStore protocol ---------------------------------------------------------------------

    def user(self, user: str) -> UserState:
        st = self._touched.get(user)
        if st is not None:
            return st
        # A cached record stays in the cache while touched (the commit moves it to the young
        # end; a rollback drops it): taking it out and putting it back each batch churned the
        # cache's table, which CPython then rehashes whole (tens of ms at 200k records).
        st = self._cache.get(user)
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
            found = {u: self._decode(u, b) for u, b in rows}
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
        self._inv_taken[campaign_id] = self._inv_taken.get(campaign_id, 0) + 1
        return True

    def forget_inventory(self, campaign_id: str) -> None:
        """Drop the cached coupon counter of a campaign: another connection changed it (the
        HTTP API's process); the next use reads it from the file (after this batch's commit,
        when the batch already took from it)."""
        if campaign_id in self._inv_dirty:
            self._inv_stale.add(campaign_id)
        else:
            self._inventory.pop(campaign_id, None)

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
        packed = b"".join(inputs)
        if len(packed) != DIGEST_BYTES * len(inputs):
            raise StateError(f"input digests must be {DIGEST_BYTES} bytes each")
        for out in outputs:
            pid = getattr(out, "push_id", None)
            if isinstance(pid, str):
                self._new_push_ids.add(pid)
        db = self._db
        pruned_to = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            if self._touched:
                for st in self._touched.values():
                    st.version += 1
                # an upsert updates the row in place; REPLACE deletes it and inserts a new one
                # (new rowid, both b-trees touched): ~3x slower for our record sizes
                db.executemany(
                    "INSERT INTO users (user, blob) VALUES (?, ?)"
                    " ON CONFLICT (user) DO UPDATE SET blob = excluded.blob",
                    [(u, encode_user(st)) for u, st in self._touched.items()],
                )
            if self._inv_dirty:
                db.executemany(
                    "INSERT INTO inventory (campaign_id, left) VALUES (?, ?)"
                    " ON CONFLICT (campaign_id) DO UPDATE SET left = left - ?",
                    [(c, self._inventory[c], self._inv_taken.get(c, 0)) for c in self._inv_dirty],
                )
            if self._new_push_ids:
                db.executemany(
                    "INSERT OR IGNORE INTO push_ids (push_id) VALUES (?)",
                    [(p,) for p in self._new_push_ids],
                )
            if rows:
                out0 = self._out_seq
                db.executemany(
                    "INSERT INTO outbox (seq, out_id, topic, payload) VALUES (?, ?, ?, ?)",
                    [(out0 + i + 1, r.out_id, r.topic, r.payload) for i, r in enumerate(rows)],
                )
                if (out0 + len(rows)) // 256 != out0 // 256:
                    # Sent rows beyond the newest ``outbox_keep`` go, a few hundred at a time:
                    # the table stays bounded. Unsent rows are never pruned; each prune reads
                    # only the seqs past the last one (``_pruned_to``), so a long unsent backlog
                    # at the front (a broker down for hours) is not read again at every prune:
                    # its rows are deleted when marked instead (``_mark``).
                    pruned_to = out0 + len(rows) - self.outbox_keep
                    if pruned_to > self._pruned_to:
                        db.execute(_PRUNE_SENT, (self._pruned_to, pruned_to))
            if inputs:
                last = self._input_seq + len(inputs)
                db.execute("INSERT INTO input_log (seq, digest) VALUES (?, ?)", (last, packed))
                if self._inputs_since_prune + len(inputs) >= 256:
                    # Forget rows wholly beyond the window a few hundred inputs at a time,
                    # inside this transaction (a range at the front of the log: cheap).
                    db.execute(_PRUNE_INPUTS, (last - self.input_window,))
                    self._inputs_since_prune = -len(inputs)
            if meta:
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    list(meta.items()),
                )
            marks, taken = self._seqs(self._sent_later)
            gone: list[int] = []
            if marks:
                gone = self._mark(marks)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._safe_rollback()
            self.rollback()
            raise StateError(f"commit to {self.path} failed: {exc}") from exc
        self._pruned_to = max(self._pruned_to, pruned_to)
        if self._sent_later:
            self._forget_seqs(self._sent_later, taken)
            self._sent_later = []
            if gone:
                self._transient.difference_update(gone)
        if rows:
            out0 = self._out_seq
            self._track_seqs(range(out0 + 1, out0 + len(rows) + 1), [r.out_id for r in rows])
            if extra:
                self._note_transient(self._out_seq + len(rows) - len(extra), extra)
            self._out_seq += len(rows)
        self._after_commit()
        self._input_seq += len(inputs)
        self._inputs_since_prune += len(inputs)
        self._recent.add(inputs)
        for u, st in self._touched.items():
            self._cache_put(u, st)
        self._touched.clear()
        self._inv_dirty.clear()
        self._inv_taken.clear()
        for c in self._inv_stale:
            self._inventory.pop(c, None)
        self._inv_stale.clear()
        self._new_push_ids.clear()
        return rows

    # --- beyond the protocol: rollback, outbox, inputs ----------------------------------------

    @property
    def out_seq(self) -> int:
        """The seq of the newest outbox row written (a commit's rows end at it)."""
        return self._out_seq

    def rollback(self) -> None:
        """Forget every change since the last commit (a batch the core failed on)."""
        for u in self._touched:
            self._cache.pop(u, None)
        self._touched.clear()
        for c in self._inv_dirty:
            self._inventory.pop(c, None)
        self._inv_dirty.clear()
        self._inv_taken.clear()
        self._inv_stale.clear()
        self._new_push_ids.clear()

    def seen_inputs(self, digests: Iterable[bytes]) -> set[bytes]:
        """Which of these input digests were committed already (redeliveries), among the last
        ``input_window`` committed."""
        return self._recent.seen(digests)

    def _logged_digests(self, n: int) -> list[bytes]:
        """The newest ``n`` digests of the input log, oldest first (rows newest first until
        ``n`` are read: a row holds one commit's digests)."""
        chunks: list[bytes] = []
        got = 0
        for (blob,) in self._db.execute("SELECT digest FROM input_log ORDER BY seq DESC"):
            chunks.append(bytes(blob))
            got += len(blob) // DIGEST_BYTES
            if got >= n:
                break
        packed = b"".join(reversed(chunks))
        out = [packed[i : i + DIGEST_BYTES] for i in range(0, len(packed), DIGEST_BYTES)]
        return out[-n:] if n else []

    def logged_inputs(self) -> int:
        """Digests kept in the file's input log (the window, plus what the next prune drops)."""
        return self._scalar(f"SELECT COALESCE(SUM(length(digest)), 0) / {DIGEST_BYTES} FROM input_log")

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def meta_once(self, key: str, value: str) -> str:
        """The meta value of ``key``, storing ``value`` first when there is none (autocommit:
        at once). For settings generated on first run, such as the coupon secret."""
        self._exec("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        got = self.get_meta(key)
        return value if got is None else got

    def users_with_visits(self) -> list[UserState]:
        """Every stored user with an open visit (to re-arm the core's timers at start)."""
        out = []
        for u, blob in self._query("SELECT user, blob FROM users", ()):
            st = self._decode(u, blob)
            if st is not None and st.visits:
                out.append(st)
        return out

    def unsent(self, limit: int | None = None) -> list[OutRow]:
        sql = "SELECT seq, out_id, topic, payload FROM outbox WHERE sent = 0 ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self._query(sql, ())
        self._track_seqs([q for q, _, _, _ in rows], [o for _, o, _, _ in rows])
        self._transient.update(q for q, o, _, _ in rows if o.startswith(TRANSIENT_PREFIX))
        return [OutRow(o, t, bytes(p)) for _, o, t, p in rows]

    def _note_transient(self, seq0: int, extra: Sequence[OutRow]) -> None:
        """Remember the seqs of the just-written ``extra`` rows that go once sent."""
        for i, r in enumerate(extra):
            if r.out_id.startswith(TRANSIENT_PREFIX):
                self._transient.add(seq0 + i + 1)

    def _mark(self, marks: list[int]) -> list[int]:
        """Mark these outbox rows sent, in the open transaction; dead letters are deleted
        instead (a log of them helps nobody, and a flood of them must not fill the disk), and
        so are rows the prunes have passed (``_pruned_to``). Returns the dead letters' seqs."""
        transient, pruned_to = self._transient, self._pruned_to
        if transient or (marks and min(marks) <= pruned_to):
            # deleted rather than marked: dead letters, and rows already beyond the kept window
            # (a backlog acknowledged late: the prunes do not read their seqs again)
            drop = [q for q in marks if q in transient or q <= pruned_to]
            if drop:
                self._db.executemany(_DELETE_SENT, [(q,) for q in drop])
                marks = [q for q in marks if q not in transient and q > pruned_to]
            gone = [q for q in drop if q in transient]
        else:
            gone = []
        if marks:
            # PUBACKs come back mostly in publishing order: runs of consecutive seqs, one
            # statement each (~35% less than a statement per row, measured)
            self._db.executemany(_MARK_SENT, seq_runs(marks))
        return gone

    def _track_seqs(self, seqs: Sequence[int], out_ids: Sequence[str]) -> None:
        """Remember the seq of rows that may be marked sent later (marks go by seq)."""
        seq_of = self._seq_of
        if len(set(out_ids)) == len(out_ids) and seq_of.keys().isdisjoint(out_ids):
            seq_of.update(zip(out_ids, seqs, strict=True))  # new ids, one row each: the common case
            return
        more = self._more_seqs
        for q, o in zip(seqs, out_ids, strict=True):
            first = seq_of.get(o)
            if first is None:
                seq_of[o] = q
            elif first != q:
                later = more.setdefault(o, [])
                if q not in later:
                    later.append(q)

    def _seqs(self, out_ids: Sequence[str]) -> tuple[list[int], dict[str, int] | None]:
        """The seqs to mark for these acknowledged ids (one row per acknowledgement), and how
        many of each id's seqs they use (None: one of each id found, the ids distinct). An id
        with no row known (none written or loaded by this store) is skipped: its row stays
        unsent and is re-published after a restart."""
        seq_of = self._seq_of
        if not self._more_seqs and len(set(out_ids)) == len(out_ids):
            # the common case: each id acknowledged once, one row each
            return [q for q in map(seq_of.get, out_ids) if q is not None], None
        more = self._more_seqs
        marks: list[int] = []
        taken: dict[str, int] = {}
        for o in out_ids:
            k = taken.get(o, 0)
            if k == 0:
                q = seq_of.get(o)
            else:
                later = more.get(o)
                q = later[k - 1] if later is not None and k - 1 < len(later) else None
            if q is not None:
                marks.append(q)
                taken[o] = k + 1
        return marks, taken

    def _forget_seqs(self, out_ids: Sequence[str], taken: dict[str, int] | None) -> None:
        """Forget the seqs ``_seqs`` returned for ``out_ids`` (their rows are marked)."""
        seq_of = self._seq_of
        if taken is None:
            pop = seq_of.pop
            for o in out_ids:
                pop(o, None)
            return
        more = self._more_seqs
        for o, k in taken.items():
            rest = more.pop(o, [])[k - 1 :]
            if rest:
                seq_of[o] = rest[0]
                if len(rest) > 1:
                    more[o] = rest[1:]
            else:
                del seq_of[o]

    def defer_sent(self, out_ids: Iterable[str]) -> None:
        """Mark these outputs sent in the next ``commit``'s transaction (or the next
        ``mark_sent``), not in one of their own. Until then a crash leaves them unsent, to be
        re-published with the same id: the outbox's at-least-once contract."""
        self._sent_later.extend(out_ids)

    @property
    def sent_deferred(self) -> int:
        return len(self._sent_later)

    def mark_sent(self, out_ids: Iterable[str]) -> None:
        """Mark these outputs, and any deferred ones, sent now (one transaction)."""
        acked = [*self._sent_later, *out_ids]
        if not acked:
            return
        marks, taken = self._seqs(acked)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._mark(marks)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._safe_rollback()
            raise StateError(f"mark_sent in {self.path} failed: {exc}") from exc
        self._sent_later = []
        self._forget_seqs(acked, taken)
        self._transient.difference_update(gone)
        self._after_commit()

    def prune_sent(self, keep: int = 100_000) -> int:
        """Delete sent outbox rows beyond the newest ``keep`` (the outbox doubles as a push log)."""
        cur = self._exec(
            "DELETE FROM outbox WHERE sent = 1 AND seq <= (SELECT MAX(seq) FROM outbox) - ?",
            (keep,),
        )
        return int(cur.rowcount)

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (on graceful shutdown)."""
        self._stop_checkpointer()
        self._exec("PRAGMA wal_checkpoint(TRUNCATE)", ())

    def close(self) -> None:
        self._stop_checkpointer()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def describe(self) -> str:
        """One line for the daemon's start-up summary."""
        kind = "new, empty" if self.created else "existing"
        unsent = self._scalar("SELECT COUNT(*) FROM outbox WHERE sent = 0")
        text = (
            f"{self.path} ({kind}: {self.count('users')} users, {self.count('inventory')} "
            f"coupon counters, {unsent} unsent outputs"
        )
        if self.quarantined:
            text += f", {self.quarantined} corrupt records moved to its quarantine table"
        return text + ")"

    # Introspection for tests and `geopush` tools.
    def count(self, table: str, where: str = "") -> int:
        assert table in {"users", "inventory", "push_ids", "outbox", "input_log"}
        return self._scalar(f"SELECT COUNT(*) FROM {table} {where}")

    def all_users(self) -> dict[str, UserState]:
        rows = self._query("SELECT user, blob FROM users", ())
        return {u: st for u, b in rows if (st := self._decode(u, b)) is not None}

    def inventory(self) -> dict[str, int]:
        return {c: int(n) for c, n in self._query("SELECT campaign_id, left FROM inventory", ())}

    def push_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT push_id FROM push_ids", ())}

    def outbox(self) -> list[tuple[str, str, bytes, bool]]:
        rows = self._query("SELECT out_id, topic, payload, sent FROM outbox ORDER BY seq", ())
        return [(o, t, bytes(p), bool(s)) for o, t, p, s in rows]

    # --- internals -------------------------------------------------------------------------------

    def _after_commit(self) -> None:
        """Have the WAL checkpointed: by the background thread, or here if it fell behind."""
        ck = self._checkpointer
        if ck is None:
            ck = self._checkpointer = _Checkpointer(self.path)
        ck.poke()
        try:
            behind = os.stat(self._wal_path).st_size > WAL_LIMIT_BYTES
        except OSError:
            behind = False
        if behind:
            self.inline_checkpoints += 1
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _stop_checkpointer(self) -> None:
        ck, self._checkpointer = self._checkpointer, None
        if ck is not None:
            ck.stop()

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
        st = self._decode(user, rows[0][0]) if rows else None
        return st if st is not None else UserState(user=user)

    def _decode(self, user: str, blob: Any) -> UserState | None:
        """The stored record of ``user``; one that cannot be decoded is a StateError naming the
        file and the user, or, with ``quarantine_corrupt``, moved to the quarantine table (the
        user then starts afresh) and None."""
        try:
            return decode_user(blob)
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            if not self.quarantine_corrupt:
                raise StateError(
                    f"state file {self.path}: the record of user {user!r} is corrupt and cannot "
                    f"be read ({exc}). Restore the file from a backup, or start with "
                    "--quarantine-corrupt (GEOPUSH_QUARANTINE_CORRUPT=true) to move unreadable "
                    "records to the file's quarantine table (kept, not deleted; those users "
                    "start afresh)"
                ) from exc
            self._quarantine(user, blob, str(exc))
            return None

    def _quarantine(self, user: str, blob: Any, error: str) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(_QUARANTINE)
            db.execute(
                "INSERT INTO quarantine (user, blob, error, at) VALUES (?, ?, ?, ?)",
                (user, blob, error, time.time()),
            )
            db.execute("DELETE FROM users WHERE user = ?", (user,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._safe_rollback()
            raise StateError(f"state file {self.path}: cannot quarantine user {user!r}: {exc}") from exc
        self.quarantined += 1
        log.warning(
            "state file %s: the record of user %r is corrupt (%s): moved to its quarantine "
            "table; the user starts afresh", self.path, user, error,
        )  # fmt: skip

    def _tables(self) -> list[str]:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return [str(r[0]) for r in rows if not str(r[0]).startswith("sqlite_")]

    def _check_geopush(self, *, new: bool) -> None:
        """An existing SQLite file: geopush's (a ``meta`` schema row), or empty (no tables) and
        ``new`` allowed; anything else is refused (StateError naming the file)."""
        tables = self._tables()
        if not tables:
            if new:
                log.warning("state file %s is empty: starting a new state (--new-state)", self.path)
                return
            raise StateError(_refusal(self.path, "is an empty SQLite database (no tables)"))
        schema = None
        if "meta" in tables:
            rows = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall()
            schema = rows[0][0] if rows else None
        if schema is None:
            raise StateError(
                f"state file {self.path} is a SQLite database but not a geopush state file "
                f"(tables: {', '.join(sorted(tables)[:8])}; no schema row in meta): refusing to "
                "use it. Check --state (GEOPUSH_STATE): point it at the geopush state file, or at "
                "a path that does not exist yet to start a new state"
            )

    def _cache_put(self, user: str, st: UserState) -> None:
        self._cache[user] = st
        self._cache.move_to_end(user)
        while len(self._cache) > self.cache_users:
            self._cache.popitem(last=False)

    def _check_schema(self) -> None:
        rows = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall()
        while rows and rows[0][0] in _MIGRATIONS:
            rows = [(self._migrate(rows[0][0]),)]
        if not rows:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(rows[0][0]) != SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema {rows[0][0]}, this geopush expects "
                f"{SCHEMA_VERSION}: use a matching geopush version or a new --state file"
            )

    def _index_unsent(self) -> None:
        """Replace the outbox's old ``(sent, seq)`` index with the partial one (``_UNSENT_INDEX``),
        in one transaction. Not a schema change: the same tables, the same queries answered."""
        rows = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'outbox_unsent'"
        ).fetchall()
        if rows and "WHERE" in str(rows[0][0]).upper():
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DROP INDEX IF EXISTS outbox_unsent")
            db.execute(_UNSENT_INDEX)
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        log.info("state file %s: outbox index made partial (unsent rows only)", self.path)

    def _migrate(self, version: str) -> str:
        """Run the migration from schema ``version`` in one transaction; the new version."""
        new = str(int(version) + 1)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql in _MIGRATIONS[version]:
                db.execute(sql)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (new,))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        log.info("state file %s migrated from schema %s to %s", self.path, version, new)
        return new

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


_MARK_SENT = "UPDATE outbox SET sent = 1 WHERE seq BETWEEN ? AND ?"
_DELETE_SENT = "DELETE FROM outbox WHERE seq = ?"


def seq_runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Distinct ``seqs`` as runs of consecutive numbers, ``(first, last)``, ascending: the
    ranges hold exactly the given numbers."""
    runs: list[tuple[int, int]] = []
    for q in sorted(seqs):
        if runs and q <= runs[-1][1] + 1:
            if q > runs[-1][1]:
                runs[-1] = (runs[-1][0], q)
        else:
            runs.append((q, q))
    return runs


_QUARANTINE = """CREATE TABLE IF NOT EXISTS quarantine (
    user TEXT NOT NULL, blob BLOB, error TEXT NOT NULL, at REAL NOT NULL
)"""
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _refusal(path: Path, what: str) -> str:
    return (
        f"state file {path} exists but {what}: refusing to take it for a new, empty state "
        "(visits, push log and coupon counts would be lost, and coupons sold again). Restore "
        "it from a backup; or, to start anew deliberately, run once with --new-state "
        "(GEOPUSH_NEW_STATE=true), or remove the file"
    )


def _check_file(path: Path, *, new: bool) -> bool:
    """Before SQLite opens ``path``: True when a new state is to be made there (no file, or an
    empty one that ``new`` allows); False for a SQLite file (checked further once open); a
    StateError for an empty file without ``new`` or a file that is not SQLite."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc}") from exc
    if not head:
        if new:
            log.warning("state file %s is empty (0 bytes): starting a new state (--new-state)", path)
            return True
        raise StateError(_refusal(path, "is empty (0 bytes)"))
    if head != _SQLITE_MAGIC:
        raise StateError(
            f"state file {path} is not a SQLite database (it starts with {head[:8]!r}): refusing "
            "to use or overwrite it. Check --state (GEOPUSH_STATE): point it at the geopush state "
            "file, or at a path that does not exist yet to start a new state"
        )
    return False
# From schema N to N + 1 (run in one transaction by SQLiteStore._migrate).
_MIGRATIONS: dict[str, tuple[str, ...]] = {
    # the input digests move from a table keyed by digest to an append-only log
    "1": (
        "INSERT INTO input_log (seq, digest) SELECT seq, digest FROM inputs ORDER BY seq",
        "DROP TABLE inputs",
    ),
    # the outbox without its UNIQUE index on out_id (rebuilt: SQLite cannot drop a constraint)
    "2": (
        "ALTER TABLE outbox RENAME TO outbox_v2",
        _OUTBOX,
        "INSERT INTO outbox (seq, out_id, topic, payload, sent)"
        " SELECT seq, out_id, topic, payload, sent FROM outbox_v2 ORDER BY seq",
        "DROP TABLE outbox_v2",
        _UNSENT_INDEX,
    ),
    # the HTTP API's store changes and tokens (new tables only)
    "3": tuple(f"{t.strip()};" for t in _API_TABLES.split(";") if t.strip()),
}
_PRUNE_INPUTS = "DELETE FROM input_log WHERE seq <= ?"
_PRUNE_SENT = "DELETE FROM outbox WHERE sent = 1 AND seq > ? AND seq <= ?"


_CHASE_FRAMES = 1024  # a log this long (~4 MiB) is chased until the writer can restart it
_CHASE_MAX = 50  # follow-ups per wake-up at most (each ~1 ms)


class _InputWindow:
    """The last ``size`` committed input digests, answering "which of these are among them?"
    exactly: each digest maps to the number of its newest commit (inputs are numbered 1, 2, ...
    as in the input log), in chunks of ~size/16 digests; a chunk goes whole once its newest
    number is out of the window, and a digest counts as seen only if its number is in it.

    One dict (or Counter) would do, but under churn (every insert also evicts one) CPython
    rehashes the whole table every ~2x its size of inserts: ~7 ms on the event loop every ~4 s
    at 45k messages/s with the default 100k window, and a Python loop per evicted digest. Here
    inserts are one C-level ``update`` into a small dict and eviction drops a whole one; look-ups
    (only for messages the broker marked as redelivered) try each chunk."""

    def __init__(self, size: int, *, start: int = 0) -> None:
        self.size = size
        self.count = start  # number of the newest digest added
        self._chunk = max(256, size // 16)
        self._chunks: deque[dict[bytes, int]] = deque()
        self._tops: deque[int] = deque()  # newest number in each chunk

    def add(self, digests: Sequence[bytes]) -> None:
        if not digests:
            return
        first = self.count + 1
        self.count += len(digests)
        chunks, tops = self._chunks, self._tops
        if not chunks or len(chunks[-1]) >= self._chunk:
            chunks.append({})
            tops.append(0)
        chunks[-1].update(zip(digests, range(first, self.count + 1), strict=True))
        tops[-1] = self.count
        cutoff = self.count - self.size
        while tops and tops[0] <= cutoff:
            chunks.popleft()
            tops.popleft()

    def seen(self, digests: Iterable[bytes]) -> set[bytes]:
        cutoff = self.count - self.size
        chunks = self._chunks
        return {d for d in digests if any(c.get(d, cutoff) > cutoff for c in chunks)}

    def __len__(self) -> int:
        return sum(map(len, self._chunks))


class _Checkpointer:
    """A thread with its own connection that checkpoints the WAL (PASSIVE) after commits, at most
    every ``interval`` seconds, so the copy and its fsyncs stay off the event loop. SQLite's step
    releases the GIL: the checkpoint runs beside the writer."""

    def __init__(self, path: Path, interval: float = 0.05, *, start: bool = True) -> None:
        self.path = path
        self.interval = interval
        self.checkpoints = 0
        self.rounds = 0  # wake-ups handled (each: one checkpoint and its chase)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        if start:  # tests drive an unstarted one step by step (``_checkpoint``)
            self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def wait_round(self, after: int, timeout: float = 30.0) -> bool:
        """Block until more than ``after`` rounds are done (tests synchronise on this instead of
        sleeping); False if the thread did not get there within ``timeout``."""
        with self._done:
            return self._done.wait_for(lambda: self.rounds > after, timeout)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _checkpoint(
        self, db: sqlite3.Connection, between: Callable[[], object] | None = None
    ) -> None:
        """One PASSIVE checkpoint; then, while the log is long, chase its tail.

        Only the writer restarts the log (back to its first frame), and only when a transaction
        begins with every frame already copied. Under a steady stream of commits a checkpoint
        of ~50 ms of frames (~4 ms) nearly always ends after the next commit appended more,
        so the log never restarted: it grew to ``WAL_LIMIT_BYTES`` and the writer checkpointed
        itself, on the event loop (2-8 ms with the fsyncs, every ~0.8 s at 40k messages/s; in
        a traced run, where most of its single-event p99 spikes began). Follow-up checkpoints
        copy only the frames committed meanwhile (a commit or two: ~1 ms) until one finds
        nothing new, so the writer's next transaction can restart the log. ``between`` runs
        after each pass (tests use it to land the writer's next commit there, deterministically)."""
        ((_busy, frames, _done),) = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.checkpoints += 1
        if between is not None:
            between()
        for _ in range(_CHASE_MAX):
            if frames < _CHASE_FRAMES or self._stop.is_set():
                return
            ((_busy, now, done),) = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
            if between is not None:
                between()
            if now < frames or (now == frames and done == now):
                return  # restarted, or everything copied and nothing new: the next begin restarts
            frames = now

    def _run(self) -> None:
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None)
        except sqlite3.Error as exc:
            log.error("WAL checkpointer cannot open %s: %s", self.path, exc)
            return
        try:
            while not self._stop.is_set():
                self._wake.wait()
                self._wake.clear()
                if self._stop.is_set():
                    break
                try:
                    self._checkpoint(db)
                except sqlite3.Error as exc:  # the writer's own bound still holds the WAL
                    log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
                with self._done:
                    self.rounds += 1
                    self._done.notify_all()
                self._stop.wait(self.interval)  # at most one checkpoint per interval
        finally:
            db.close()


__all__ = ["OutRow", "Renderer", "SQLiteStore"]
