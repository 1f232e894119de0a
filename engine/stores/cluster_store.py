"""State of partition-affine workers on a Redis Cluster (docs/scaling.md).

Users are split into ``P`` partitions (``engine.partitions.partition_of``). A worker holds a
**lease** on each partition it owns and is then the only process that changes that partition's
users, so a commit needs no optimistic version check and never conflicts with another worker.
Every key of a partition carries the hash tag ``{p<N>}``: they live in ONE cluster slot, so a
batch of one partition loads in one script call and commits in one script call, atomically.

Key layout (``P`` is the prefix, ``gp`` by default):

===============================  ==============================================================
``P:{p<N>}:lease``               ``"<worker>:<epoch>"`` with a TTL (the lease, see below)
``P:{p<N>}:epoch``               the partition's lease counter (+1 per new owner)
``P:{p<N>}:log``                 the partition's input log: a stream the ingest bridge appends
                                 ``geopush/events/{user}`` messages to (fields ``t``, ``p``)
``P:{p<N>}:off``                 id of the last log entry applied (moves with each commit)
``P:{p<N>}:u``                   hash: user -> msgpack ``UserState``
``P:{p<N>}:open``                set: users with an open visit (timers re-armed on a move)
``P:{p<N>}:meta``                hash: the partition core's watermark
``P:{p<N>}:inv``                 hash: campaign -> coupons reserved for this partition and not
                                 used; ``<campaign>:seq`` -> number of reservations credited
``P:{p<N>}:p:<push_id>``         a push decided (expires after ``push_ttl_s``)
``P:{p<N>}:out``                 the partition's outbox stream: one entry per commit
``P:inv:{<campaign>}``           coupons left in the global pool (created at the total)
``P:inv:{<campaign>}:r``         hash: ``p<N>`` -> ``"<seq>:<granted>"``, the partition's last
                                 reservation (makes a retried reservation idempotent)
``P:{workers}``                  sorted set: live workers, score = heartbeat expiry (ms)
===============================  ==============================================================

**Leases and fencing.** A lease is a key with a TTL (``lease_ttl_ms``) whose value names the
owner and an epoch that grows with every new owner. The commit script first checks that the
lease key still holds this worker's ``"<worker>:<epoch>"``, in the same slot and the same atomic
script as the writes: a worker that was paused past its TTL, or whose partition moved, commits
nothing (``LeaseLost``), whatever its clock says. The commit also checks and moves the log
offset, so each log entry is applied exactly once, by whoever owns the partition at that time.

**Coupons across partitions.** A campaign's inventory is one global counter in its own slot; a
partition spends coupons from a **block** reserved from it (``RESERVE``: one atomic script on
the counter's slot, taking ``min(want, left)``). Reservations are numbered per partition and
campaign; the counter's slot remembers each partition's last one (``seq``, ``granted``), and the
partition's commit credits reservation ``seq`` to its block only if its own count says ``seq``
is the next (then counts it). So: the pool only ever shrinks by what it grants (never below
zero), a grant is credited to a block at most once, and a commit only takes coupons its block
holds (checked in the script). Hence coupons taken <= credited <= granted <= inventory: never
oversold. A worker killed between reserving and committing leaves the grant recorded under the
same ``seq``; the partition's next owner asks again with that ``seq`` and gets the same grant
back, so nothing is lost either. Blocks are ``block`` coupons (or just what a batch lacks when
the pool is low), so at most one block per partition is parked while others may want it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from engine.errors import ConfigError, StateError
from engine.state import Output, UserState, decode_user, encode_user
from engine.stores.redis_store import (
    BatchCoupons,
    RedisRow,
    Renderer,
    Row,
    _lua_str,
    default_render,
)

_MSGPACK = msgspec.msgpack.Encoder()
_ROWS = msgspec.msgpack.Decoder(list[tuple[str, str, bytes]])
DEFAULT_PUSH_TTL_S = 90 * 86400
DEFAULT_INPUT_TTL_S = 7 * 86400
DEFAULT_LEASE_TTL_MS = 2000
DEFAULT_BLOCK = 64


class LeaseLost(StateError):
    """The partition's lease is no longer this worker's: nothing was committed; drop the
    partition (its next owner carries on from the last commit)."""

    def __init__(self, partition: int, mine: str, now: str | None) -> None:
        super().__init__(f"partition {partition}: lease {mine!r} lost (now {now!r})")
        self.partition = partition


class Refused(StateError):
    """The commit applied nothing and says why; re-run the batch (``run_partition_batch``)."""

    def __init__(self, short: list[str], push_ids: list[str]) -> None:
        super().__init__(f"commit refused (short of coupons: {short[:5]}, pushes decided: {push_ids[:5]})")
        self.short = short
        self.push_ids = push_ids


# KEYS: lease, epoch. ARGV: worker, ttl ms. Reply: "worker:epoch" (now ours) or false.
_ACQUIRE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. ':' then return false end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return cur
end
local e = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. ':' .. e
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return v
"""

# KEYS: lease. ARGV: "worker:epoch", ttl ms (0: release). Reply: 1 if it was ours.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2])
else redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: workers zset. ARGV: worker, ttl ms ("" = leave). Reply: the live workers.
_HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' then redis.call('ZREM', KEYS[1], ARGV[1])
else redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: global counter, reservations hash. ARGV: total, "p<N>", seq, want.
# Reply: coupons granted to reservation (p<N>, seq); the same answer when asked again.
_RESERVE_LUA = """
local last = redis.call('HGET', KEYS[2], ARGV[2])
if last then
  local s, g = string.match(last, '^(%d+):(%d+)$')
  if tonumber(s) == tonumber(ARGV[3]) then return tonumber(g) end
end
local left = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
local g = math.max(0, math.min(tonumber(ARGV[4]), left))
redis.call('SET', KEYS[1], left - g)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':' .. g)
return g
"""

# KEYS: lease, inv hash. ARGV: lease value, campaign, seq, granted. Credits reservation ``seq``
# to the block if it is the next one. Reply: the block now, or -1 (lease lost).
_CREDIT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[2] .. ':seq') or '0')
if have == tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[2] .. ':seq', have + 1)
end
return tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
"""

# KEYS: users hash, inv hash, off, meta, then digest keys. ARGV: users.
# Reply: {user blobs, inv hash flat, offset or false, watermark or false, digest exists flags}.
_LOAD_LUA = """
local users = {}
if #ARGV > 0 then users = redis.call('HMGET', KEYS[1], unpack(ARGV)) end
local seen = {}
for i = 5, #KEYS do seen[#seen + 1] = redis.call('EXISTS', KEYS[i]) end
return {users, redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[3]),
        redis.call('HGET', KEYS[4], 'wm'), seen}
"""

# KEYS: lease, off, users hash, inv hash, open set, outbox, meta, then push keys (np), then input
# digest keys (ni). ARGV[1] msgpack: {lease value, expected offset ("" none), new offset, np, ni,
# push ttl, input ttl, watermark, nu, nc, then per user name, blob, open (1/0), then per campaign
# name, taken, seq, granted (-1: no reservation)}; ARGV[2]: the outbox rows ("" none).
# Reply: {1, outbox id or false, blocks after} | {4, lease now} | {5, offset now}
#        | {0, short campaign idx, blocks now, decided push idx} (only the reservations were
#        credited: a refused batch is re-run, the grants are this partition's either way).
_COMMIT_LUA = """
local A = cmsgpack.unpack(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur ~= A[1] then return {4, cur or false} end
local off = redis.call('GET', KEYS[2]) or ''
if off ~= A[2] then return {5, off} end
local np, ni, nu, nc = A[4], A[5], A[9], A[10]
local a = 11
local c0 = a + 3 * nu
local short, blocks, bad_p = {}, {}, {}
for j = 1, nc do
  local k = c0 + 4 * (j - 1)
  local name, taken, seq, g = A[k], A[k + 1], A[k + 2], A[k + 3]
  local left = tonumber(redis.call('HGET', KEYS[4], name) or '0')
  local have = tonumber(redis.call('HGET', KEYS[4], name .. ':seq') or '0')
  if g >= 0 and have == seq then
    -- credit the reservation now, even if the batch is refused below: it is this partition's
    left = left + g
    redis.call('HSET', KEYS[4], name, left, name .. ':seq', seq + 1)
  end
  blocks[j] = left
  if left < taken then short[#short + 1] = j end
end
for p = 1, np do
  if redis.call('EXISTS', KEYS[7 + p]) == 1 then bad_p[#bad_p + 1] = p end
end
if #short > 0 or #bad_p > 0 then return {0, short, blocks, bad_p} end
for j = 1, nc do
  local k = c0 + 4 * (j - 1)
  blocks[j] = blocks[j] - A[k + 1]
  redis.call('HSET', KEYS[4], A[k], blocks[j])
end
for i = 1, nu do
  local k = a + 3 * (i - 1)
  if A[k + 1] ~= '' then redis.call('HSET', KEYS[3], A[k], A[k + 1]) end
  if A[k + 2] == 1 then redis.call('SADD', KEYS[5], A[k]) else redis.call('SREM', KEYS[5], A[k]) end
end
for p = 1, np do
  if A[6] > 0 then redis.call('SET', KEYS[7 + p], 1, 'EX', A[6]) else redis.call('SET', KEYS[7 + p], 1) end
end
for q = 1, ni do redis.call('SET', KEYS[7 + np + q], 1, 'EX', A[7]) end
if A[3] ~= '' then redis.call('SET', KEYS[2], A[3]) end
if A[8] ~= '' then redis.call('HSET', KEYS[7], 'wm', A[8]) end
local id = false
if ARGV[2] ~= '' then id = redis.call('XADD', KEYS[6], '*', 'r', ARGV[2]) end
return {1, id, blocks}
"""


@dataclass
class ClusterStats:
    round_trips: int = 0
    commits: int = 0
    reservations: int = 0
    events: int = 0
    batches: int = 0

    def per_event(self) -> float:
        return self.round_trips / self.events if self.events else 0.0


def connect_cluster(url: str) -> RedisCluster:
    """A Redis Cluster client from any node's ``redis://HOST:PORT``; it finds the others and
    follows MOVED/failovers (redis-py retries a command through a failover for ~10 s)."""
    if not url.startswith(("redis://", "rediss://")):
        raise ConfigError(f"--state {url!r}: a Redis Cluster URL looks like redis://HOST:PORT (any node)")
    try:
        return RedisCluster.from_url(url, socket_connect_timeout=2.0, socket_timeout=10.0)
    except (RedisError, RedisClusterException, ValueError) as exc:
        raise StateError(
            f"cannot reach the Redis Cluster at {url}: {exc} (is it running, and is this a "
            "cluster node? a standalone Redis is --state for `geopush run --group`)"
        ) from exc


def owner_of(partition: int, workers: Sequence[str]) -> str | None:
    """The worker that should own ``partition`` (rendezvous hashing: when a worker joins or
    leaves, only the partitions it gains or loses move). The score is a BLAKE2b hash: FNV-1a
    mixes too little for names that differ in one character (w1, w2 got 15 of 16 partitions)."""
    if not workers:
        return None

    def score(w: str) -> tuple[int, str]:
        h = hashlib.blake2b(f"{w}/{partition}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big"), w

    return max(workers, key=score)


class ClusterStore(BatchCoupons):
    """``StateStore`` for one partition's batch at a time (``begin``), plus leases, the input
    log, reservations and the outbox (see the module doc). Not thread-safe: one per worker."""

    in_memory = False

    def __init__(
        self,
        client: RedisCluster,
        *,
        worker: str,
        partitions: int,
        prefix: str = "gp",
        render: Renderer | None = None,
        block: int = DEFAULT_BLOCK,
        lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        push_ttl_s: int = DEFAULT_PUSH_TTL_S,
        input_ttl_s: int = DEFAULT_INPUT_TTL_S,
    ) -> None:
        if ":" in worker or "/" in worker or not worker:
            raise ConfigError(f"worker name {worker!r}: use letters, digits, '-' or '_'")
        self.r = client
        self.worker, self.partitions, self.prefix = worker, partitions, prefix
        self.render: Renderer = render or default_render
        self.block, self.lease_ttl_ms = block, lease_ttl_ms
        self.push_ttl_s, self.input_ttl_s = push_ttl_s, input_ttl_s
        self.stats = ClusterStats()
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._heartbeat = client.register_script(_HEARTBEAT_LUA)
        self._reserve = client.register_script(_RESERVE_LUA)
        self._load = client.register_script(_LOAD_LUA)
        self._commit = client.register_script(_COMMIT_LUA)
        self._credit = client.register_script(_CREDIT_LUA)
        self._settled: set[tuple[int, str]] = set()  # (partition, campaign) checked since adopted
        self.leases: dict[int, str] = {}  # partition -> "worker:epoch" held
        self.offsets: dict[int, str] = {}  # partition -> last applied log id ("" none)
        # Per batch:
        self.p = -1
        self._raw: dict[str, bytes | None] = {}
        self._touched: dict[str, UserState] = {}
        self._blocks: dict[str, int] = {}
        self._seqs: dict[str, int] = {}
        self._taken: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        self._new_push: dict[str, str] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pool: dict[str, int] = {}  # last known global counters
        self.watermark: float | None = None

    # --- keys ------------------------------------------------------------------------------------

    def key(self, p: int, what: str) -> str:
        return f"{self.prefix}:{{p{p}}}:{what}"

    def pool_key(self, campaign_id: str) -> str:
        return f"{self.prefix}:inv:{{{campaign_id}}}"

    # --- membership and leases -------------------------------------------------------------------

    def heartbeat(self, leave: bool = False) -> list[str]:
        """Say this worker is alive (for ``3 x lease_ttl_ms``); the live workers, sorted."""
        ttl = "" if leave else str(3 * self.lease_ttl_ms)
        got = self._call(lambda: self._heartbeat(keys=[f"{self.prefix}:{{workers}}"], args=[self.worker, ttl]))
        return sorted(bytes(w).decode() for w in got)

    def acquire(self, p: int) -> bool:
        val = self._call(lambda: self._acquire(keys=[self.key(p, "lease"), self.key(p, "epoch")],
                                               args=[self.worker, self.lease_ttl_ms]))
        if not val:
            self.leases.pop(p, None)
            return False
        self.leases[p] = bytes(val).decode()
        self._settled = {pc for pc in self._settled if pc[0] != p}
        return True

    def renew(self, p: int) -> bool:
        ok = self._call(lambda: self._renew(keys=[self.key(p, "lease")], args=[self.leases[p], self.lease_ttl_ms]))
        if not ok:
            self.leases.pop(p, None)
        return bool(ok)

    def release(self, p: int) -> None:
        val = self.leases.pop(p, None)
        if val is not None:
            self._call(lambda: self._renew(keys=[self.key(p, "lease")], args=[val, 0]))

    def shared(self, key: str, value: str) -> str:
        """The cluster-wide value of ``key`` (``P:{shared}:<key>``), set to ``value`` by the
        first worker that asks (``SET NX``), e.g. the coupon secret."""
        k = f"{self.prefix}:{{shared}}:{key}"
        self._call(lambda: self.r.set(k, value, nx=True))
        got = self._call(lambda: self.r.get(k))
        return value if got is None else bytes(got).decode()

    # --- the partition log -----------------------------------------------------------------------

    def append(self, user_topic: str, payload: bytes, p: int) -> bytes:
        """Append one message to partition ``p``'s log (the ingest bridge)."""
        return bytes(self._call(lambda: self.r.xadd(self.key(p, "log"), {"t": user_topic, "p": payload})))

    def append_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """Append (topic, payload, partition) messages in order, in one pipeline: one round
        trip per cluster node instead of one per message (the bridge's batches)."""
        if not items:
            return
        pipe = self.r.pipeline()  # type: ignore[no-untyped-call]
        for topic, payload, p in items:
            pipe.xadd(self.key(p, "log"), {"t": topic, "p": payload})
        self._call(pipe.execute)

    def read_log(self, p: int, count: int) -> list[tuple[str, str, bytes]]:
        """Up to ``count`` log entries after the partition's applied offset: (id, topic, payload)."""
        start = self.offsets.get(p, "")
        lo = f"({start}" if start else "-"
        got = self._call(lambda: self.r.xrange(self.key(p, "log"), lo, "+", count=count))
        return [(bytes(i).decode(), bytes(f[b"t"]).decode(), bytes(f[b"p"])) for i, f in got]

    # --- a partition's batch (StateStore) --------------------------------------------------------

    def begin(self, p: int, users: Iterable[str], digests: Sequence[bytes] = ()) -> set[bytes]:
        """Start a batch of partition ``p``: load its users, blocks, offset and watermark in one
        script call; returns which ``digests`` (input messages) were applied already."""
        self._end_batch()
        self.p = p
        names = list(dict.fromkeys(users))
        keys = [self.key(p, "u"), self.key(p, "inv"), self.key(p, "off"), self.key(p, "meta")]
        keys += [self.key(p, f"in:{d.hex()}") for d in digests]
        blobs, inv, off, wm, seen = self._call(lambda: self._load(keys=keys, args=names))
        for u, b in zip(names, blobs, strict=True):
            self._raw[u] = None if b is None else bytes(b)
        flat = [bytes(x).decode() for x in inv]
        for k, v in zip(flat[::2], flat[1::2], strict=True):
            if k.endswith(":seq"):
                self._seqs[k[:-4]] = int(v)
            else:
                self._blocks[k] = int(v)
        self.offsets[p] = "" if off is None else bytes(off).decode()
        self.watermark = None if wm is None else float(wm)
        return {d for d, s in zip(digests, seen, strict=True) if s}

    def users(self, users: Iterable[str]) -> None:
        missing = [u for u in dict.fromkeys(users) if u not in self._raw]
        if missing:
            got = self._call(lambda: self.r.hmget(self.key(self.p, "u"), missing))
            for u, b in zip(missing, got, strict=True):
                self._raw[u] = None if b is None else bytes(b)

    def user(self, user: str) -> UserState:
        st = self._touched.get(user)
        if st is None:
            if user not in self._raw:
                self.users([user])
            raw = self._raw[user]
            st = UserState(user=user) if raw is None else decode_user(raw)
            self._touched[user] = st
        return st

    def commit(
        self,
        outputs: Sequence[Output],
        *,
        log_to: str = "",
        inputs: Sequence[bytes] = (),
        watermark: float | None = None,
    ) -> list[Row]:
        """Commit partition ``self.p``'s batch: users, coupons, push ids, inputs, the log offset
        (to ``log_to``), the watermark and one outbox entry, in ONE script call, if this worker
        still holds the lease (else ``LeaseLost``) and the blocks hold the coupons taken (else
        ``Refused``, after refreshing what it learnt: re-run the batch)."""
        p = self.p
        lease = self.leases.get(p)
        if lease is None:
            raise LeaseLost(p, "", None)
        grants = self._reserve_missing()
        rows = [self.render(o) for o in outputs]
        for out in outputs:
            pid = getattr(out, "push_id", None)
            if isinstance(pid, str):
                self._new_push[pid] = self.key(p, f"p:{pid}")
        head: list[Any] = [lease, self.offsets.get(p, ""), log_to, len(self._new_push), len(inputs),
                           self.push_ttl_s, self.input_ttl_s, "" if watermark is None else repr(watermark)]
        users = list(self._touched)
        camps = list(self._taken)
        head += [len(users), len(camps)]
        for u in users:
            st = self._touched[u]
            blob = encode_user(st)
            head += [u, "" if blob == self._raw.get(u) else _lua_str(blob), 1 if st.visits else 0]
        for c in camps:
            seq, g = grants.get(c, (self._seqs.get(c, 0), -1))
            head += [c, self._taken[c], seq, g]
        keys = [self.key(p, w) for w in ("lease", "off", "u", "inv", "open", "out", "meta")]
        keys += list(self._new_push.values())
        keys += [self.key(p, f"in:{d.hex()}") for d in inputs]
        blob = _MSGPACK.encode([(r.out_id, r.topic, r.payload) for r in rows]) if rows else b""
        reply = self._call(lambda: self._commit(keys=keys, args=[_MSGPACK.encode(head), blob]))
        code = int(reply[0])
        if code == 4:
            self.leases.pop(p, None)
            raise LeaseLost(p, lease, None if not reply[1] else bytes(reply[1]).decode())
        if code == 5:
            self.leases.pop(p, None)  # someone else applied the log: we are not its owner
            raise LeaseLost(p, lease, f"offset moved to {bytes(reply[1]).decode()}")
        if code == 0:
            for c in camps:
                self._pool.pop(c, None)  # re-read with the re-run: others may have drained it
            pids = list(self._new_push)
            bad = [pids[i - 1] for i in reply[3]]
            for pid in bad:
                self._remember(pid)
            short = [camps[i - 1] for i in reply[1]]
            self._reset_attempt()
            raise Refused(short, bad)
        if log_to:
            self.offsets[p] = log_to
        for pid in self._new_push:
            self._remember(pid)
        self.stats.commits += 1
        self._end_batch()
        return rows

    def rollback(self) -> None:
        self._end_batch()

    # --- outbox ----------------------------------------------------------------------------------

    def unsent(self, p: int) -> list[tuple[bytes, list[Row]]]:
        """Partition ``p``'s outbox entries, oldest first: (entry id, rows)."""
        got = self._call(lambda: self.r.xrange(self.key(p, "out"), "-", "+"))
        return [(bytes(i), [RedisRow(o, t, bytes(pl)) for o, t, pl in _ROWS.decode(f[b"r"])]) for i, f in got]

    def mark_sent(self, p: int, entry_ids: Sequence[bytes]) -> None:
        if entry_ids:
            self._call(lambda: self.r.xdel(self.key(p, "out"), *entry_ids))

    # --- restore on a move -----------------------------------------------------------------------

    def open_visits(self, p: int) -> list[UserState]:
        """Partition ``p``'s users with an open visit (their timers go back on the new core)."""
        users = sorted(bytes(u).decode() for u in self._call(lambda: self.r.smembers(self.key(p, "open"))))
        if not users:
            return []
        got = self._call(lambda: self.r.hmget(self.key(p, "u"), users))
        return [decode_user(bytes(b)) for b in got if b is not None]

    # --- internals -------------------------------------------------------------------------------

    def _left(self, campaign_id: str, total: int) -> int:
        self._totals.setdefault(campaign_id, total)
        if (self.p, campaign_id) not in self._settled:
            self._settle(campaign_id)
        pool = self._pool.get(campaign_id)
        if pool is None:
            val = self._call(lambda: self.r.get(self.pool_key(campaign_id)))
            pool = self._pool[campaign_id] = total if val is None else int(val)
        return self._blocks.get(campaign_id, 0) + pool - self._taken.get(campaign_id, 0)

    def _settle(self, campaign_id: str) -> None:
        """Once per (partition, campaign) after taking a partition over: a reservation its
        previous owner got but never committed (it died in between) is credited now, so the
        coupons count as this partition's from the first decision on."""
        p, c = self.p, campaign_id
        last = self._call(lambda: self.r.hget(self.pool_key(c) + ":r", f"p{p}"))
        self._settled.add((p, c))
        if last is None:
            return
        seq, g = (int(x) for x in bytes(last).decode().split(":"))
        if seq != self._seqs.get(c, 0) or p not in self.leases:
            return
        keys = [self.key(p, "lease"), self.key(p, "inv")]
        now = int(self._call(lambda: self._credit(keys=keys, args=[self.leases[p], c, seq, g])))
        if now < 0:
            raise LeaseLost(p, self.leases.pop(p), None)
        self._blocks[c] = now
        self._seqs[c] = seq + 1

    def _reserve_missing(self) -> dict[str, tuple[int, int]]:
        """Reserve from the global pools what the batch takes beyond its blocks: campaign ->
        (seq, granted). One idempotent script call per such campaign (rare: once a block)."""
        grants: dict[str, tuple[int, int]] = {}
        for c, taken in self._taken.items():
            need = taken - self._blocks.get(c, 0)
            if need <= 0:
                continue
            total = self._totals[c]
            pool = self._pool.get(c, total)
            want = need if pool <= 4 * self.block * 16 else max(need, self.block)
            seq = self._seqs.get(c, 0)
            keys = [self.pool_key(c), self.pool_key(c) + ":r"]
            g = int(self._call(lambda: self._reserve(keys=keys, args=[total, f"p{self.p}", seq, want])))  # noqa: B023
            self.stats.reservations += 1
            if g < want:
                self._pool.pop(c, None)  # re-read next time: others drained it
            else:
                self._pool[c] = pool - g
            grants[c] = (seq, g)
        return grants

    def _remember(self, push_id: str) -> None:
        self._seen[push_id] = None
        if len(self._seen) > 100_000:
            self._seen.popitem(last=False)

    def _reset_attempt(self) -> None:
        self._taken.clear()
        self._new_push.clear()
        self._touched.clear()

    def _end_batch(self) -> None:
        self._raw.clear()
        self._blocks.clear()
        self._seqs.clear()
        self._reset_attempt()

    def _call(self, fn: Callable[[], Any]) -> Any:
        self.stats.round_trips += 1
        try:
            return fn()
        except (RedisError, RedisClusterException) as exc:
            raise StateError(f"redis cluster call failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(RedisError):
            self.r.close()


def wait_cluster(client: RedisCluster, timeout_s: float = 30.0) -> None:
    """Block until the cluster answers PING, or raise ``StateError``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except RedisError as exc:
            if time.monotonic() > deadline:
                raise StateError(f"redis cluster unreachable after {timeout_s:.0f} s: {exc}") from exc
            time.sleep(0.1)


__all__ = ["ClusterStore", "LeaseLost", "Refused", "connect_cluster", "owner_of", "wait_cluster"]
