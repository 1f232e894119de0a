"""Merchants' visitors: the visit log (history, resume, open visits) and the live fan-out.

**Ids.** Every visit event the daemon emits is committed with its batch as an outbox row (the
exact MQTT payload, ``engine/outputs.py``'s JSON). The row's outbox ``seq`` is the event's id in
the API: monotonic, so "the events after id N" is a range, and the SSE ``id:`` field. The
payload is byte for byte the MQTT one (its ``visit_id``/``event``/``dwell_s`` give the stable
``out_id`` consumers dedupe by, shared with MQTT).

**The visit log** (``VisitLog``, tables created here with CREATE TABLE IF NOT EXISTS):

* ``api_visits(seq PRIMARY KEY, merchant_id, store_id, visit_id, event, ts, payload)``: the
  visit rows of the outbox, copied by ``catch_up`` off the event loop (a worker thread, on its
  own connection: each chunk of 1,000 outbox rows read, then inserted in a short transaction)
  every second and before each read. The
  daemon's hot path pays nothing for it. The outbox keeps only the newest 100,000 sent outputs
  (pushes and visits together): the log keeps the newest ``keep`` (1,000,000) visit events.
* ``api_visits_open(visit_id PRIMARY KEY, merchant_id, store_id, seq, payload)``: the visits
  entered and not yet exited, kept by the same copy (an enter adds, an exit removes). The
  core's user records hold the same, but reading them means decoding every user record of
  the state file; this table is answered by an index.
* ``api_visits_cursor``: the outbox seq copied up to.

**Live** (``VisitHub``): the API's process reads the visit rows the engine committed to the
outbox (``OutboxFollower``, every 50 ms while a stream is open, its own read connection) and
hands them to ``rows``; in-process, ``committed`` takes a batch's rows right after its commit.
Either pushes the merchant's visit rows into each subscribed stream's bounded asyncio queue
(``put_nowait``, never waiting). A stream whose queue is full is dropped: it ends after the events it holds, and the
client resumes from its last id (``Last-Event-ID``) out of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.api.state import _sql, _sqlite_path
from engine.errors import StateError

logger = logging.getLogger("geopush.api")

VISIT_LOG_KEEP = 1_000_000  # visit events kept in api_visits (newest)
COPY_CHUNK = 1000  # outbox rows copied per transaction (short: the engine commits wait for it)
PRUNE_EVERY = 10_000  # outbox rows between two prunes of the log
COPY_EVERY_S = 1.0  # how often the log copies the outbox's new visit rows
QUEUE_SIZE = 1000  # events buffered per SSE stream before it is dropped

_TABLES = """
CREATE TABLE IF NOT EXISTS api_visits (
    seq INTEGER PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    visit_id TEXT NOT NULL,
    event TEXT NOT NULL,
    ts REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS api_visits_merchant ON api_visits (merchant_id, seq);
CREATE TABLE IF NOT EXISTS api_visits_open (
    visit_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS api_visits_open_merchant ON api_visits_open (merchant_id, store_id);
CREATE TABLE IF NOT EXISTS api_visits_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER);
"""

# The outbox rows of visit events in (after, upto], their fields out of the payload (JSON text):
# read outside the write transaction (WAL: a reader never holds the engine's commits back)
_READ = """
SELECT seq, json_extract(t, '$.merchant_id'), json_extract(t, '$.store_id'),
       json_extract(t, '$.visit_id'), json_extract(t, '$.event'), json_extract(t, '$.ts'), payload
FROM (SELECT seq, payload, CAST(payload AS TEXT) AS t FROM outbox
      WHERE seq > ? AND seq <= ? AND substr(topic, 1, ?) = ?)
WHERE json_valid(t) AND json_extract(t, '$.kind') = 'visit'
"""
_INSERT = (
    "INSERT OR IGNORE INTO api_visits (seq, merchant_id, store_id, visit_id, event, ts, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


# The highest outbox seq ever written (sent dead letters are deleted; their numbers are not reused).
_TOP = (
    "SELECT MAX(COALESCE((SELECT MAX(seq) FROM outbox), 0),"
    " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0))"
)


@dataclass(frozen=True, slots=True)
class VisitRow:
    seq: int
    payload: bytes

    def to_dict(self) -> dict[str, Any]:
        """A visit in the API's JSON: its id, the MQTT ``out_id`` and the MQTT payload."""
        data = json.loads(self.payload)
        return {"id": self.seq, "out_id": out_id_of(data), "data": data}


def out_id_of(data: dict[str, Any]) -> str:
    """The stable id of a visit event (engine/outputs.py ``VisitEvent.out_id``)."""
    if data.get("event") == "dwell":
        return f"{data['visit_id']}:dwell:{data.get('dwell_s')}"
    return f"{data['visit_id']}:{data['event']}"


class OutboxCopy:
    """A log copied from the daemon's outbox into tables of the state file, on a connection of
    its own (calls are serialised by a lock: they run in worker threads, so waiting for the
    daemon's commit blocks no event loop). Subclasses give ``TABLES`` and ``catch_up``; the
    visit log here and the outcome log (engine/api/outcomes.py) are the two."""

    TABLES = ""
    name = "outbox copy"

    def _open(self, state: str | Path, keep: int, prune_every: int) -> None:
        self.path = _sqlite_path(state)
        self.keep = keep
        self.prune_every = prune_every
        self._lock = threading.Lock()
        with _sql(self.path):
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # the daemon's checkpointer does
            self._db.executescript(self.TABLES)

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    CURSOR = ""  # the table holding the outbox seq copied up to

    def _read(self, db: sqlite3.Connection, after: int, upto: int) -> list[Any]:
        """This log's rows of the outbox in (after, upto]."""
        raise NotImplementedError

    def _write(self, db: sqlite3.Connection, rows: list[Any]) -> None:
        """Insert what ``_read`` returned (inside the write transaction)."""
        raise NotImplementedError

    def _prune(self) -> None:
        raise NotImplementedError

    def _cursor(self, db: sqlite3.Connection) -> int:
        row = db.execute(f"SELECT seq FROM {self.CURSOR} WHERE id = 1").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def catch_up(self) -> int:
        """Copy the outbox's rows committed since the last copy; the outbox rows read.

        Each chunk is read (the scan of the outbox and the JSON) outside any write transaction;
        the write transaction then only inserts what was read and moves the cursor, so the
        engine's batch commits wait for it (SQLite has one writer) as short a time as can be."""
        done = 0
        with self._lock, _sql(self.path):
            db = self._db
            while True:
                after = stored = self._cursor(db)
                (top,) = db.execute(_TOP).fetchone()
                top = int(top)
                if top < after:  # an outbox started over (not the file we copied from)
                    after = 0
                upto = min(top, after + COPY_CHUNK)
                rows = self._read(db, after, upto) if upto > after else []
                with self._tx() as db:
                    if self._cursor(db) != stored:
                        continue  # another copier moved the cursor meanwhile: read again
                    if rows:
                        self._write(db, rows)
                    db.execute(
                        f"INSERT INTO {self.CURSOR} (id, seq) VALUES (1, ?)"
                        " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
                        (upto,),
                    )
                done += upto - after
                if upto // self.prune_every != after // self.prune_every:
                    self._prune()
                if upto >= top:
                    return done


async def outbox_copier(log: OutboxCopy, every: float = COPY_EVERY_S) -> None:
    """Copy the outbox's new rows into ``log`` every ``every`` seconds, in a thread."""
    while True:
        try:
            await asyncio.to_thread(log.catch_up)
        except StateError as exc:  # busy or failing file: the next round retries
            logger.warning("%s: %s", log.name, exc)
        await asyncio.sleep(every)


class VisitLog(OutboxCopy):
    """The visit tables (``OutboxCopy``)."""

    TABLES = _TABLES
    CURSOR = "api_visits_cursor"
    name = "visit log"

    def __init__(
        self,
        state: str | Path,
        visits_topic: str,
        *,
        keep: int = VISIT_LOG_KEEP,
        prune_every: int = PRUNE_EVERY,
    ) -> None:
        self.prefix = visits_topic  # e.g. "geopush/visits/"
        self._open(state, keep, prune_every)

    def _read(self, db: sqlite3.Connection, after: int, upto: int) -> list[Any]:
        return db.execute(_READ, (after, upto, len(self.prefix), self.prefix)).fetchall()

    def _write(self, db: sqlite3.Connection, rows: list[Any]) -> None:
        """The visit rows, and the open visits: an enter adds, an exit removes."""
        db.executemany(_INSERT, rows)
        enters = [(r[3], r[1], r[2], r[0], r[6]) for r in rows if r[4] == "enter"]
        if enters:
            db.executemany(
                "INSERT OR REPLACE INTO api_visits_open"
                " (visit_id, merchant_id, store_id, seq, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                enters,
            )
        exits = [(r[3],) for r in rows if r[4] == "exit"]
        if exits:
            db.executemany("DELETE FROM api_visits_open WHERE visit_id = ?", exits)

    def _prune(self) -> None:
        """Keep the newest ``keep`` events: the cut found by a read (no write lock held while
        it walks the index), then a short delete at the front of the table."""
        row = self._db.execute(
            "SELECT seq FROM api_visits ORDER BY seq DESC LIMIT 1 OFFSET ?", (self.keep,)
        ).fetchone()
        if row is not None:
            with self._tx() as db:
                db.execute("DELETE FROM api_visits WHERE seq <= ?", (int(row[0]),))

    def page(
        self,
        merchant_id: str,
        *,
        after: int = 0,
        since: float | None = None,
        store_id: str | None = None,
        limit: int = 100,
    ) -> list[VisitRow]:
        """The merchant's visit events with id > ``after`` (and ts >= ``since``), oldest first."""
        sql = "SELECT seq, payload FROM api_visits WHERE merchant_id = ? AND seq > ?"
        args: list[Any] = [merchant_id, after]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if store_id is not None:
            sql += " AND store_id = ?"
            args.append(store_id)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock, _sql(self.path):
            rows = self._db.execute(sql, args).fetchall()
        return [VisitRow(int(q), bytes(p)) for q, p in rows]

    def open_visits(self, merchant_id: str, store_id: str | None = None) -> list[VisitRow]:
        """The merchant's visits entered and not exited: their enter events, by store."""
        sql = "SELECT seq, payload FROM api_visits_open WHERE merchant_id = ?"
        args: list[Any] = [merchant_id]
        if store_id is not None:
            sql += " AND store_id = ?"
            args.append(store_id)
        with self._lock, _sql(self.path):
            rows = self._db.execute(sql + " ORDER BY store_id, seq", args).fetchall()
        return [VisitRow(int(q), bytes(p)) for q, p in rows]

    def newest(self) -> int:
        """The outbox's newest seq (a stream without a resume id starts after it)."""
        with self._lock, _sql(self.path):
            (top,) = self._db.execute(_TOP).fetchone()
        return int(top)


class _Row(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


@dataclass(eq=False)
class Subscriber:
    """One SSE stream: its merchant and its bounded queue (None at the end: dropped)."""

    merchant_id: str
    queue: asyncio.Queue[tuple[int, bytes] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE + 1)
    )
    dropped: bool = False


class VisitHub:
    """In-process fan-out of committed visit events to the SSE streams."""

    def __init__(self, visits_topic: str, last_seq: Callable[[], int]) -> None:
        self.prefix = visits_topic
        self._last_seq = last_seq  # the seq of the newest outbox row committed
        self._subs: dict[str, set[Subscriber]] = {}
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        """Open streams."""
        return sum(len(s) for s in self._subs.values())

    def close(self) -> None:
        """The server stops: end every stream (each client resumes from its last id)."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(None)
        self._subs.clear()

    def subscribe(self, merchant_id: str) -> Subscriber:
        sub = Subscriber(merchant_id)
        self._subs.setdefault(merchant_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.merchant_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.merchant_id]

    def committed(self, rows: Sequence[_Row]) -> None:
        """A batch's outbox rows, just committed (called on the event loop, never waits)."""
        if not self._subs or not rows:
            return
        first = self._last_seq() - len(rows) + 1
        self.rows([(first + i, r.topic, r.payload) for i, r in enumerate(rows)])

    def rows(self, rows: Sequence[tuple[int, str, bytes]]) -> None:
        """Committed outbox rows as (seq, topic, payload): the merchants' visit rows go to their
        streams (the API's process reads them from the outbox: ``OutboxFollower``)."""
        if not self._subs:
            return
        prefix, n = self.prefix, len(self.prefix)
        for seq, topic, payload in rows:
            if not topic.startswith(prefix):
                continue
            subs = self._subs.get(topic[n:])
            if not subs:
                continue
            for sub in list(subs):
                q = sub.queue
                if q.qsize() >= QUEUE_SIZE:  # too slow: end its stream; it resumes from the log
                    q.put_nowait(None)
                    sub.dropped = True
                    self.dropped += 1
                    self.unsubscribe(sub)
                else:
                    q.put_nowait((seq, payload))


class OutboxFollower:
    """The API's process follows the engine's committed outbox rows on a read connection of its
    own: every ``every`` seconds (a worker thread), the visit rows after the last one read go to
    ``hub`` (its SSE streams). With no stream open it only notes where the outbox ends.

    Dead letters are deleted once published and their numbers may be taken again, but only by
    the next engine process (engine/daemon/webhooks.py): this follower lives and dies with the
    engine that writes, so it reads each visit row once."""

    def __init__(self, state: str | Path, hub: VisitHub, every: float = 0.05) -> None:
        self.path = _sqlite_path(state)
        self.hub = hub
        self.every = every
        with _sql(self.path):
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA busy_timeout=1000")
        self.last = self._top()

    def _top(self) -> int:
        with _sql(self.path):
            (top,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
        return int(top)

    def read(self) -> list[tuple[int, str, bytes]]:
        """The visit rows committed since the last read (none while no stream is open)."""
        top = self._top()
        if not self.hub.subscribers or top < self.last:  # (< : the outbox started over)
            self.last = top
            return []
        p = self.hub.prefix
        with _sql(self.path):
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE seq > ? AND seq <= ?"
                " AND substr(topic, 1, ?) = ? ORDER BY seq",
                (self.last, top, len(p), p),
            ).fetchall()
        self.last = top
        return [(int(q), str(t), bytes(b)) for q, t, b in rows]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    async def run(self) -> None:
        while True:
            try:
                found = await asyncio.to_thread(self.read)
            except StateError as exc:
                logger.warning("following the outbox: %s", exc)
                found = []
            if found:
                self.hub.rows(found)
            await asyncio.sleep(self.every)


__all__ = [
    "OutboxCopy",
    "OutboxFollower",
    "VisitHub",
    "VisitLog",
    "VisitRow",
    "out_id_of",
    "outbox_copier",
]
