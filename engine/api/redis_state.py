"""The HTTP API's store changes and tokens in Redis, for a worker group (``--group``, ``--state
redis://...``): ``RedisApiState`` has ``ApiState``'s interface (engine/api/state.py), and
``ChangeFollower`` applies every change made through any worker's API to this worker's live
fence index.

Keys (``P`` the prefix, ``gp`` as the Redis state store's):

=======================  ==========================================================================
``P:api:seq``            the number of the last store change (INCR)
``P:api:stores``         hash store_id -> ``[seq, merchant_id, feature JSON or ""]``: each changed
                         store's newest change ("" = deleted); what a worker lays over the catalog
                         file at start-up and on reload, as the SQLite ``api_stores`` table
``P:api:changes``        stream of every change, entry id ``<seq>-0``, fields ``s`` (store_id),
                         ``m`` (merchant_id), ``f`` (feature JSON or ""); trimmed to about
                         ``STREAM_LEN`` entries (a worker further behind reads the hash instead)
``P:api:tokens``         hash token_id -> JSON of the token's info and the SHA-256 of its secret
``P:api:tokhash``        hash SHA-256 -> token_id
=======================  ==========================================================================

A change is recorded in one Lua script (numbered, kept in the hash, appended to the stream), so
the stream's sequence numbers have no gaps and match the hash. Every worker follows the stream
(``XREAD BLOCK``) from the number it last applied and applies the changes in that order to its
own index, its own changes too (they are then unchanged and skipped): so every worker ends at
the order Redis recorded, whichever worker's API took each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.exceptions import RedisError

from engine.api.state import (
    ApiState,
    Principal,
    StoreChange,
    TokenInfo,
    hash_token,
    live_token,
    new_token,
    no_token,
    token_time,
)
from engine.errors import StateError

if TYPE_CHECKING:
    from engine.api.live import FenceTarget

log = logging.getLogger("geopush.api")

PREFIX = "gp"
STREAM_LEN = 100_000  # about this many changes kept in the stream (XADD MAXLEN ~)

# KEYS: seq, stores hash, changes stream. ARGV: now, stream length, then per change store_id,
# merchant_id, feature JSON ("" = deleted). Returns the last number given.
_RECORD_LUA = """
local seq = 0
for i = 3, #ARGV, 3 do
  local sid, mid, f = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  seq = redis.call('INCR', KEYS[1])
  redis.call('HSET', KEYS[2], sid, cjson.encode({seq, mid, f}))
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], seq .. '-0', 's', sid, 'm', mid, 'f', f)
end
return seq
"""

# KEYS: by-hash, tokens. ARGV: sha256. The token's JSON, or false.
_AUTH_LUA = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[2], id)
"""


def is_redis_url(state: object) -> bool:
    return str(state).startswith(("redis://", "rediss://", "unix://"))


def _feature(text: bytes | str) -> dict[str, Any] | None:
    return json.loads(text) if text else None


class RedisApiState(ApiState):
    """``ApiState`` over Redis: the same methods, shared by every worker of a group.

    A subclass only so the routers and ``LiveStores`` take either; it shares none of the SQLite
    implementation."""

    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:  # noqa: D107
        from engine.stores.redis_store import connect

        self.path = url  # type: ignore[assignment]  # for messages only
        self.url = url
        self.r = connect(url, reconnect_s=2.0)
        self._call("PING", self.r.ping)
        self.k_seq = f"{prefix}:api:seq"
        self.k_stores = f"{prefix}:api:stores"
        self.k_changes = f"{prefix}:api:changes"
        self.k_tokens = f"{prefix}:api:tokens"
        self.k_tokhash = f"{prefix}:api:tokhash"
        self._record = self.r.register_script(_RECORD_LUA)
        self._auth = self.r.register_script(_AUTH_LUA)

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except RedisError as exc:
            raise StateError(f"redis {what} at {_safe(self.url)} failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(RedisError):
            self.r.close()

    # --- stores ----------------------------------------------------------------------------------

    def store_changes(self, after: int = 0) -> list[StoreChange]:
        raw: dict[bytes, bytes] = self._call("HGETALL", self.r.hgetall, self.k_stores)
        out = []
        for sid, value in raw.items():
            seq, mid, f = json.loads(value)
            if int(seq) > after:
                out.append(StoreChange(sid.decode(), mid, _feature(f), int(seq)))
        out.sort(key=lambda c: c.seq)
        return out

    def record(self, changes: Sequence[StoreChange]) -> None:
        if not changes:
            return
        args: list[Any] = [time.time(), STREAM_LEN]
        for c in changes:
            f = "" if c.feature is None else json.dumps(c.feature, separators=(",", ":"))
            args += [c.store_id, c.merchant_id, f]
        self._call(
            "record", self._record, keys=[self.k_seq, self.k_stores, self.k_changes], args=args
        )

    def last_seq(self) -> int:
        return int(self._call("GET", self.r.get, self.k_seq) or 0)

    # --- tokens ----------------------------------------------------------------------------------

    def create_token(
        self, role: str, merchant_id: str | None = None, name: str = ""
    ) -> tuple[TokenInfo, str]:
        info, secret = new_token(role, merchant_id, name)
        digest = hash_token(secret)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k_tokens, info.token_id, json.dumps({**info.to_dict(), "sha256": digest}))
        pipe.hset(self.k_tokhash, digest, info.token_id)
        self._call("token create", pipe.execute)
        return info, secret

    def list_tokens(self) -> list[TokenInfo]:
        raw: dict[bytes, bytes] = self._call("HGETALL", self.r.hgetall, self.k_tokens)
        infos = [TokenInfo.from_dict(json.loads(v)) for v in raw.values()]
        return sorted(infos, key=lambda t: (t.created, t.token_id))

    def revoke(self, token_id: str) -> TokenInfo:
        raw = self._call("HGET", self.r.hget, self.k_tokens, token_id)
        if raw is None:
            raise no_token(token_id)
        d = json.loads(raw)
        if d.get("revoked") is None:
            d["revoked"] = token_time()
            self._call("HSET", self.r.hset, self.k_tokens, token_id, json.dumps(d))
        return TokenInfo.from_dict(d)

    def authenticate(self, secret: str) -> Principal | None:
        digest = hash_token(secret)
        raw = self._call("auth", self._auth, keys=[self.k_tokhash, self.k_tokens], args=[digest])
        if raw is None:
            return None
        d = json.loads(raw)
        if not live_token(d.get("sha256", ""), digest, d.get("revoked")):
            return None
        return Principal(token_id=d["token_id"], role=d["role"], merchant_id=d["merchant_id"],
                         name=d["name"])  # fmt: skip


def _safe(url: str) -> str:
    """The URL without its credentials (for messages)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path}"


def open_api_state(state: object) -> ApiState:
    """The API's state: the SQLite file, or Redis for a worker group."""
    text = str(state)
    return RedisApiState(text) if is_redis_url(text) else ApiState(text)


class ChangeFollower:
    """Applies the store changes made through any worker's API to this worker's live index.

    ``run`` follows the stream from ``after`` (the last change laid over the index at load) and
    applies each batch it reads on the event loop, between two micro-batches (the same
    ``overlay`` as at start-up: ``FenceIndex.add``/``remove``, removals told to the core). A
    change equal to the live store (this worker's own, applied by its API already) is skipped.
    When the stream was trimmed past ``after`` (a worker down for more than ~``STREAM_LEN``
    changes) it catches up from the hash, which holds every store's newest change."""

    BLOCK_MS = 1000

    def __init__(
        self, url: str, target: FenceTarget, after: int = 0, *, prefix: str = PREFIX
    ) -> None:
        self.url = url
        self.target = target
        self.applied = after
        self.prefix = prefix
        self.k_changes = f"{prefix}:api:changes"
        self.applied_changes = 0  # counters for tests and the status
        self.errors = 0
        self._stopping = False

    def catch_up(self, changes: Sequence[StoreChange]) -> None:
        """Apply ``changes`` (in sequence order) to the live index."""
        from engine.api.follow import apply_store_changes

        fresh = [c for c in changes if c.seq > self.applied]
        if not fresh:
            return
        done = apply_store_changes(self.target, fresh, log)
        self.applied = max(c.seq for c in fresh)
        self.applied_changes += done

    def stop(self) -> None:
        """End the current ``run`` after the read in progress (at most ``BLOCK_MS``), cancelled or
        not."""
        self._stopping = True

    async def run(self) -> None:
        """Follow until ``stop`` or cancellation. A cancellation that redis-py turns into a
        connection or timeout error while a blocking XREAD is cut short is re-raised, not
        retried (a test's stop hung for ever on it under load), and ``stop`` ends the loop even
        then."""
        self._stopping = False
        client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2.0)
        try:
            while not self._stopping:
                try:
                    await self._follow(client)
                except (RedisError, OSError) as exc:
                    if _cancelling():
                        raise asyncio.CancelledError() from exc
                    self.errors += 1
                    log.warning("following the API's store changes in Redis: %s; retrying", exc)
                    await asyncio.sleep(1.0)
                except Exception:  # a bug must not stop the worker: logged, retried
                    self.errors += 1
                    log.exception("applying the API's store changes from Redis failed; retrying")
                    await asyncio.sleep(1.0)
        finally:
            # bounded: redis-py's aclose can wait for ever on a connection whose blocking XREAD
            # was cancelled (redis/redis-py#3941); a test saw the follower's stop hang
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), timeout=2.0)

    async def _follow(self, client: redis.asyncio.Redis) -> None:
        while not self._stopping:
            reply: Any = await client.xread(
                {self.k_changes: f"{self.applied}-0"}, count=1000, block=self.BLOCK_MS
            )
            if not reply:
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
            first = int(entries[0][0].split(b"-")[0])
            if first > self.applied + 1:  # trimmed past us: the hash has every store's newest
                state = RedisApiState(self.url, prefix=self.prefix)
                try:
                    changes = await asyncio.to_thread(state.store_changes, self.applied)
                finally:
                    state.close()
                self.catch_up(changes)
                continue
            self.catch_up([
                StoreChange(
                    f[b"s"].decode(), f[b"m"].decode(), _feature(f[b"f"]), int(eid.split(b"-")[0])
                )
                for eid, f in entries
            ])  # fmt: skip


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


__all__ = [
    "ChangeFollower",
    "RedisApiState",
    "STREAM_LEN",
    "is_redis_url",
    "open_api_state",
]
