"""Webhooks in a worker group (``--group``, ``--state redis://...``): ``RedisWebhookStore`` is the
``WebhookQueue`` of engine/daemon/webhooks.py over the group's Redis. The dispatcher (signing,
CloudEvents headers, backoff, pausing, metrics) is the same code as with a SQLite state file.

Endpoints are shared by the group: registered through any worker's API, every worker delivers to
them. Each worker delivers ITS OWN committed outputs (its outbox stream ``P:out:{<worker>}``,
engine/stores/redis_store.py) from queues of its own, one per endpoint, so no two workers ever
deliver the same output and a worker needs no lock to deliver.

Keys (``P`` the prefix, ``gp`` as the Redis state store's; ``W`` a worker's MQTT client id):

=========================  ========================================================================
``P:wh:eps``               hash endpoint_id -> JSON (merchant_id, url, secret, events, description,
                           created)
``P:wh:after``             hash endpoint_id -> Redis time (ms) of its registration: it gets the
                           outputs of outbox entries from that ms on (an entry id starts with its
                           ms; an entry of the same ms just before the registration is included)
``P:wh:fail``              hash endpoint_id -> consecutive failed attempts (all workers' together)
``P:wh:paused``            hash endpoint_id -> JSON [when, why] while paused
``P:wh:ver``               counter, moved by every registration and deletion
``P:wh:workers``           set of the workers that have queues
``P:wh:cur:{W}``           the last entry of W's outbox stream turned into queue entries
``P:wh:q:{W}:<endpoint>``  stream: W's undelivered outputs for the endpoint, fields ``o``
                           (out_id), ``t`` (ce-type), ``p`` (the MQTT payload), ``e`` (enqueued)
``P:wh:a:{W}:<endpoint>``  hash: queue entry -> attempts, ``<entry>:e`` -> the last error
=========================  ========================================================================

Nothing committed is lost: the dispatcher reads W's outbox entries after its cursor and, in ONE
script, appends their queue entries and moves the cursor; the script refuses (and the dispatcher
reads the endpoints again) if an endpoint was registered or deleted since it read them. An
outbox entry is deleted only once published on MQTT AND passed by the cursor
(``RedisStore.mark_sent`` keeps a published entry past the cursor; ``webhooks_passed`` deletes
it once passed), so a worker killed at any point finds every output it committed either in a
queue or still in its outbox, where the next start enqueues it. With no endpoint registered,
the cursor follows the outbox's newest entry (atomically with "no endpoint": one registered
meanwhile keeps it). Delivery is at least once, as with SQLite: a queue entry goes after the 2xx.

A worker that never comes back keeps its undelivered outputs in Redis (its queues, like its
outbox) until a worker with its client id starts again.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import redis
from redis.exceptions import RedisError

from engine.daemon.webhooks import (
    Delivery,
    Endpoint,
    classify,
)
from engine.errors import StateError
from engine.stores.redis_store import RedisStore, connect, decode_entry, stream_pos

PREFIX = "gp"
_ENQUEUE_TRIES = 20  # endpoints registered or deleted while enqueueing: read them again

# KEYS: eps, after, ver. ARGV: endpoint_id, JSON. Returns the registration's Redis time (ms).
_CREATE_LUA = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ms)
redis.call('INCR', KEYS[3])
return ms
"""

# KEYS: eps, after, fail, paused, ver, workers. ARGV: endpoint_id, prefix.
_DELETE_LUA = """
for i = 1, 4 do redis.call('HDEL', KEYS[i], ARGV[1]) end
for _, w in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  redis.call('DEL', ARGV[2] .. ':wh:q:{' .. w .. '}:' .. ARGV[1],
             ARGV[2] .. ':wh:a:{' .. w .. '}:' .. ARGV[1])
end
redis.call('INCR', KEYS[5])
return 1
"""

# KEYS: ver, cursor, workers, then the queues. ARGV: expected version, new cursor, worker, the
# cursor read from, then per queue entry: queue key index (into KEYS), out_id, ce-type, payload,
# enqueued. 0 = the endpoints changed, 2 = the cursor moved (a stop's flush beside the last
# step): nothing written; 1 = done.
_ENQUEUE_LUA = """
if tostring(redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[2]) or '0-0') ~= ARGV[4] then return 2 end
for i = 5, #ARGV, 5 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'o', ARGV[i + 1], 't', ARGV[i + 2],
             'p', ARGV[i + 3], 'e', ARGV[i + 4])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

# KEYS: eps, cursor, outbox stream. ARGV: the cursor the caller holds. With no endpoint, the
# cursor moves to the stream's last generated id. Returns the cursor.
_SKIP_IDLE_LUA = """
local cur = redis.call('GET', KEYS[2]) or ARGV[1]
if redis.call('HLEN', KEYS[1]) > 0 or redis.call('EXISTS', KEYS[3]) == 0 then return cur end
local info = redis.call('XINFO', 'STREAM', KEYS[3])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then
    redis.call('SET', KEYS[2], info[i + 1])
    return info[i + 1]
  end
end
return cur
"""

# KEYS: eps, fail, queue, attempts. ARGV: endpoint_id, number done, done entries..., then
# (entry, error) pairs of the failed ones. Returns the consecutive failures after this.
_SETTLE_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('DEL', KEYS[3], KEYS[4])
  return 0
end
local nd = tonumber(ARGV[2])
for i = 3, 2 + nd do
  redis.call('XDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i], ARGV[i] .. ':e')
end
if #ARGV > 2 + nd then
  for i = 3 + nd, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[4], ARGV[i], 1)
    redis.call('HSET', KEYS[4], ARGV[i] .. ':e', ARGV[i + 1])
  end
  return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
redis.call('HSET', KEYS[2], ARGV[1], 0)
return 0
"""

# KEYS: eps, fail, paused. ARGV: endpoint_id, "pause" or "resume", JSON [when, why].
_STATE_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'pause' then
  redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[3])
else
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], 0)
end
return 1
"""


class RedisWebhookStore:
    """The webhook endpoints and queues of a worker group in Redis (module doc).

    ``worker`` (its MQTT client id) and ``outbox`` (its ``RedisStore``) for a worker's
    dispatcher; the API needs neither (it registers, lists and counts). ``outbox`` is told of
    every move of the cursor, and at once of where it stands, so the outbox keeps what the
    webhooks have not taken yet."""

    # With no endpoint, how often the cursor follows the outbox: until it does, a published
    # entry stays in the stream (memory, and a repeat on MQTT after a kill).
    idle_every_s = 1.0
    threaded = True  # its own connection pool: the dispatcher calls it from threads

    def __init__(
        self,
        url: str,
        *,
        worker: str | None = None,
        outbox: RedisStore | None = None,
        prefix: str = PREFIX,
    ) -> None:
        self.url = url
        self.path = url  # for messages, as WebhookStore's
        self.worker = worker
        self.prefix = prefix
        self.outbox = outbox
        self.r: redis.Redis = connect(url, reconnect_s=2.0)
        k = f"{prefix}:wh"
        self.k_eps, self.k_after, self.k_fail = f"{k}:eps", f"{k}:after", f"{k}:fail"
        self.k_paused, self.k_ver, self.k_workers = f"{k}:paused", f"{k}:ver", f"{k}:workers"
        self._create = self.r.register_script(_CREATE_LUA)
        self._delete = self.r.register_script(_DELETE_LUA)
        self._enqueue = self.r.register_script(_ENQUEUE_LUA)
        self._skip_idle = self.r.register_script(_SKIP_IDLE_LUA)
        self._settle = self.r.register_script(_SETTLE_LUA)
        self._state = self.r.register_script(_STATE_LUA)
        self._cached: tuple[list[Endpoint], int] | None = None  # (endpoints, version): enqueue
        if outbox is not None:
            if worker is None:
                raise ValueError("a dispatcher's store needs its worker (client id)")
            outbox.webhooks_passed(self.cursor())  # from now on, mark_sent keeps what is past

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except RedisError as exc:
            raise StateError(f"redis (webhooks) {what} failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(RedisError):
            self.r.close()

    def _q(self, endpoint_id: str, worker: str | None = None) -> str:
        return f"{self.prefix}:wh:q:{{{worker or self.worker}}}:{endpoint_id}"

    def _att(self, endpoint_id: str, worker: str | None = None) -> str:
        return f"{self.prefix}:wh:a:{{{worker or self.worker}}}:{endpoint_id}"

    def _cur(self) -> str:
        return f"{self.prefix}:wh:cur:{{{self.worker}}}"

    # --- endpoints (the API) ---------------------------------------------------------------------

    def create(
        self, merchant_id: str, url: str, events: list[str] | None = None, description: str = ""
    ) -> Endpoint:
        ep = Endpoint.new(merchant_id, url, events, description, 0)
        doc = json.dumps({
            "merchant_id": merchant_id, "url": url, "secret": ep.secret, "events": list(ep.events),
            "description": description, "created": ep.created,
        })  # fmt: skip
        ep.after_seq = int(
            self._call(
                "register", self._create, keys=[self.k_eps, self.k_after, self.k_ver],
                args=[ep.endpoint_id, doc],
            )  # fmt: skip
        )
        return ep

    def _endpoints_for_enqueue(self, fresh: bool) -> tuple[list[Endpoint], int]:
        """The endpoints and their version, kept between enqueue steps (the enqueue script
        refuses a stale version, then they are read again)."""
        if fresh or self._cached is None:
            eps, ver, _workers = self._snapshot()
            self._cached = (eps, ver)
        return self._cached

    def _snapshot(self) -> tuple[list[Endpoint], int, list[str]]:
        """Every endpoint, the endpoints' version and the workers, read at one instant."""
        pipe = self.r.pipeline(transaction=True)
        for key in (self.k_eps, self.k_after, self.k_fail, self.k_paused):
            pipe.hgetall(key)
        pipe.get(self.k_ver)
        pipe.smembers(self.k_workers)
        eps, after, fail, paused, ver, workers = self._call("endpoints", pipe.execute)
        out = []
        for eid_raw, raw in eps.items():
            d = json.loads(raw)
            p = json.loads(paused[eid_raw]) if eid_raw in paused else None
            out.append(
                Endpoint(
                    eid_raw.decode(), d["merchant_id"], d["url"], d["secret"],
                    tuple(d["events"]), d["description"], float(d["created"]),
                    int(after.get(eid_raw, 0)), int(fail.get(eid_raw, 0)),
                    None if p is None else float(p[0]), None if p is None else str(p[1]),
                )  # fmt: skip
            )
        out.sort(key=lambda e: (e.created, e.endpoint_id))
        return out, int(ver or 0), sorted(w.decode() for w in workers)

    def _count(self, eps: list[Endpoint], workers: list[str]) -> None:
        """Set each endpoint's ``pending``: its queues' lengths, every worker's."""
        if not eps or not workers:
            return
        pipe = self.r.pipeline(transaction=False)
        for ep in eps:
            for w in workers:
                pipe.xlen(self._q(ep.endpoint_id, w))
        lens = iter(self._call("count", pipe.execute))
        for ep in eps:
            ep.pending = sum(int(next(lens)) for _ in workers)

    def endpoints(self, merchant_id: str | None = None, count: bool = True) -> list[Endpoint]:
        eps, _ver, workers = self._snapshot()
        if merchant_id is not None:
            eps = [e for e in eps if e.merchant_id == merchant_id]
        if count:
            self._count(eps, workers)
        return eps

    def get(self, endpoint_id: str, count: bool = True) -> Endpoint | None:
        pipe = self.r.pipeline(transaction=True)
        for key in (self.k_eps, self.k_after, self.k_fail, self.k_paused):
            pipe.hget(key, endpoint_id)
        raw, after, fail, paused = self._call("endpoint", pipe.execute)
        if raw is None:
            return None
        d = json.loads(raw)
        p = json.loads(paused) if paused is not None else None
        ep = Endpoint(
            endpoint_id, d["merchant_id"], d["url"], d["secret"], tuple(d["events"]),
            d["description"], float(d["created"]), int(after or 0), int(fail or 0),
            None if p is None else float(p[0]), None if p is None else str(p[1]),
        )  # fmt: skip
        if count:
            workers = sorted(w.decode() for w in self._call("workers", self.r.smembers, self.k_workers))
            self._count([ep], workers)
        return ep

    def delete(self, endpoint_id: str) -> None:
        """Remove the endpoint and its undelivered queues (every worker's)."""
        keys = [self.k_eps, self.k_after, self.k_fail, self.k_paused, self.k_ver, self.k_workers]
        self._call("delete", self._delete, keys=keys, args=[endpoint_id, self.prefix])

    def resume(self, endpoint_id: str) -> None:
        self._call(
            "resume", self._state, keys=[self.k_eps, self.k_fail, self.k_paused],
            args=[endpoint_id, "resume", ""],
        )  # fmt: skip

    def pause(self, endpoint_id: str, reason: str) -> None:
        self._call(
            "pause", self._state, keys=[self.k_eps, self.k_fail, self.k_paused],
            args=[endpoint_id, "pause", json.dumps([time.time(), reason])],
        )  # fmt: skip

    # --- the dispatcher's side (a worker's own outbox and queues) ---------------------------------

    def _outbox(self) -> RedisStore:
        if self.outbox is None:
            raise StateError("this webhook store has no worker outbox (the API's)")
        return self.outbox

    def cursor(self) -> str:
        """The last entry of this worker's outbox stream enqueued ("0-0" before the first)."""
        raw = self._call("cursor", self.r.get, self._cur())
        return raw.decode() if raw else "0-0"

    def enqueue_after(self, cursor: str, limit: int) -> tuple[str, int, set[str]]:
        """Turn up to ``limit`` outbox entries after ``cursor`` into queue entries for the
        endpoints that want them, in one script with the cursor's move (refused and redone when
        the endpoints changed meanwhile). Returns (new cursor, entries read, endpoints that got
        entries)."""
        outbox = self._outbox()
        entries = self._call(
            "outbox read", self.r.xrange, outbox.outbox_key, f"({cursor}", "+", count=limit
        )
        if not entries:
            return cursor, 0, set()
        last = bytes(entries[-1][0]).decode()
        now = repr(time.time())
        for attempt in range(_ENQUEUE_TRIES):
            eps, ver = self._endpoints_for_enqueue(fresh=attempt > 0)
            by_merchant: dict[str, list[Endpoint]] = {}
            for ep in eps:
                by_merchant.setdefault(ep.merchant_id, []).append(ep)
            keys: list[str] = [self.k_ver, self._cur(), self.k_workers]
            slot: dict[str, int] = {}
            args: list[Any] = [ver, last, self.worker, cursor]
            woke: set[str] = set()
            for sid, fields in entries:
                ms = stream_pos(bytes(sid))[0]
                for row in decode_entry(fields):
                    if row.out_id.startswith("dl:"):
                        continue
                    kind = classify(row.payload)
                    if kind is None:
                        continue
                    ce_type, merchant = kind
                    for ep in by_merchant.get(merchant, ()):
                        if ms >= ep.after_seq and ep.wants(ce_type):  # (to the ms)
                            i = slot.get(ep.endpoint_id)
                            if i is None:
                                keys.append(self._q(ep.endpoint_id))
                                i = slot[ep.endpoint_id] = len(keys)
                            args += [i, row.out_id, ce_type, row.payload, now]
                            woke.add(ep.endpoint_id)
            done = int(self._call("enqueue", self._enqueue, keys=keys, args=args))
            if done == 2:  # moved by another step meanwhile: go on from where it is
                return self.cursor(), 0, set()
            if done:
                break
        else:
            raise StateError(f"webhook endpoints kept changing over {_ENQUEUE_TRIES} tries")
        return last, len(entries), woke

    def skip_idle(self, cursor: str) -> str:
        """No endpoint: the cursor follows this worker's outbox (atomically with "no endpoint")."""
        outbox = self._outbox()
        raw = self._call(
            "skip", self._skip_idle, keys=[self.k_eps, self._cur(), outbox.outbox_key],
            args=[cursor],
        )  # fmt: skip
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def passed(self, cursor: str) -> None:
        """The cursor moved (its write is done): the worker's outbox deletes what it kept up
        to it (on the event loop: the outbox's state is the loop's)."""
        self._outbox().webhooks_passed(cursor)

    def due(self, endpoint_id: str, limit: int) -> list[Delivery]:
        q = self._q(endpoint_id)
        rows = self._call("queue read", self.r.xrange, q, "-", "+", count=limit)
        if not rows:
            return []
        ids = [bytes(sid).decode() for sid, _f in rows]
        atts = self._call("attempts", self.r.hmget, self._att(endpoint_id), ids)
        return [
            Delivery(
                sid, endpoint_id, f[b"o"].decode(), f[b"t"].decode(), bytes(f[b"p"]),
                float(f[b"e"]), int(a or 0),
            )  # fmt: skip
            for sid, (_raw, f), a in zip(ids, rows, atts, strict=True)
        ]

    def settle(self, endpoint_id: str, done: list[Any], failed: list[tuple[Any, str]]) -> int:
        args: list[Any] = [endpoint_id, len(done), *done]
        for i, err in failed:
            args += [i, err]
        keys = [self.k_eps, self.k_fail, self._q(endpoint_id), self._att(endpoint_id)]
        return int(self._call("settle", self._settle, keys=keys, args=args))

    def pending(self) -> int:
        """This worker's undelivered outputs, all endpoints."""
        eids = self._call("endpoints", self.r.hkeys, self.k_eps)
        if not eids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for eid in eids:
            pipe.xlen(self._q(eid.decode()))
        return sum(int(n) for n in self._call("count", pipe.execute))


__all__ = ["RedisWebhookStore"]
