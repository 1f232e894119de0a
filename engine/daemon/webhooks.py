"""Webhooks: a merchant's visit events and pushes POSTed to its HTTPS endpoints, signed, retried,
from a durable queue in the daemon's SQLite state file (``WebhookStore``, below) or, in a worker
group, in Redis (``RedisWebhookStore``, engine/daemon/webhooks_redis.py): both are a
``WebhookQueue``, and ``WebhookDispatcher`` delivers through either with the same code.

Tables (made here with CREATE TABLE IF NOT EXISTS; the state file's schema version is not bumped):

* ``webhook_endpoints``: one row per registered endpoint (merchant, URL, secret, event filter,
  ``after_seq``: the outbox seq at registration, nothing older is sent to it), with its
  consecutive failures and, once paused, when and why;
* ``webhook_queue``: one row per (endpoint, output) still to deliver; deleted after a 2xx;
* ``webhook_cursor``: the last outbox ``seq`` the dispatcher has turned into queue rows.

Nothing committed is lost: the dispatcher reads the daemon's committed ``outbox`` rows after its
cursor and, in ONE transaction, inserts the queue rows and moves the cursor. The daemon's commit
and this enqueue are separate transactions, so a process killed between them (kill -9 right after
a commit) simply enqueues those rows at the next start (the cursor has not moved). Dead letters
(``dl:``) are skipped and never move the cursor past themselves: they are deleted once published,
so their seq can be taken again after a restart. The outbox keeps the newest 100,000 sent rows
(``outbox_keep``): the dispatcher runs in the daemon and follows each commit, far closer than that.

Delivery (``WebhookDispatcher``): one task per endpoint with up to ``per_endpoint`` requests in
flight, so a slow or dead endpoint holds back only its own queue, never another endpoint nor the
event path (the dispatcher runs on the daemon's loop but never waits on an endpoint there). A
failed attempt (non-2xx, timeout, refused connection) puts the endpoint in backoff: exponential
from ``retry_base_s``, capped at ``retry_cap_s``, with jitter; while failing it gets one request
at a time (a probe, its oldest output), and a 2xx clears it. With no endpoint registered the
dispatcher does nothing per commit (its cursor follows the outbox's tail every 10 s). An endpoint is
paused after ``pause_after`` consecutive failures or when its oldest undelivered output is older
than ``max_age_s`` while failing; its queue is kept, and ``POST .../resume`` (or deleting and
registering it again) restarts it. Delivery is at least once: the queue row goes after the 2xx,
so a crash in between repeats the request with the same ``webhook-id``/``ce-id`` (the output's
``out_id``, as on MQTT), which receivers deduplicate on.

Each request (Standard Webhooks signature, CloudEvents HTTP binary mode)::

    POST <url>
    content-type: application/json          the output's JSON, byte for byte as on MQTT
    webhook-id: <out_id>
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>
    ce-specversion: 1.0
    ce-id: <out_id>
    ce-type: com.geopush.visit.enter | .visit.dwell | .visit.exit | com.geopush.push
    ce-source: /geopush/merchants/<merchant_id>
    ce-subject: <store_id>
    ce-time: <the output's ts, RFC 3339>

``key`` is the base64-decoded part of the endpoint's secret after ``whsec_``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from engine.daemon.metrics import Metrics
from engine.errors import ConfigError, StateError

log = logging.getLogger("geopush.webhooks")
T = TypeVar("T")

EVENT_TYPES = ("visit.enter", "visit.dwell", "visit.exit", "push")
CE_PREFIX = "com.geopush."
SECRET_PREFIX = "whsec_"
# Standard Webhooks: receivers refuse timestamps further than this from their clock (replay).
TOLERANCE_S = 300

_TABLES = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    after_seq INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    paused REAL,
    pause_reason TEXT
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_merchant ON webhook_endpoints (merchant_id);
CREATE TABLE IF NOT EXISTS webhook_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL,
    out_id TEXT NOT NULL,
    ce_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    enqueued REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_queue_endpoint ON webhook_queue (endpoint_id, id);
CREATE TABLE IF NOT EXISTS webhook_cursor (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


# --- signing (the sender's half; docs/api.md has the receiver's) ---------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256>`` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> bool:
    """A receiver's check (the one docs/api.md shows): the signature matches and the timestamp
    is within ``TOLERANCE_S`` of ``now``."""
    msg_id, ts = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs((time.time() if now is None else now) - ts) > TOLERANCE_S:
        return False
    expected = sign(secret, msg_id, ts, body).split(",", 1)[1]
    return any(
        hmac.compare_digest(expected, s.split(",", 1)[1])
        for s in headers["webhook-signature"].split()
        if s.startswith("v1,")
    )


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    pause_after: int = 20  # consecutive failed attempts
    max_age_s: float = 24 * 3600.0  # oldest undelivered output, while failing
    per_endpoint: int = 8  # requests in flight per endpoint
    timeout_s: float = 10.0
    batch: int = 500  # outbox rows read per enqueue step

    @classmethod
    def from_env(cls, env: Any = None) -> WebhookSettings:
        """``GEOPUSH_WEBHOOK_RETRY_BASE_S`` etc. override the defaults (one per field)."""
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            raw = env.get(f"GEOPUSH_WEBHOOK_{name.upper()}")
            if raw is None:
                continue
            kind = int if name in ("pause_after", "per_endpoint", "batch") else float
            try:
                kw[name] = kind(raw)
            except ValueError as exc:
                raise ConfigError(
                    f"GEOPUSH_WEBHOOK_{name.upper()}={raw!r} is not a number; give e.g. "
                    f"{getattr(cls, name)!r}"
                ) from exc
        return cls(**kw)

    def backoff(self, failures: int) -> float:
        """Exponential, capped, with jitter (50-100% of the step)."""
        step = min(self.retry_cap_s, self.retry_base_s * 2.0 ** max(0, failures - 1))
        return float(step * (0.5 + random.random() / 2))


# --- the tables ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Endpoint:
    endpoint_id: str
    merchant_id: str
    url: str
    secret: str
    events: tuple[str, ...]
    description: str
    created: float
    after_seq: int
    failures: int = 0
    paused: float | None = None
    pause_reason: str | None = None
    pending: int = 0

    def to_dict(self, with_secret: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint_id": self.endpoint_id,
            "merchant_id": self.merchant_id,
            "url": self.url,
            "events": list(self.events),
            "description": self.description,
            "created": self.created,
            "failures": self.failures,
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "pending": self.pending,
        }
        if with_secret:
            out["secret"] = self.secret
        return out

    def wants(self, ce_type: str) -> bool:
        return ce_type.removeprefix(CE_PREFIX) in self.events

    @classmethod
    def new(
        cls, merchant_id: str, url: str, events: list[str] | None, description: str, after_seq: int
    ) -> Endpoint:
        """A new endpoint with a fresh id and signing secret, created now; ``events`` empty or
        None means every event type. Both webhook stores register endpoints made here."""
        return cls(
            endpoint_id="wh_" + secrets.token_hex(8),
            merchant_id=merchant_id,
            url=url,
            secret=new_secret(),
            events=tuple(events) if events else EVENT_TYPES,
            description=description,
            created=round(time.time(), 3),
            after_seq=after_seq,
        )


_EP_COLS = (
    "endpoint_id, merchant_id, url, secret, events, description, created, after_seq, failures,"
    " paused, pause_reason"
)


def _endpoint(row: tuple[Any, ...], pending: int = 0) -> Endpoint:
    return Endpoint(
        row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), row[5], row[6], int(row[7]),
        int(row[8]), row[9], row[10], pending,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Delivery:
    id: Any  # the store's queue entry: a row id (SQLite), a stream entry id (Redis)
    endpoint_id: str
    out_id: str
    ce_type: str
    payload: bytes
    enqueued: float
    attempts: int


class WebhookQueue(Protocol):
    """Where endpoints and their queues are kept: ``WebhookStore`` (the SQLite state file, one
    daemon) or ``engine.daemon.webhooks_redis.RedisWebhookStore`` (a worker group's Redis). The
    API registers through it; ``WebhookDispatcher`` (signing, backoff, pausing) delivers through
    it, the same code for both. A cursor is the store's own position in its committed outputs
    (an outbox seq, a stream entry id); a delivery's ``id`` its own queue entry. ``threaded``:
    the dispatcher may call it from threads (every method but ``passed``, which it calls on the
    event loop after each move of the cursor)."""

    threaded: bool

    def create(
        self, merchant_id: str, url: str, events: list[str] | None = None, description: str = ""
    ) -> Endpoint: ...
    def endpoints(self, merchant_id: str | None = None, count: bool = True) -> list[Endpoint]: ...
    def get(self, endpoint_id: str, count: bool = True) -> Endpoint | None: ...
    def delete(self, endpoint_id: str) -> None: ...
    def resume(self, endpoint_id: str) -> None: ...
    def cursor(self) -> Any: ...
    def enqueue_after(self, cursor: Any, limit: int) -> tuple[Any, int, set[str]]: ...
    def skip_idle(self, cursor: Any) -> Any: ...
    def passed(self, cursor: Any) -> None: ...
    def due(self, endpoint_id: str, limit: int) -> list[Delivery]: ...
    def settle(self, endpoint_id: str, done: list[Any], failed: list[tuple[Any, str]]) -> int: ...
    def pause(self, endpoint_id: str, reason: str) -> None: ...
    def pending(self) -> int: ...
    def close(self) -> None: ...


class WebhookStore:
    """The webhook tables on a connection of its own to the state file (WAL)."""

    threaded = False  # one connection, its transactions on the event loop

    BUSY_TIMEOUT_MS = 250

    def __init__(self, state: str | Path) -> None:
        self.path = Path(str(state))
        with self._sql():
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(self.BUSY_TIMEOUT_MS)}")
            # as the daemon's own connection: WAL, and a commit survives a killed process
            # without an fsync each (SQLite's default in WAL mode would be FULL)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # no checkpoint inside our commits (an fsync of the main file on the event loop):
            # the daemon's store checkpoints the shared WAL in a thread of its own
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.executescript(_TABLES)
        self._writes = 0

    @contextlib.contextmanager
    def _sql(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path} (webhooks): {exc}") from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._sql():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self._writes += 1
        if self._writes % 256 == 0:
            self._bound_wal()

    def _bound_wal(self) -> None:
        """A long backlog delivered while the daemon commits nothing (so its checkpointer
        sleeps) would grow the WAL without end: past the store's limit, checkpoint it here
        (PASSIVE: never waits for a reader)."""
        from engine.stores.sqlite_store import WAL_LIMIT_BYTES

        with contextlib.suppress(OSError, sqlite3.Error):
            if os.stat(f"{self.path}-wal").st_size > WAL_LIMIT_BYTES:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _outbox_tail(self, db: sqlite3.Connection) -> int:
        has = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone()
        if not has:
            return 0
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])

    # --- endpoints (the API) ---------------------------------------------------------------------

    def create(
        self, merchant_id: str, url: str, events: list[str] | None = None, description: str = ""
    ) -> Endpoint:
        with self._tx() as db:
            ep = Endpoint.new(merchant_id, url, events, description, self._outbox_tail(db))
            db.execute(
                f"INSERT INTO webhook_endpoints ({_EP_COLS}) VALUES (?,?,?,?,?,?,?,?,0,NULL,NULL)",
                (ep.endpoint_id, merchant_id, url, ep.secret, json.dumps(list(ep.events)), description,
                 ep.created, ep.after_seq),
            )  # fmt: skip
        return ep

    def endpoints(self, merchant_id: str | None = None, count: bool = True) -> list[Endpoint]:
        """The endpoints (of one merchant), with their queues' lengths unless ``count`` is False
        (the dispatcher's once-a-second look: counting a long queue is a scan)."""
        sql = f"SELECT {_EP_COLS} FROM webhook_endpoints"
        args: tuple[Any, ...] = ()
        if merchant_id is not None:
            sql += " WHERE merchant_id = ?"
            args = (merchant_id,)
        with self._sql():
            rows = self._db.execute(sql + " ORDER BY created, endpoint_id", args).fetchall()
            if not count:
                return [_endpoint(r) for r in rows]
            counts = {  # per endpoint: a range of the (endpoint_id, id) index each
                r[0]: self._db.execute(
                    "SELECT COUNT(*) FROM webhook_queue WHERE endpoint_id = ?", (r[0],)
                ).fetchone()[0]
                for r in rows
            }
        return [_endpoint(r, int(counts[r[0]])) for r in rows]

    def get(self, endpoint_id: str, count: bool = True) -> Endpoint | None:
        """One endpoint (with its queue's length unless ``count`` is False)."""
        with self._sql():
            row = self._db.execute(
                f"SELECT {_EP_COLS} FROM webhook_endpoints WHERE endpoint_id = ?", (endpoint_id,)
            ).fetchone()
            if row is None:
                return None
            if not count:
                return _endpoint(row)
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM webhook_queue WHERE endpoint_id = ?", (endpoint_id,)
            ).fetchone()
        return _endpoint(row, int(n))

    def delete(self, endpoint_id: str) -> None:
        """Remove the endpoint and its undelivered queue."""
        with self._tx() as db:
            db.execute("DELETE FROM webhook_queue WHERE endpoint_id = ?", (endpoint_id,))
            db.execute("DELETE FROM webhook_endpoints WHERE endpoint_id = ?", (endpoint_id,))

    def resume(self, endpoint_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE webhook_endpoints SET paused = NULL, pause_reason = NULL, failures = 0"
                " WHERE endpoint_id = ?",
                (endpoint_id,),
            )

    # --- the dispatcher's side -------------------------------------------------------------------

    def cursor(self) -> int:
        """The last outbox seq enqueued; made at the first call (the oldest endpoint's
        ``after_seq``, or the outbox's tail when there is none)."""
        with self._tx() as db:
            row = db.execute("SELECT seq FROM webhook_cursor WHERE name = 'outbox'").fetchone()
            if row is not None:
                return int(row[0])
            (low,) = db.execute("SELECT MIN(after_seq) FROM webhook_endpoints").fetchone()
            seq = int(low) if low is not None else self._outbox_tail(db)
            db.execute("INSERT INTO webhook_cursor (name, seq) VALUES ('outbox', ?)", (seq,))
        return seq

    def enqueue_after(self, cursor: int, limit: int) -> tuple[int, int, set[str]]:
        """Turn committed outbox rows after ``cursor`` into queue rows for the endpoints that
        want them; one transaction with the cursor's move. Returns (new cursor, rows read,
        endpoints that got rows)."""
        now = time.time()
        woke: set[str] = set()
        with self._tx() as db:
            rows = db.execute(
                "SELECT seq, out_id, payload FROM outbox WHERE seq > ?"
                " AND substr(out_id, 1, 3) != 'dl:' ORDER BY seq LIMIT ?",
                (cursor, limit),
            ).fetchall()
            if not rows:
                return cursor, 0, woke
            eps = [
                _endpoint(r)
                for r in db.execute(f"SELECT {_EP_COLS} FROM webhook_endpoints").fetchall()
            ]
            by_merchant: dict[str, list[Endpoint]] = {}
            for ep in eps:
                by_merchant.setdefault(ep.merchant_id, []).append(ep)
            queue: list[tuple[Any, ...]] = []
            for seq, oid, payload in rows:
                kind = classify(bytes(payload))
                if kind is None:
                    continue
                ce_type, merchant = kind
                for ep in by_merchant.get(merchant, ()):
                    if seq > ep.after_seq and ep.wants(ce_type):
                        queue.append((ep.endpoint_id, oid, ce_type, bytes(payload), now))
                        woke.add(ep.endpoint_id)
            if queue:
                db.executemany(
                    "INSERT INTO webhook_queue (endpoint_id, out_id, ce_type, payload, enqueued)"
                    " VALUES (?, ?, ?, ?, ?)",
                    queue,
                )
            last = int(rows[-1][0])
            db.execute("UPDATE webhook_cursor SET seq = ? WHERE name = 'outbox'", (last,))
        return last, len(rows), woke

    def skip_idle(self, cursor: int) -> int:
        """No endpoint: move the cursor to the outbox's tail (in one statement, so an endpoint
        registered meanwhile keeps it where it was: its outputs come after its ``after_seq``)."""
        with self._tx() as db:
            db.execute(
                "UPDATE webhook_cursor SET seq = (SELECT COALESCE(MAX(seq), ?) FROM outbox)"
                " WHERE name = 'outbox' AND NOT EXISTS (SELECT 1 FROM webhook_endpoints)",
                (cursor,),
            )
            (seq,) = db.execute("SELECT seq FROM webhook_cursor WHERE name = 'outbox'").fetchone()
        return int(seq)

    def passed(self, cursor: int) -> None:
        """Nothing to do: the outbox keeps its rows (``outbox_keep``)."""

    def due(self, endpoint_id: str, limit: int) -> list[Delivery]:
        with self._sql():
            rows = self._db.execute(
                "SELECT id, endpoint_id, out_id, ce_type, payload, enqueued, attempts"
                " FROM webhook_queue WHERE endpoint_id = ? ORDER BY id LIMIT ?",
                (endpoint_id, limit),
            ).fetchall()
        return [Delivery(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]

    def settle(
        self, endpoint_id: str, done: list[Any], failed: list[tuple[Any, str]]
    ) -> int:
        """One transaction: delivered rows go, failed ones count an attempt, the endpoint's
        consecutive failures go up by one (any failed) or to zero; returns them."""
        with self._tx() as db:
            if done:
                db.executemany("DELETE FROM webhook_queue WHERE id = ?", [(i,) for i in done])
            if failed:
                db.executemany(
                    "UPDATE webhook_queue SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                    [(err, i) for i, err in failed],
                )
            db.execute(
                "UPDATE webhook_endpoints SET failures = CASE WHEN ? THEN failures + 1 ELSE 0 END"
                " WHERE endpoint_id = ?",
                (bool(failed), endpoint_id),
            )
            row = db.execute(
                "SELECT failures FROM webhook_endpoints WHERE endpoint_id = ?", (endpoint_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def pause(self, endpoint_id: str, reason: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE webhook_endpoints SET paused = ?, pause_reason = ?"
                " WHERE endpoint_id = ? AND paused IS NULL",
                (time.time(), reason, endpoint_id),
            )

    def pending(self) -> int:
        with self._sql():
            return int(self._db.execute("SELECT COUNT(*) FROM webhook_queue").fetchone()[0])


def classify(payload: bytes) -> tuple[str, str] | None:
    """(ce-type, merchant_id) of a visit event or push payload; None for anything else."""
    try:
        d = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("merchant_id"), str):
        return None
    if d.get("kind") == "visit" and d.get("event") in ("enter", "dwell", "exit"):
        return f"{CE_PREFIX}visit.{d['event']}", d["merchant_id"]
    if d.get("kind") == "push":
        return f"{CE_PREFIX}push", d["merchant_id"]
    return None


def headers_for(ep: Endpoint, d: Delivery, now: float | None = None) -> dict[str, str]:
    """The request's headers: Standard Webhooks signature plus CloudEvents binary mode."""
    ts = int(time.time() if now is None else now)
    body = json.loads(d.payload)
    when = datetime.fromtimestamp(float(body.get("ts", ts)), UTC)
    return {
        "content-type": "application/json",
        "user-agent": "geopush-webhooks/1",
        "webhook-id": d.out_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(ep.secret, d.out_id, ts, d.payload),
        "ce-specversion": "1.0",
        "ce-id": d.out_id,
        "ce-type": d.ce_type,
        "ce-source": f"/geopush/merchants/{ep.merchant_id}",
        "ce-subject": str(body.get("store_id", "")),
        "ce-time": when.isoformat().replace("+00:00", "Z"),
    }


# --- delivery ------------------------------------------------------------------------------------


@dataclass
class _Worker:
    endpoint_id: str
    client: httpx.AsyncClient
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class WebhookDispatcher:
    """Enqueues committed outputs and delivers them, one task per endpoint (see the module doc).

    ``transport``: an ``httpx.AsyncBaseTransport`` (tests, or a proxy); default: the network.
    Each endpoint has a client (a connection pool) of its own, of ``per_endpoint`` connections:
    endpoints share no limit, and httpcore's pool stays small (it scans it at each request).
    """

    def __init__(
        self,
        state: str | Path | WebhookQueue,
        metrics: Metrics | None = None,
        settings: WebhookSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # a SQLite state file's path, or a store (a worker group's RedisWebhookStore)
        self.store: WebhookQueue = (
            WebhookStore(state) if isinstance(state, str | Path) else state
        )
        self.metrics = metrics or Metrics()
        self.settings = settings or WebhookSettings.from_env()
        self._transport = transport
        self._wake = asyncio.Event()
        self._workers: dict[str, _Worker] = {}
        self._running = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """A commit happened (the daemon's outbox hook): enqueue now, not at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if self._task is not None:
            tasks.append(self._task)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for w in self._workers.values():
            with contextlib.suppress(Exception):
                await w.client.aclose()
        self._workers.clear()
        try:
            self.flush()
        except StateError as exc:
            log.warning("webhooks: %s (enqueued at the next start)", exc)
        self.store.close()

    def flush(self) -> None:
        """Enqueue everything committed so far (at a stop, after the outbox's last marks): a
        worker's Redis outbox then keeps nothing back for the webhooks (nothing published is
        published again at the next start)."""
        cursor = self.store.cursor()
        if not self.store.endpoints(count=False):
            self.store.passed(self.store.skip_idle(cursor))
            return
        while True:
            new, n, _woke = self.store.enqueue_after(cursor, self.settings.batch)
            self.store.passed(new)
            if n == 0 and new == cursor:
                return
            cursor = new

    def _client(self) -> httpx.AsyncClient:
        n = self.settings.per_endpoint
        return httpx.AsyncClient(
            transport=self._transport,
            timeout=self.settings.timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        )

    async def _run(self) -> None:
        cursor = await self._io(self.store.cursor)
        refresh = idle_move = 0.0
        while self._running:
            self._wake.clear()
            try:
                now = time.monotonic()
                if now >= refresh:
                    await self._sync_workers()
                    refresh = now + 1.0
                if not self._workers:
                    # no endpoint: no work per commit; the cursor follows the tail now and then
                    if now >= idle_move:
                        cursor = await self._io(self.store.skip_idle, cursor)
                        self.store.passed(cursor)
                        idle_move = now + getattr(self.store, "idle_every_s", 10.0)
                    await asyncio.sleep(0.5)  # registration is seen within ~1 s
                    continue
                while True:
                    step = await self._io(self.store.enqueue_after, cursor, self.settings.batch)
                    cursor, n, woke = step
                    self.store.passed(cursor)
                    for eid in woke:
                        if eid not in self._workers:
                            await self._sync_workers()
                        w = self._workers.get(eid)
                        if w is not None:
                            w.wake.set()
                    if n < self.settings.batch:
                        break
                    await asyncio.sleep(0)  # a long backlog: let the event path run between steps
            except StateError as exc:
                log.warning("webhooks: %s; retrying", exc)
                await asyncio.sleep(1.0)  # (the state is down: do not spin on it)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.2)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call: in a thread when the store allows it (Redis: a write waits for its
        AOF fsync, which must not stall the event loop), else here (SQLite: one connection)."""
        if self.store.threaded:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def _sync_workers(self) -> None:
        live = {e.endpoint_id: e for e in await self._io(self.store.endpoints, None, False)}
        for eid in list(self._workers):
            if eid not in live:
                w = self._workers.pop(eid)
                if w.task is not None:
                    w.task.cancel()
                asyncio.get_running_loop().create_task(w.client.aclose())
        for eid, ep in live.items():
            w = self._workers.get(eid) or self._workers.setdefault(eid, _Worker(eid, self._client()))
            if (w.task is None or w.task.done()) and ep.paused is None:
                w.task = asyncio.create_task(self._deliver_loop(w), name=f"webhook-{eid}")
                w.wake.set()

    async def _deliver_loop(self, w: _Worker) -> None:
        """Keep up to ``per_endpoint`` requests in flight (one, a probe, while failing), oldest
        first; settle what finished at each wake-up (one transaction)."""
        s = self.settings
        inflight: dict[asyncio.Task[str | None], Delivery] = {}
        try:
            while self._running:
                ep = await self._io(self.store.get, w.endpoint_id, False)
                if ep is None or ep.paused is not None:
                    return  # deleted or paused: _sync_workers restarts it once resumed
                limit = 1 if ep.failures else s.per_endpoint
                if len(inflight) < limit:
                    busy = {d.id for d in inflight.values()}
                    for d in await self._io(self.store.due, ep.endpoint_id, limit + len(busy)):
                        if d.id not in busy and len(inflight) < limit:
                            inflight[asyncio.create_task(self._send(w.client, ep, d))] = d
                if not inflight:
                    w.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(w.wake.wait(), 1.0)
                    continue
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                finished = [(t, inflight.pop(t)) for t in [t for t in inflight if t.done()]]
                done = [d.id for t, d in finished if t.result() is None]
                failed = [(d, str(t.result())) for t, d in finished if t.result() is not None]
                pause = None
                try:
                    failures = await self._io(
                        self.store.settle, ep.endpoint_id, done, [(d.id, e) for d, e in failed]
                    )
                    if failed:
                        oldest = min(d.enqueued for d, _ in failed)
                        last = failed[0][1]
                        if failures >= s.pause_after:
                            pause = f"{failures} consecutive failed attempts (last: {last})"
                        elif time.time() - oldest > s.max_age_s:
                            pause = f"undelivered for over {s.max_age_s:.0f} s (last: {last})"
                        if pause is not None:
                            await self._io(self.store.pause, ep.endpoint_id, pause)
                except StateError as exc:
                    log.warning("webhooks: %s; retrying", exc)
                    await asyncio.sleep(1.0)
                    continue
                if pause is not None:
                    log.warning("webhook %s (%s) paused: %s", ep.endpoint_id, ep.url, pause)
                    self.metrics.webhook_paused.labels(ep.endpoint_id).inc()
                    return
                if failed:
                    await asyncio.sleep(s.backoff(failures))
        finally:
            for t in inflight:
                t.cancel()

    async def _send(self, client: httpx.AsyncClient, ep: Endpoint, d: Delivery) -> str | None:
        """One POST; None on a 2xx, else what failed (its status class is counted)."""
        try:
            r = await client.post(ep.url, content=d.payload, headers=headers_for(ep, d))
        except httpx.TimeoutException:
            err, cls = "timeout", "timeout"
        except httpx.HTTPError as exc:
            err, cls = f"{type(exc).__name__}: {exc}"[:200], "connection"
        else:
            if 200 <= r.status_code < 300:
                self.metrics.webhook_latency.observe(max(0.0, time.time() - d.enqueued))
                self.metrics.webhook_delivered.labels(ep.endpoint_id).inc()
                self.metrics.totals["webhooks_delivered"] += 1
                return None
            err, cls = f"HTTP {r.status_code}", f"{r.status_code // 100}xx"
        self.metrics.webhook_failures.labels(ep.endpoint_id, cls).inc()
        self.metrics.totals["webhooks_failed"] += 1
        return err


__all__ = [
    "EVENT_TYPES",
    "Delivery",
    "Endpoint",
    "WebhookDispatcher",
    "WebhookQueue",
    "WebhookSettings",
    "WebhookStore",
    "classify",
    "headers_for",
    "new_secret",
    "sign",
    "verify",
]
