"""``engine.state.StateStore`` on Redis: shared state for several engine workers (scale-out).

Every worker keeps nothing between micro-batches: it loads the batch's users in ONE round trip
(``MGET``), runs the core on them, and commits in ONE round trip: a Lua script that
compare-and-sets each touched user's version, takes the coupons the batch used (never below
zero), records push ids and input digests, and appends the batch's outbox rows as one stream
entry. If another worker moved one of the users, or a campaign ran out of coupons, or a push id
was already decided, the script applies NOTHING and says why (``CommitConflict``);
``commit_batch`` (the daemon) or ``run_batch`` then re-runs the core on the batch from fresh
state, re-arming the visit timers the failed attempt consumed. So a batch is all or nothing, every user's record is changed by one
worker at a time in a serial order, and with the core's out-of-order guard (``UserState.last_ts``)
an older event never changes a user after a newer one was applied, whichever worker sees it.

Key layout (``P`` is the prefix, ``gp`` by default; ``{...}`` is a Redis Cluster hash tag):

==============================  =================================================================
``P:{<user>}:u``                user record: ``b"<version>|" + msgpack(UserState)`` (the body
                                is encoded with version 0: the prefix is the version)
``P:{<user>}:p:<push_id>``      push decided (value ``1``), expires after ``push_ttl_s``
``P:inv:{<campaign_id>}``       coupons left (integer); created at ``total`` on first use
``P:in:{<digest hex>}``         input message committed (redelivery guard), ``input_ttl_s``
``P:out:{<worker>}``            the worker's outbox stream: one entry per commit, field ``r`` =
                                msgpack [[out_id, topic, payload], ...]; deleted once every row
                                of it is published (``mark_sent``) and the worker's webhook
                                dispatcher has enqueued it (``webhooks_passed``)
``P:tok:{<worker>}``            token of the worker's last applied commit (idempotent retries)
``P:meta:{<worker>}``           hash: the worker's ``meta`` values (the core's watermark)
``P:shared:<key>``              a group-wide setting made on first start (``coupon_secret``)
``P:holders``                   set: the workers holding events back (see "Holds" below)
``P:h:{<worker>}``              hash: user -> oldest event time the worker holds unapplied
==============================  =================================================================

Holds (per-user order across workers): the shared subscription hands a user's messages to the
workers in turn, so when the workers fall behind together (a Redis outage: every worker stalls,
the broker keeps handing out the stream, and the workers come back at different moments of their
retry backoff) one worker's backlog holds a user's older fixes and another's the newer ones.
Applied as they come, the newer one wins and the older one is dropped as out of order (the core's
``last_ts`` guard): wrong enters, exits and pushes. So a worker that saw Redis fail registers its
backlog: ``P:h:{<worker>}`` maps each user it holds unapplied events of to the oldest one's time
(the worker joins the ``P:holders`` set; the hash lapses after ``HOLD_TTL_S`` without a commit of
that worker). The commit script refuses (``HeldBack``, nothing applied) a batch that applies an
event of a user newer than an event another worker holds of that user; the daemon then applies
its inbox only up to the first such message (``GroupHolds.cut``, engine/daemon/holds.py). While
anyone holds, every worker keeps its own holds current with each commit; they go when the
backlogs are applied.

Round trips: ``users`` 1 (plus coupon counters near exhaustion in the same ``MGET``),
``seen_inputs`` 1, ``commit`` 1, ``mark_sent`` 1; a conflict costs one reload and one commit
more. ``stats.round_trips`` counts them.

Durability: an acknowledged commit is as durable as Redis makes it: run Redis with
``appendonly yes`` and ``appendfsync always`` so a commit is on disk before the script returns
(``everysec`` may lose the last second on a power cut or a ``kill -9`` of Redis).

The commit script reads and writes keys of many users, so it needs all keys on one Redis primary
(standalone or Sentinel-replicated). The hash tags make the layout Cluster-ready, but Redis
Cluster is not supported as such: shard users across independent primaries, one worker group per
shard (see docs/operations.md, "Scaling out").
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import msgspec

from engine.errors import ConfigError, StateError
from engine.state import Output, UserState, decode_user, encode_user
from engine.stores.sqlite_store import SQLiteStore

_MSGPACK = msgspec.msgpack.Encoder()
_ROWS = msgspec.msgpack.Decoder(list[tuple[str, str, bytes]])

if TYPE_CHECKING:
    import redis

    from engine.daemon.config import Settings

E = TypeVar("E")

_LOW = 100  # coupons left below which a counter is re-read with every batch
DEFAULT_PUSH_TTL_S = 90 * 86400  # push ids outlive any redelivery or replay window
DEFAULT_INPUT_TTL_S = 7 * 86400  # a broker keeps an offline session's messages for days at most
HOLD_TTL_S = 30  # a worker's holds lapse unless it commits again (it died holding)


class Row(Protocol):
    """An outbox row (``engine.stores.sqlite_store.OutRow`` is one)."""

    @property
    def out_id(self) -> str: ...

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class RedisRow:
    """An outbox row read back from Redis (same fields as the SQLite store's ``OutRow``)."""

    out_id: str
    topic: str
    payload: bytes


Renderer = Callable[[Output], Row]


def default_render(out: Output) -> Row:
    """Outbox row for an output without topic routing (tests, tools): JSON payload, no topic."""
    from engine.outputs import encode_output, out_id

    return RedisRow(out_id(out), "", encode_output(out))


class BatchCoupons:
    """The coupon and push-id answers both Redis stores give during a batch: ``_left`` (what
    the store still believes is left) less what this batch has ``_taken``; a push is seen when
    this batch wrote it (``_new_push``) or an earlier one did (``_seen``)."""

    _taken: dict[str, int]
    _new_push: dict[str, str]
    _seen: OrderedDict[str, None]

    def _left(self, campaign_id: str, total: int) -> int:
        raise NotImplementedError

    def inventory_left(self, campaign_id: str, total: int | None) -> int | None:
        if total is None:
            return None
        return self._left(campaign_id, total)

    def take_coupon(self, campaign_id: str, total: int | None) -> bool:
        if total is None:
            return True
        if self._left(campaign_id, total) <= 0:
            return False
        self._taken[campaign_id] = self._taken.get(campaign_id, 0) + 1
        return True

    def seen_push(self, push_id: str) -> bool:
        return push_id in self._new_push or push_id in self._seen


class CommitConflict(StateError):
    """The commit applied nothing: re-run the batch from fresh state (``run_batch`` does)."""

    def __init__(self, users: list[str], short: list[str], push_ids: list[str]) -> None:
        parts = []
        if users:
            parts.append(f"users moved by another worker: {', '.join(users[:5])}")
        if short:
            parts.append(f"campaigns out of coupons: {', '.join(short[:5])}")
        if push_ids:
            parts.append(f"push ids already decided: {', '.join(push_ids[:5])}")
        super().__init__("commit conflict (" + "; ".join(parts) + ")")
        self.users = users
        self.short = short
        self.push_ids = push_ids
        self.touched: list[str] = []  # every user the failed attempt touched


class HeldBack(StateError):
    """The commit applied nothing: another worker holds an older event of these users (see
    "Holds" in the module doc). Process the users' events later, after that worker's commit."""

    def __init__(self, users: list[str]) -> None:
        super().__init__(f"older events held by another worker: {', '.join(users[:5])}")
        self.users = users
        self.touched: list[str] = []


# KEYS: users (nu), inventory counters (nc), push ids (np), input digests (ni), token, outbox,
# meta. ARGV[1]: msgpack array {nu, nc, np, ni, push_ttl, input_ttl, token, nm, then per user
# expected version and blob ("" = unchanged, check only), per campaign total and taken, per meta
# entry field and value}; ARGV[2]: the batch's outbox rows, one opaque msgpack blob ("" = none).
# One msgpack argument instead of thousands: redis-py packs it in C, Lua unpacks it in C.
# Then: per user the newest event time of the batch for that user (-1: no event, no order
# check), the worker's own holds (count, -1 = unchanged, then user and time pairs), the worker's
# name and the key prefix. KEYS end with the holders set and the worker's own holds hash.
# Reply: {1, outbox entry id or false, counters after, other holders} | {0, bad user idx,
# counters now, bad push idx} | {2} (this token was applied already: a retried call) | {3, idx of
# users another worker holds an older event of} (see "Holds" in the module doc).
_COMMIT_LUA = """
local A = cmsgpack.unpack(ARGV[1])
local nu, nc, np, ni = A[1], A[2], A[3], A[4]
local pttl, ittl, token, nm = A[5], A[6], A[7], A[8]
local ktok = KEYS[nu + nc + np + ni + 1]
if redis.call('GET', ktok) == token then return {2} end
local a = 9
local b = a + 2 * nu
local d = b + 2 * nc
local e = d + 2 * A[8]
local nh = A[e + nu]
local f = e + nu + 1 + 2 * math.max(nh, 0)
local me, pfx = A[f], A[f + 1]
local kheld = KEYS[nu + nc + np + ni + 4]
local kmine = KEYS[nu + nc + np + ni + 5]
if redis.call('SCARD', kheld) > 0 then
  local others = {}
  for _, x in ipairs(redis.call('SMEMBERS', kheld)) do
    if x ~= me then others[#others + 1] = pfx .. ':h:{' .. x .. '}' end
  end
  local held = {}
  for i = 1, nu do
    local c = A[e + i - 1]
    if c >= 0 and #others > 0 then
      local u = string.sub(KEYS[i], #pfx + 3, -4)
      for _, hk in ipairs(others) do
        local v = redis.call('HGET', hk, u)
        if v and tonumber(v) < c then
          held[#held + 1] = i
          break
        end
      end
    end
  end
  if #held > 0 then return {3, held} end
end
local bad_u, bad_p, inv = {}, {}, {}
local short = false
for i = 1, nu do
  local cur = redis.call('GET', KEYS[i])
  local v = 0
  if cur then v = tonumber(string.match(cur, '^(%d+)|')) end
  if v ~= A[a + 2 * i - 2] then bad_u[#bad_u + 1] = i end
end
for j = 1, nc do
  local cur = redis.call('GET', KEYS[nu + j])
  local left = A[b + 2 * j - 2]
  if cur then left = tonumber(cur) end
  inv[j] = left
  if left < A[b + 2 * j - 1] then short = true end
end
local k0 = nu + nc
for p = 1, np do
  if redis.call('EXISTS', KEYS[k0 + p]) == 1 then bad_p[#bad_p + 1] = p end
end
if #bad_u > 0 or short or #bad_p > 0 then return {0, bad_u, inv, bad_p} end
for i = 1, nu do
  local blob = A[a + 2 * i - 1]
  if blob ~= '' then redis.call('SET', KEYS[i], blob) end
end
for j = 1, nc do
  inv[j] = inv[j] - A[b + 2 * j - 1]
  redis.call('SET', KEYS[nu + j], inv[j])
end
for p = 1, np do
  if pttl > 0 then redis.call('SET', KEYS[k0 + p], 1, 'EX', pttl)
  else redis.call('SET', KEYS[k0 + p], 1) end
end
local k1 = k0 + np
for q = 1, ni do redis.call('SET', KEYS[k1 + q], 1, 'EX', ittl) end
redis.call('SET', ktok, token)
local id = false
if ARGV[2] ~= '' then id = redis.call('XADD', KEYS[k1 + ni + 2], '*', 'r', ARGV[2]) end
for m = 1, nm do
  redis.call('HSET', KEYS[k1 + ni + 3], A[d + 2 * m - 2], A[d + 2 * m - 1])
end
if nh >= 0 then
  redis.call('DEL', kmine)
  for h = 1, nh do redis.call('HSET', kmine, A[e + nu + 2 * h - 1], A[e + nu + 2 * h]) end
  if nh > 0 then
    redis.call('SADD', kheld, me)
    redis.call('EXPIRE', kmine, A[f + 2])
  else
    redis.call('SREM', kheld, me)
  end
end
return {1, id, inv, redis.call('SCARD', kheld) - redis.call('SISMEMBER', kheld, me)}
"""

# KEYS: holders set, the worker's holds hash; ARGV: worker, hold TTL, then user and time pairs
# (none: the worker holds nothing). Reply: how many other workers hold events.
_SET_HOLDS_LUA = """
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
if #ARGV > 2 then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
else
  redis.call('SREM', KEYS[1], ARGV[1])
end
return redis.call('SCARD', KEYS[1]) - redis.call('SISMEMBER', KEYS[1], ARGV[1])
"""

# KEYS: holders set; ARGV: worker, prefix, users. Reply: per user the oldest event time another
# worker holds (a string), or false.
_OTHERS_HOLDS_LUA = """
local out = {}
for j = 3, #ARGV do out[j - 2] = false end
for _, x in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if x ~= ARGV[1] then
    local k = ARGV[2] .. ':h:{' .. x .. '}'
    for j = 1, #ARGV - 2 do
      local v = redis.call('HGET', k, ARGV[j + 2])
      if v and (not out[j] or tonumber(v) < tonumber(out[j])) then out[j] = v end
    end
  end
end
return out
"""


@dataclass
class RedisStats:
    """Counters a benchmark or the metrics endpoint reads."""

    round_trips: int = 0
    commits: int = 0
    conflicts: int = 0
    events: int = 0
    batches: int = 0

    def per_event(self) -> float:
        return self.round_trips / self.events if self.events else 0.0


def _redis_error() -> type[Exception]:
    """redis-py's RedisError, imported when an ``except`` clause needs it: redis-py is imported
    only by a process that uses Redis (a daemon on SQLite starts ~0.1 s sooner without it)."""
    from redis.exceptions import RedisError

    return RedisError


@functools.cache
def _noting_retry() -> type[Any]:
    from redis.retry import Retry

    class _NotingRetry(Retry):
        """redis-py's retry, counting the failures it retried: the store tells from the count
        that Redis went away meanwhile (``RedisStore.outages``). Connections share this one
        object (redis-py deep-copies a client's retry into every connection)."""

        failures = 0

        def __deepcopy__(self, memo: dict[int, Any]) -> _NotingRetry:
            return self

        def call_with_retry(self, do: Any, fail: Any, *args: Any, **kw: Any) -> Any:
            def noted(*a: Any) -> Any:
                self.failures += 1
                return fail(*a)

            return super().call_with_retry(do, noted, *args, **kw)

    return _NotingRetry


def connect(url: str, *, reconnect_s: float = 30.0) -> redis.Redis:
    """A client for ``redis://HOST:PORT/DB`` (or ``rediss://``, ``unix://``) that reconnects.

    Commands are retried with exponential backoff (10 ms to 0.5 s) for about ``reconnect_s`` when
    the connection drops or Redis is still loading its AOF after a restart. The first PING fails
    fast with a ``StateError`` that names the URL.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"--state {url!r}: a Redis URL looks like redis://HOST:PORT/DB")
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    retries = max(1, int(reconnect_s / 0.5) + 6)
    try:
        client = redis.Redis.from_url(
            url,
            retry=_noting_retry()(ExponentialBackoff(cap=0.5, base=0.01), retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError(f"--state {url!r}: {exc}") from exc
    return client


class RedisStore(BatchCoupons):
    """StateStore shared by several workers through one Redis primary (see module doc)."""

    in_memory = False  # records are loaded per batch and may change under other workers

    def __init__(
        self,
        client: redis.Redis,
        *,
        worker: str = "w0",
        prefix: str = "gp",
        render: Renderer | None = None,
        push_ttl_s: int = DEFAULT_PUSH_TTL_S,
        input_ttl_s: int = DEFAULT_INPUT_TTL_S,
        max_attempts: int = 100,
        seen_cache: int = 100_000,
    ) -> None:
        self.r = client
        self.worker = worker
        self.prefix = prefix
        self.render: Renderer = render or default_render
        self.push_ttl_s = push_ttl_s
        self.input_ttl_s = input_ttl_s
        self.max_attempts = max_attempts
        self.seen_cache = seen_cache
        self.stats = RedisStats()
        self._script = client.register_script(_COMMIT_LUA)
        self._set_holds = client.register_script(_SET_HOLDS_LUA)
        self._others_holds = client.register_script(_OTHERS_HOLDS_LUA)
        self._holders_key = f"{prefix}:holders"
        self._holds_key = f"{prefix}:h:{{{worker}}}"
        # Holds (module doc): this worker's registered holds; to replace them with the next
        # commit, set ``next_holds``; whether another worker held events at the last look.
        self.holds: dict[str, float] = {}
        self.next_holds: dict[str, float] | None = None
        self.others_holding = False
        self._outbox_key = f"{prefix}:out:{{{worker}}}"
        self._token_key = f"{prefix}:tok:{{{worker}}}"
        self._meta_key = f"{prefix}:meta:{{{worker}}}"
        # Per batch: raw records as loaded (None = absent) and their versions; touched records.
        self._raw: dict[str, bytes | None] = {}
        self._touched: dict[str, UserState] = {}
        self._inv_fresh = False
        # Per attempt: coupons taken, campaigns used (with their totals), push ids decided.
        self._taken: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        self._new_push: dict[str, str] = {}  # push_id -> key
        # Across batches: last known counters (refreshed with every batch's MGET), push ids known
        # committed (a bounded cache; the commit script is the authority), outbox stream ids.
        self._inv_est: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._stream_ids: dict[str, bytes] = {}  # out_id -> outbox entry
        self._entry_rows: dict[bytes, set[str]] = {}  # outbox entry -> out_ids not yet sent
        # Webhooks (engine/daemon/webhooks_redis.py): the dispatcher's cursor in the outbox
        # stream once it runs; a published entry past it is kept (not deleted) until the
        # dispatcher has enqueued it, so a kill -9 in between loses nothing (webhooks_passed).
        self._wh_cursor: tuple[int, int] | None = None
        self._wh_kept: set[bytes] = set()

    @property
    def outbox_key(self) -> str:
        """This worker's outbox stream (module doc)."""
        return self._outbox_key

    @classmethod
    def from_url(cls, url: str, *, reconnect_s: float = 30.0, **kw: Any) -> RedisStore:
        store = cls(connect(url, reconnect_s=reconnect_s), **kw)
        store.ping(url)
        return store

    def ping(self, url: str = "") -> None:
        try:
            self.r.ping()
        except _redis_error() as exc:
            where = url or "Redis"
            raise StateError(f"cannot reach {where}: {exc} (is redis-server running?)") from exc

    # --- keys ------------------------------------------------------------------------------------

    def user_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:u"

    def inv_key(self, campaign_id: str) -> str:
        return f"{self.prefix}:inv:{{{campaign_id}}}"

    def push_key(self, user: str, push_id: str) -> str:
        return f"{self.prefix}:{{{user}}}:p:{push_id}"

    def input_key(self, digest: bytes) -> str:
        return f"{self.prefix}:in:{{{digest.hex()}}}"

    # --- StateStore protocol ---------------------------------------------------------------------

    def user(self, user: str) -> UserState:
        st = self._touched.get(user)
        if st is not None:
            return st
        if user not in self._raw:
            self.users([user])
        st = _decode(user, self._raw[user])
        self._touched[user] = st
        return st

    def users(self, users: Iterable[str]) -> None:
        missing = [u for u in dict.fromkeys(users) if u not in self._raw]
        # Counters near exhaustion are refreshed with the batch's users (fewer conflicts when
        # another worker took the last coupons; an operator's refill of an empty one is seen).
        # Others need no refresh: the commit script checks every coupon taken against Redis.
        camps = [] if self._inv_fresh else [c for c, n in self._inv_est.items() if n <= _LOW]
        if not missing and not camps:
            return
        keys = [self.user_key(u) for u in missing] + [self.inv_key(c) for c in camps]
        vals = self._call("load", lambda: self.r.mget(keys))
        for u, v in zip(missing, vals, strict=False):
            self._raw[u] = v
        for c, v in zip(camps, vals[len(missing) :], strict=True):
            if v is not None:
                self._inv_est[c] = int(v)
        self._inv_fresh = True

    def peek(self, user: str) -> UserState:
        """The user's record as loaded for this batch, NOT marked touched (a fresh copy)."""
        if user not in self._raw:
            self.users([user])
        return _decode(user, self._raw[user])

    def commit(
        self,
        outputs: Sequence[Output],
        *,
        extra: Sequence[Row] = (),
        inputs: Sequence[bytes] = (),
        meta: dict[str, str] | None = None,
        order: dict[str, float] | None = None,
    ) -> list[Row]:
        """One atomic script (see module doc); ``meta`` values are this worker's (e.g. the core's
        watermark). Raises ``CommitConflict`` having applied nothing and having refreshed what
        conflicted, so the caller re-runs the batch (``rerun`` below, or ``run_batch``).
        ``order``: user -> newest event time of the batch; if another worker holds an older event
        of one of them, raises ``HeldBack`` having applied nothing."""
        rows: list[Row] = [self.render(o) for o in outputs]
        rows.extend(extra)
        for out in outputs:
            pid = getattr(out, "push_id", None)
            if isinstance(pid, str):
                self._new_push[pid] = self.push_key(str(getattr(out, "user", "")), pid)
        users = list(self._touched)
        keys, args = self._script_args(users, rows, inputs, meta or {}, order or {})
        reply = self._call("commit", lambda: self._script(keys=keys, args=args))
        if reply[0] == 0:
            self._on_conflict(users, reply)
        if reply[0] == 3:
            self._on_held(users, reply)
        if reply[0] == 1:
            if self.next_holds is not None:
                self.holds = self.next_holds
            self.others_holding = int(reply[3]) > 0
            for c, left in zip(self._totals, reply[2], strict=True):
                self._inv_est[c] = int(left)
            if rows and reply[1]:
                self._track(bytes(reply[1]), [r.out_id for r in rows])
        else:  # 2: a retried call that Redis had already applied: stream ids via unsent()
            self._inv_fresh = False
            self.unsent()
        for pid in self._new_push:
            self._remember(pid)
        self.next_holds = None
        self.stats.commits += 1
        self._end_batch()
        return rows

    # --- beyond the protocol: the retry loop, rollback, inputs, outbox --------------------------

    def run_batch(
        self,
        process: Callable[[Sequence[E]], list[Output]],
        events: Sequence[E],
        *,
        users: Iterable[str] | None = None,
        extra: Sequence[Row] = (),
        inputs: Sequence[bytes] = (),
    ) -> tuple[list[Output], list[Row]]:
        """Load the batch's users, run ``process`` (the core), commit; on a conflict re-run from
        fresh state. Returns the outputs and outbox rows of the attempt that committed."""
        names = list(users) if users is not None else [str(getattr(e, "user", "")) for e in events]
        for _ in range(self.max_attempts):
            self.users(names)
            try:
                outputs = process(events)
            except BaseException:
                self.rollback()
                raise
            try:
                rows = self.commit(outputs, extra=extra, inputs=inputs)
            except CommitConflict:
                continue
            self.stats.events += len(events)
            self.stats.batches += 1
            return outputs, rows
        self.rollback()
        raise StateError(f"batch still conflicting after {self.max_attempts} attempts")

    # --- holds: per-user order across workers (module doc) -------------------------------------

    @property
    def outages(self) -> int:
        """How many failed Redis calls the client retried so far (grows during an outage)."""
        retry = self.r.connection_pool.connection_kwargs.get("retry")
        return int(getattr(retry, "failures", 0))

    def uptime_s(self) -> float:
        """Seconds since redis-server started (a small value: it restarted lately)."""
        info = self._call("info", lambda: self.r.info("server"))
        return float(info.get("uptime_in_seconds", 0))

    def set_holds(self, holds: dict[str, float]) -> None:
        """Register (replace) this worker's holds: user -> oldest event time it holds unapplied."""
        args: list[Any] = [self.worker, HOLD_TTL_S]
        for u, ts in holds.items():
            args += [u, repr(ts)]
        keys = [self._holders_key, self._holds_key]
        n = self._call("holds", lambda: self._set_holds(keys=keys, args=args))
        self.holds = dict(holds)
        self.others_holding = int(n) > 0

    def others_holds(self, users: Sequence[str]) -> dict[str, float]:
        """user -> the oldest event time another worker holds of that user (users held only)."""
        if not users:
            return {}
        args = [self.worker, self.prefix, *users]
        vals = self._call("holds", lambda: self._others_holds(keys=[self._holders_key], args=args))
        out = {u: float(v) for u, v in zip(users, vals, strict=True) if v is not None}
        self.others_holding = bool(out) or self.others_holding
        return out

    def get_meta(self, key: str) -> str | None:
        """A value this worker committed with ``meta`` (e.g. its core's watermark)."""
        val = self._call("meta", lambda: self.r.hget(self._meta_key, key))
        return None if val is None else bytes(val).decode()

    def meta_once(self, key: str, value: str) -> str:
        """The group-wide value of ``key`` (``P:shared:<key>``, one for every worker), storing
        ``value`` first when there is none (``SET NX``): the first worker to start generates a
        setting such as the coupon secret, and every worker then uses the same."""
        k = f"{self.prefix}:shared:{key}"
        self._call("meta_once", lambda: self.r.set(k, value, nx=True))
        val = self._call("meta_once", lambda: self.r.get(k))
        return value if val is None else bytes(val).decode()

    def users_with_visits(self) -> list[UserState]:
        """Every user with an open visit, whichever worker opened it (SCAN: at start only), so a
        (re)started worker re-arms the visit timers of all users, a dead worker's included."""
        return [st for st in self.all_users().values() if st.visits]

    def rollback(self) -> None:
        """Forget the batch (the core failed on it): nothing was written."""
        self._end_batch()

    def seen_inputs(self, digests: Iterable[bytes]) -> set[bytes]:
        """Which of these input message digests were committed already (redeliveries)."""
        ds = list(digests)
        if not ds:
            return set()
        vals = self._call("seen_inputs", lambda: self.r.mget([self.input_key(d) for d in ds]))
        return {d for d, v in zip(ds, vals, strict=True) if v is not None}

    def unsent(self, limit: int | None = None) -> list[Row]:
        """This worker's committed rows not yet marked sent, oldest first. The outbox holds one
        stream entry per commit; an entry is deleted once all its rows are marked sent. Rows this
        process already marked are left out; after a restart a partly sent entry comes back
        whole (the contract allows a repeat with the same id)."""
        entries = self._call("unsent", lambda: self.r.xrange(self._outbox_key, "-", "+"))
        rows: list[Row] = []
        for sid_raw, fields in entries:
            sid = bytes(sid_raw)
            if sid in self._wh_kept:  # published already, kept for the webhooks only
                continue
            decoded = decode_entry(fields)
            pending = self._entry_rows.get(sid)
            if pending is None:
                self._track(sid, [r.out_id for r in decoded])
                pending = self._entry_rows[sid]
            rows.extend(r for r in decoded if r.out_id in pending)
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
        return rows

    def mark_sent(self, out_ids: Iterable[str]) -> None:
        done: list[bytes] = []
        for o in out_ids:
            sid = self._stream_ids.pop(o, None)
            if sid is None:
                continue
            pending = self._entry_rows.get(sid)
            if pending is not None:
                pending.discard(o)
                if not pending:
                    del self._entry_rows[sid]
                    done.append(sid)
        if done and self._wh_cursor is not None:  # not yet enqueued for webhooks: kept
            cur = self._wh_cursor
            keep = {s for s in done if stream_pos(s) > cur}
            if keep:
                self._wh_kept |= keep
                done = [s for s in done if s not in keep]
        if done:
            self._call("mark_sent", lambda: self.r.xdel(self._outbox_key, *done))

    def webhooks_passed(self, cursor: str | bytes) -> None:
        """The webhook dispatcher enqueued this worker's outbox entries up to ``cursor`` (an
        entry id; its write to Redis is done): published entries up to it are deleted now,
        later ones only once it passes them (``mark_sent`` keeps them)."""
        cur = self._wh_cursor = stream_pos(cursor)
        free = [s for s in self._wh_kept if stream_pos(s) <= cur]
        if free:
            self._call("mark_sent", lambda: self.r.xdel(self._outbox_key, *free))
            self._wh_kept.difference_update(free)

    def _track(self, sid: bytes, out_ids: list[str]) -> None:
        self._entry_rows[sid] = set(out_ids)
        for o in out_ids:
            self._stream_ids[o] = sid

    def prune_sent(self, keep: int = 100_000) -> int:
        """Sent rows are deleted by ``mark_sent``; nothing to prune."""
        return 0

    def checkpoint(self) -> None:
        """Durability is Redis's (AOF); nothing to fold."""

    def close(self) -> None:
        with contextlib.suppress(_redis_error()):
            self.r.close()

    # Introspection for tests and tools (SCAN: not for the hot path).
    def all_users(self) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        for key in self._scan(f"{self.prefix}:{{*}}:u"):
            blob = self.r.get(key)
            if isinstance(blob, bytes):
                st = _decode("", blob)
                out[st.user] = st
        return out

    def snapshot(self, users: Sequence[str]) -> dict[str, UserState]:
        """These users' committed records (one MGET; absent users are empty records). Read-only:
        outside any batch (tests, tools)."""
        vals: list[bytes | None] = self.r.mget([self.user_key(u) for u in users])  # type: ignore[assignment]
        return {u: _decode(u, v) for u, v in zip(users, vals, strict=True)}

    def inventory(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key in self._scan(f"{self.prefix}:inv:{{*}}"):
            val = self.r.get(key)
            if val is not None:
                out[key.decode()[len(self.prefix) + 6 : -1]] = int(val)
        return out

    def push_ids(self) -> set[str]:
        return {k.decode().split(":p:", 1)[1] for k in self._scan(f"{self.prefix}:{{*}}:p:*")}

    # --- internals -------------------------------------------------------------------------------

    def _left(self, campaign_id: str, total: int) -> int:
        est = self._inv_est.get(campaign_id)
        if est is None:
            # MGET, not GET: GET/SET/EXISTS/XADD/HSET then only ever run inside the commit
            # script, so Redis's per-command counters tell round trips apart (bench e2e).
            val = self._call("inventory", lambda: self.r.mget([self.inv_key(campaign_id)]))[0]
            est = self._inv_est[campaign_id] = total if val is None else int(val)
        self._totals.setdefault(campaign_id, total)
        return est - self._taken.get(campaign_id, 0)

    def _script_args(
        self,
        users: list[str],
        rows: list[Row],
        inputs: Sequence[bytes],
        meta: dict[str, str],
        order: dict[str, float] | None = None,
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = [self.user_key(u) for u in users]
        ver_args: list[Any] = []
        for u in users:
            raw, st = self._raw.get(u), self._touched[u]
            old = _version(raw)
            # The version lives in the key's prefix only (the body is encoded with version 0),
            # so one encode tells an unchanged record apart and gives the new body.
            st.version = 0
            blob = encode_user(st)
            if raw is not None and raw[raw.index(b"|") + 1 :] == blob:
                st.version = old
                ver_args += [old, ""]  # unchanged: check the version only
            else:
                st.version = old + 1
                ver_args += [old, _lua_str(f"{old + 1}|".encode() + blob)]
        camps = list(self._totals)
        keys += [self.inv_key(c) for c in camps]
        keys += list(self._new_push.values())
        keys += [self.input_key(d) for d in inputs]
        keys += [self._token_key, self._outbox_key, self._meta_key]
        keys += [self._holders_key, self._holds_key]
        head: list[Any] = [len(users), len(camps), len(self._new_push), len(inputs)]
        head += [self.push_ttl_s, self.input_ttl_s, uuid.uuid4().hex, len(meta)]
        head += ver_args
        for c in camps:
            head += [self._totals[c], self._taken.get(c, 0)]
        for k, v in meta.items():
            head += [k, v]
        head += [float((order or {}).get(u, -1.0)) for u in users]
        nxt = self.next_holds
        head.append(-1 if nxt is None else len(nxt))
        for u, ts in (nxt or {}).items():
            head += [u, repr(ts)]
        head += [self.worker, self.prefix, HOLD_TTL_S]
        rows_blob = _MSGPACK.encode([(r.out_id, r.topic, r.payload) for r in rows]) if rows else b""
        return keys, [_MSGPACK.encode(head), rows_blob]

    def _on_conflict(self, users: list[str], reply: list[Any]) -> None:
        bad_users = [users[i - 1] for i in reply[1]]
        camps = list(self._totals)
        short = []
        for c, now in zip(camps, reply[2], strict=True):
            self._inv_est[c] = int(now)
            if int(now) < self._taken.get(c, 0):
                short.append(c)
        pids = list(self._new_push)
        bad_pids = [pids[i - 1] for i in reply[3]]
        for pid in bad_pids:
            self._remember(pid)
        for u in bad_users:
            self._raw.pop(u, None)  # reloaded by the next users() call
        touched = list(self._touched)
        self._touched.clear()
        self._reset_attempt()
        self.stats.conflicts += 1
        exc = CommitConflict(bad_users, short, bad_pids)
        exc.touched = touched
        raise exc

    def _on_held(self, users: list[str], reply: list[Any]) -> None:
        touched = list(self._touched)
        self._touched.clear()
        self._reset_attempt()
        self.next_holds = None
        self.others_holding = True
        exc = HeldBack([users[i - 1] for i in reply[1]])
        exc.touched = touched
        raise exc

    def _remember(self, push_id: str) -> None:
        self._seen[push_id] = None
        if len(self._seen) > self.seen_cache:
            self._seen.popitem(last=False)

    def _reset_attempt(self) -> None:
        self._taken.clear()
        self._totals.clear()
        self._new_push.clear()

    def _end_batch(self) -> None:
        self._raw.clear()
        self._touched.clear()
        self._inv_fresh = False
        self._reset_attempt()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        self.stats.round_trips += 1
        try:
            return fn()
        except _redis_error() as exc:
            raise StateError(f"redis {what} failed: {exc}") from exc

    def _scan(self, pattern: str) -> Iterator[bytes]:
        yield from self.r.scan_iter(match=pattern, count=1000)


def stream_pos(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a comparable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def decode_entry(fields: dict[bytes, bytes]) -> list[RedisRow]:
    """The rows of one outbox stream entry (its field ``r``)."""
    return [RedisRow(o, t, bytes(p)) for o, t, p in _ROWS.decode(fields[b"r"])]


def rearm(core: Any, states: Iterable[UserState]) -> int:
    """Put the open visits of ``states`` back on the core's sweep queue (dwell and time-out
    timers) through ``Core.restore``. A failed attempt's sweep may have consumed them; duplicates
    are harmless (the sweep checks every entry against the user's record)."""
    states = list(states)
    core.restore(states)
    return sum(len(st.visits) for st in states)


def commit_batch(
    core: Any,
    store: Any,
    events: Sequence[Any],
    outputs: list[Output],
    *,
    extra: Sequence[Any] = (),
    inputs: Sequence[bytes] = (),
    meta: Callable[[], dict[str, str] | None] = lambda: None,
    rerun: Callable[[], list[Output]] | None = None,
    order: dict[str, float] | None = None,
) -> tuple[list[Output], list[Any]]:
    """``store.commit`` for the daemon's hot path, any store: when a shared store reports a
    conflict (another worker moved a user, coupons ran out, a push was decided elsewhere), re-arm
    the touched users' timers and re-run the core on the batch from fresh state, until a commit
    applies (``rerun`` instead of ``core.process(events)``, e.g. a timer flush). Returns the
    outputs and rows that were committed. ``order`` (a worker group's store only): see
    ``RedisStore.commit``; a ``HeldBack`` goes to the caller."""
    attempts = int(getattr(store, "max_attempts", 1))
    kw: dict[str, Any] = {} if order is None else {"order": order}
    for _ in range(attempts):
        try:
            return outputs, list(
                store.commit(outputs, extra=extra, inputs=inputs, meta=meta(), **kw)
            )
        except CommitConflict as exc:
            store.users(exc.touched)
            rearm(core, [store.peek(u) for u in exc.touched])
            outputs = rerun() if rerun is not None else _process(core, events)
    store.rollback()
    raise StateError(f"batch still conflicting after {attempts} attempts")


def open_store(settings: Settings, render: Any) -> SQLiteStore:
    """The daemon's store from ``--state``: a SQLite file, or Redis (``redis://``) for a worker
    group, where this worker's outbox and meta are keyed by its MQTT client id.

    ``RedisStore`` offers everything the daemon calls on ``SQLiteStore`` (commit with extra,
    inputs and meta; rollback; seen_inputs; unsent; mark_sent; get_meta; users_with_visits;
    checkpoint; close): the cast tells mypy so without a shared base class."""
    url = settings.redis_url
    if url is None:
        return SQLiteStore(
            settings.state,
            render=render,
            synchronous=settings.sqlite_sync,
            input_window=settings.input_window,
            new=settings.new_state,
            quarantine_corrupt=settings.quarantine_corrupt,
        )
    store = RedisStore.from_url(url, worker=settings.client_id, render=render)
    return cast(SQLiteStore, store)


def _lua_str(b: bytes) -> msgspec.Raw:
    """``b`` as a msgpack *str* (Redis's Lua cmsgpack cannot read the bin type msgspec writes
    for bytes; a Lua string holds any bytes)."""
    n = len(b)
    if n < 32:
        head = bytes([0xA0 | n])
    elif n < 0x100:
        head = bytes([0xD9, n])
    elif n < 0x10000:
        head = b"\xda" + n.to_bytes(2, "big")
    else:
        head = b"\xdb" + n.to_bytes(4, "big")
    return msgspec.Raw(head + b)


def _process(core: Any, events: Sequence[Any]) -> list[Output]:
    return list(core.process(events)) if events else []


def _version(raw: bytes | None) -> int:
    return 0 if raw is None else int(raw[: raw.index(b"|")])


def _decode(user: str, raw: bytes | None) -> UserState:
    if raw is None:
        return UserState(user=user)
    cut = raw.index(b"|")
    st = decode_user(raw[cut + 1 :])
    st.version = int(raw[:cut])
    return st


def wait_for(store: RedisStore, timeout_s: float = 30.0) -> None:
    """Block until Redis answers PING (after a restart), or raise ``StateError``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store.r.ping()
            return
        except _redis_error() as exc:
            if time.monotonic() > deadline:
                raise StateError(f"redis still unreachable after {timeout_s:.0f} s: {exc}") from exc
            time.sleep(0.05)


__all__ = [
    "CommitConflict",
    "HeldBack",
    "RedisRow",
    "RedisStats",
    "RedisStore",
    "Row",
    "commit_batch",
    "connect",
    "decode_entry",
    "rearm",
    "default_render",
    "open_store",
    "stream_pos",
    "wait_for",
]
