"""The HTTP API's durable tables in the daemon's SQLite state file (schema 4, created by
engine/stores/sqlite_store.py's migration): store changes made live, and API tokens.

``api_stores(store_id, merchant_id, feature, seq, changed)``: the newest change of each store
made through the API, ``feature`` the store's GeoJSON Feature as ``to_feature`` writes it, or
NULL when the store was deleted; ``seq`` numbers changes in the order they were made (a reload
catches up with the changes made while it loaded: those after the ``seq`` it read). At start-up (and on reload) the catalog file is loaded and these rows
are laid over it (engine/api/live.py ``overlay``): the file is the baseline, the state holds what
was changed live.

``api_tokens``: one row per token, holding the SHA-256 of its secret (never the secret; a
token is 256 random bits, so a plain hash is enough), its role (``operator`` or ``merchant``),
the merchant it is scoped to, and when it was revoked.

The daemon's SQLiteStore owns its own connection; this class opens another one on the same file
(WAL: readers and a short writer transaction do not disturb it), which also serves ``geopush
tokens`` run beside a live daemon: a token created or revoked there is seen at the next request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.api.errors import InvalidRequest, NotFound
from engine.errors import ConfigError, StateError

Role = Literal["operator", "merchant"]
ROLES: tuple[Role, ...] = ("operator", "merchant")
TOKEN_PREFIX = "gp_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an operator (sees everything) or a merchant (its own stores only)."""

    token_id: str
    role: Role
    merchant_id: str | None = None
    name: str = ""

    @property
    def scope(self) -> str | None:
        """The merchant this caller is limited to; None for an operator."""
        return self.merchant_id if self.role == "merchant" else None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    role: Role
    merchant_id: str | None
    name: str
    created: float
    revoked: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "role": self.role,
            "merchant_id": self.merchant_id,
            "name": self.name,
            "created": self.created,
            "revoked": self.revoked,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenInfo:
        """The inverse of ``to_dict`` (extra keys, such as a stored hash, are ignored)."""
        return cls(
            d["token_id"], d["role"], d["merchant_id"], d["name"], d["created"], d["revoked"]
        )


@dataclass(frozen=True, slots=True)
class StoreChange:
    """The newest live change of one store: its Feature, or None when it was deleted."""

    store_id: str
    merchant_id: str
    feature: dict[str, Any] | None
    seq: int = 0  # set when read from the state file


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_token(role: str, merchant_id: str | None, name: str) -> tuple[TokenInfo, str]:
    """A new token's info and secret, checked (both API state backends keep only its hash)."""
    if role not in ROLES:
        raise InvalidRequest(f"role {role!r} is unknown; use 'operator' or 'merchant'")
    if role == "merchant" and not (merchant_id and merchant_id.strip()):
        raise InvalidRequest("a merchant token needs the merchant_id it is limited to")
    if role == "operator" and merchant_id:
        raise InvalidRequest("an operator token sees every merchant: give no merchant_id")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    info = TokenInfo(
        token_id="tok_" + secrets.token_hex(8),
        role=role,  # type: ignore[arg-type,unused-ignore]
        merchant_id=merchant_id.strip() if merchant_id else None,
        name=name,
        created=token_time(),
        revoked=None,
    )
    return info, secret


def token_time() -> float:
    """The timestamp a token's ``created`` / ``revoked`` holds: now, to the millisecond."""
    return round(time.time(), 3)


def live_token(stored_sha256: object, digest: str, revoked: object) -> bool:
    """Whether a stored token row answers the presented secret's ``digest`` (compared in
    constant time) and is not revoked."""
    return hmac.compare_digest(str(stored_sha256), digest) and revoked is None


def no_token(token_id: str) -> NotFound:
    return NotFound(f"no token {token_id!r}; `geopush tokens list` shows the token ids")


def _sqlite_path(state: str | Path) -> Path:
    text = str(state)
    if text.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "ApiState keeps the API's stores and tokens in a SQLite --state file; for a Redis "
            "state (--group) use engine.api.redis_state.open_api_state"
        )
    return Path(text)


@contextlib.contextmanager
def _sql(path: Path) -> Iterator[None]:
    """The one place sqlite3 errors become StateError."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StateError(f"state file {path}: {exc}") from exc


class ApiState:
    """The API's tables on their own connection. Creates (or migrates) the state file if needed."""

    # How long a write waits for another writer (the engine's batch commit, `geopush tokens` in
    # another process: a few ms); past this it is a 503.
    BUSY_TIMEOUT_MS = 250

    def __init__(self, state: str | Path) -> None:
        self.path = _sqlite_path(state)
        if not self._has_tables():
            # A new file, or one of an older schema: the state store creates or migrates it.
            from engine.stores.sqlite_store import SQLiteStore

            SQLiteStore(self.path).close()
        with _sql(self.path):
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(self.BUSY_TIMEOUT_MS)}")
            # as the daemon's own connection (WAL, engine/stores/sqlite_store.py): a commit is
            # in the WAL when it returns (survives a killed process) but does not fsync there,
            # which would hold the event loop ~1 ms a write
            self._db.execute("PRAGMA synchronous=NORMAL")
            # nor checkpoint the WAL inside a write (SQLite's automatic checkpoint: the whole WAL
            # the engine wrote, ms to tens of ms on the loop): the daemon's checkpointer does
            self._db.execute("PRAGMA wal_autocheckpoint=0")

    def _has_tables(self) -> bool:
        if not self.path.exists():
            return False
        with _sql(self.path), contextlib.closing(sqlite3.connect(str(self.path))) as db:
            rows = db.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('api_stores', 'api_tokens')"
            ).fetchone()
        return bool(rows and rows[0] == 2)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        with _sql(self.path):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- stores ----------------------------------------------------------------------------------

    def store_changes(self, after: int = 0) -> list[StoreChange]:
        """The persisted changes numbered after ``after``, in order."""
        with _sql(self.path):
            rows = self._db.execute(_CHANGES, (after,)).fetchall()
        return [_change(r) for r in rows]

    def record(self, changes: Sequence[StoreChange]) -> None:
        """Persist these changes in one transaction (the newest change of a store wins)."""
        now = time.time()
        with self._tx() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM api_stores").fetchone()
            db.executemany(
                "INSERT INTO api_stores (store_id, merchant_id, feature, seq, changed)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (store_id) DO UPDATE SET merchant_id = excluded.merchant_id,"
                " feature = excluded.feature, seq = excluded.seq, changed = excluded.changed",
                [
                    (
                        c.store_id,
                        c.merchant_id,
                        None if c.feature is None else json.dumps(c.feature, separators=(",", ":")),
                        int(last) + i + 1,
                        now,
                    )
                    for i, c in enumerate(changes)
                ],
            )

    # --- tokens ----------------------------------------------------------------------------------

    def create_token(
        self, role: str, merchant_id: str | None = None, name: str = ""
    ) -> tuple[TokenInfo, str]:
        """A new token: its info and its secret (shown once; only its hash is kept)."""
        info, secret = new_token(role, merchant_id, name)
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_tokens (token_id, sha256, role, merchant_id, name, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (info.token_id, hash_token(secret), info.role, info.merchant_id, name, info.created),
            )
        return info, secret

    def list_tokens(self) -> list[TokenInfo]:
        with _sql(self.path):
            rows = self._db.execute(
                "SELECT token_id, role, merchant_id, name, created, revoked FROM api_tokens"
                " ORDER BY created, token_id"
            ).fetchall()
        return [TokenInfo(*r) for r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token (revoking a revoked one changes nothing); its info."""
        with self._tx() as db:
            db.execute(
                "UPDATE api_tokens SET revoked = ? WHERE token_id = ? AND revoked IS NULL",
                (token_time(), token_id),
            )
            row = db.execute(
                "SELECT token_id, role, merchant_id, name, created, revoked FROM api_tokens"
                " WHERE token_id = ?",
                (token_id,),
            ).fetchone()
        if row is None:
            raise no_token(token_id)
        return TokenInfo(*row)

    def authenticate(self, secret: str) -> Principal | None:
        """The principal of a live token, None for an unknown or revoked one."""
        digest = hash_token(secret)
        with _sql(self.path):
            row = self._db.execute(
                "SELECT token_id, sha256, role, merchant_id, name, revoked FROM api_tokens"
                " WHERE sha256 = ?",
                (digest,),
            ).fetchone()
        if row is None or not live_token(row[1], digest, row[5]):
            return None
        return Principal(token_id=row[0], role=row[2], merchant_id=row[3], name=row[4])


_CHANGES = (
    "SELECT store_id, merchant_id, feature, seq FROM api_stores WHERE seq > ? ORDER BY seq"
)


def _change(row: tuple[Any, ...]) -> StoreChange:
    return StoreChange(row[0], row[1], None if row[2] is None else json.loads(row[2]), int(row[3]))


def read_store_changes(state: str | Path, after: int = 0) -> list[StoreChange]:
    """The persisted store changes of a state file numbered after ``after``, in order (reads
    only); none when the file does not exist or predates the API's tables. A Redis state (a
    worker group) is read from Redis (engine/api/redis_state.py)."""
    text = str(state)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from engine.api.redis_state import RedisApiState

        rs = RedisApiState(text)
        try:
            return rs.store_changes(after)
        finally:
            rs.close()
    path = Path(text)
    if not path.exists():
        return []
    with _sql(path), contextlib.closing(sqlite3.connect(str(path))) as db:
        has = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'api_stores'").fetchone()
        if not has:
            return []
        rows = db.execute(_CHANGES, (after,)).fetchall()
    return [_change(r) for r in rows]


__all__ = [
    "ApiState",
    "Principal",
    "ROLES",
    "Role",
    "StoreChange",
    "TokenInfo",
    "hash_token",
    "read_store_changes",
]
