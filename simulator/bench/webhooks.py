"""`geopush bench webhooks`: webhook delivery on loopback (engine/daemon/webhooks.py).

The receiver is a bare ASGI app under uvicorn in a process of its own (it answers 204 and notes
each ``webhook-id`` with its arrival time). The sending side is this process, as in the daemon:
outputs are committed into a SQLite state file's outbox (``SQLiteStore.commit``, the daemon's
commit), the dispatcher is told of each commit and enqueues and delivers them on the same loop.

* latency: ``--rate`` outputs/s committed in micro-batches for ``--duration`` seconds; from the
  commit's return to the receiver's arrival time (p50/p99/max);
* throughput: a backlog of ``--backlog`` committed outputs delivered from scratch, over
  ``--endpoints`` endpoints of the receiver: deliveries/s of this one process; and, as the
  ceiling, the same number of bare httpx POSTs (half the backlog) with the same concurrency;
* a receiver down (``--down-s`` seconds, 0 to skip; default backoff: 1 s doubling, capped at
  300 s): outputs keep coming while it is down; once it is back, when the first delivery
  arrives, when the backlog is all in, how many attempts failed, and duplicates.

``--queue redis``: as a worker of a group instead: outputs committed into a worker's outbox
stream in a redis-server of its own (``RedisStore.commit``, then marked sent as after each
PUBACK), queued and delivered through ``RedisWebhookStore`` (engine/daemon/webhooks_redis.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``webhooks`` to ``geopush bench``."""
    p = sub.add_parser(
        "webhooks",
        help="webhook delivery on loopback: commit-to-delivery p99, deliveries/s, a receiver down",
        description=(__doc__ or "").split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate", type=float, default=200.0, help="outputs/s for the latency run (200)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the latency run (10)")
    p.add_argument("--backlog", type=int, default=10_000, help="outputs of the throughput run (10000)")
    p.add_argument("--endpoints", type=int, default=4, help="endpoints of the throughput run (4)")
    p.add_argument("--down-s", type=float, default=60.0, help="receiver down for (60; 0: skip)")
    p.add_argument("--queue", choices=("sqlite", "redis"), default="sqlite",
                   help="the queue: a SQLite state file (one daemon), or Redis (a group's worker)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=main)


# --- the receiver (its own process) --------------------------------------------------------------


def _receiver(port: int, ready: Any) -> None:
    import uvicorn

    seen: list[tuple[str, float]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        if scope["method"] == "GET":
            body = json.dumps(seen).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        for k, v in scope["headers"]:
            if k == b"webhook-id":
                seen.append((v.decode(), time.time()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                            lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    ready.set()
    server.run()


class Receiver:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: Any = None

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_receiver, args=(self.port, ready), daemon=True)
        self.proc.start()
        ready.wait(30)
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the receiver did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None

    def seen(self) -> list[tuple[str, float]]:
        with urllib.request.urlopen(self.url("stats"), timeout=30) as r:
            return [(i, float(t)) for i, t in json.loads(r.read())]


# --- the sending side (this process) -------------------------------------------------------------


def _outputs(merchant: str, start: int, n: int) -> list[Any]:
    from engine.outputs import Coupon, Push

    return [
        Push(push_id=f"{merchant}-p{i}", user=f"u{i}", campaign_id="c1", store_id="s1",
             merchant_id=merchant, visit_id=f"v{i}", trigger="enter", ts=time.time(),
             coupon=Coupon(title="10%", value=10, currency="EUR", expires_in_s=3600))
        for i in range(start, start + n)
    ]  # fmt: skip


class _Side:
    """Where outputs are committed and queued: a SQLite state file (``redis_url`` None), or a
    group worker's outbox stream and webhook queues in Redis (flushed first)."""

    def __init__(self, folder: Path, urls: list[str], redis_url: str | None) -> None:
        from engine.daemon.pipeline import Renderer, Topics

        self.redis = redis_url is not None
        self.queue: Any
        if redis_url is None:
            from engine.daemon.webhooks import WebhookStore
            from engine.stores.sqlite_store import SQLiteStore

            state = folder / "state.db"
            self.store: Any = SQLiteStore(state, render=Renderer(Topics()))
            hooks: Any = WebhookStore(state)
            self.queue = state
        else:
            from engine.daemon.webhooks_redis import RedisWebhookStore
            from engine.stores.redis_store import RedisStore, connect

            self.store = RedisStore(connect(redis_url), worker="w1", render=Renderer(Topics()))
            self.store.r.flushall()
            hooks = RedisWebhookStore(redis_url)
            self.queue = RedisWebhookStore(redis_url, worker="w1", outbox=self.store)
        for k, url in enumerate(urls):
            hooks.create(f"m{k}", url)
        hooks.close()

    def commit(self, outs: list[Any]) -> list[Any]:
        rows = list(self.store.commit(outs))
        if self.redis:  # published: marked sent as after each PUBACK
            self.store.mark_sent([r.out_id for r in rows])
        return rows

    def close(self) -> None:
        self.store.close()


def _setup(folder: Path, urls: list[str], redis_url: str | None = None) -> _Side:
    return _Side(folder, urls, redis_url)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _latency(
    folder: Path, rec: Receiver, rate: float, duration: float, redis_url: str | None = None
) -> dict[str, Any]:
    from engine.daemon.metrics import Metrics
    from engine.daemon.webhooks import WebhookDispatcher

    store = _setup(folder, [rec.url()], redis_url)
    disp = WebhookDispatcher(store.queue, Metrics())
    await disp.start()
    committed: dict[str, float] = {}
    tick = 0.01  # micro-batches every 10 ms
    per = max(1, round(rate * tick))
    k = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < duration:
            rows = store.commit(_outputs("m0", k, per))
            now = time.time()
            for r in rows:
                committed[r.out_id] = now
            disp.wake()
            k += per
            await asyncio.sleep(max(0.0, t0 + (k / per) * tick - time.monotonic()))
        deadline = time.monotonic() + 30
        while len({i for i, _ in rec.seen()}) < len(committed) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await disp.stop()
        store.close()
    lat = [t - committed[i] for i, t in rec.seen() if i in committed]
    return {
        "outputs": len(committed),
        "rate_per_s": round(len(committed) / duration),
        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "p99_ms": round(1000 * _pct(lat, 0.99), 2),
        "max_ms": round(1000 * max(lat), 2) if lat else None,
    }


async def _throughput(
    folder: Path, rec: Receiver, backlog: int, endpoints: int, redis_url: str | None = None
) -> dict[str, Any]:
    from engine.daemon.metrics import Metrics
    from engine.daemon.webhooks import WebhookDispatcher

    store = _setup(folder, [rec.url(f"m{k}") for k in range(endpoints)], redis_url)
    per = backlog // endpoints
    for k in range(endpoints):
        for s in range(0, per, 1000):
            store.commit(_outputs(f"m{k}", s, min(1000, per - s)))
    disp = WebhookDispatcher(store.queue, Metrics())
    cpu0, t0 = time.process_time(), time.monotonic()
    await disp.start()
    try:
        while disp.store.pending() or disp.metrics.totals["webhooks_delivered"] == 0:
            await asyncio.sleep(0.05)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    finally:
        await disp.stop()
        store.close()
    n = len(rec.seen())
    return {
        "deliveries": n,
        "endpoints": endpoints,
        "seconds": round(elapsed, 2),
        "per_s": round(n / elapsed),
        "cpu_us_per_delivery": round(1e6 * cpu / max(1, n), 1),
    }


async def _ceiling(rec: Receiver, n: int, endpoints: int) -> dict[str, Any]:
    """The same POSTs from bare httpx clients (one per endpoint, 8 in flight each): no queue,
    no signing, no SQLite. What httpx and the receiver allow on this machine."""
    import httpx

    body = b'{"kind":"push"}'
    clients = [httpx.AsyncClient(limits=httpx.Limits(max_connections=8)) for _ in range(endpoints)]

    async def worker(c: httpx.AsyncClient, k: int) -> None:
        for i in range(k):
            await c.post(rec.url(), content=body, headers={"webhook-id": f"x{id(c)}-{i}"})

    cpu0, t0 = time.process_time(), time.monotonic()
    per = n // endpoints // 8
    await asyncio.gather(*(worker(c, per) for c in clients for _ in range(8)))
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    for c in clients:
        await c.aclose()
    done = per * 8 * endpoints
    return {"posts": done, "per_s": round(done / elapsed),
            "cpu_us_per_post": round(1e6 * cpu / done, 1)}  # fmt: skip


async def _down(
    folder: Path, rec: Receiver, down_s: float, rate: float, redis_url: str | None = None
) -> dict[str, Any]:
    from engine.daemon.metrics import Metrics
    from engine.daemon.webhooks import WebhookDispatcher

    store = _setup(folder, [rec.url()], redis_url)
    rec.stop()
    metrics = Metrics()
    disp = WebhookDispatcher(store.queue, metrics)
    await disp.start()
    ids: list[str] = []
    k = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < down_s:
            ids += [r.out_id for r in store.commit(_outputs("m0", k, 10))]
            k += 10
            disp.wake()
            await asyncio.sleep(10 / rate)
        rec.start()
        back = time.time()
        failed = metrics.totals["webhooks_failed"]
        deadline = time.monotonic() + 400  # the capped backoff's worst case and then some
        while time.monotonic() < deadline:
            seen = rec.seen()
            if len({i for i, _ in seen}) >= len(ids):
                break
            await asyncio.sleep(0.2)
    finally:
        await disp.stop()
        store.close()
    seen = rec.seen()
    times = sorted(t for _, t in seen)
    return {
        "down_s": down_s,
        "outputs_while_down": len(ids),
        "failed_attempts_while_down": int(failed),
        "first_delivery_after_back_s": round(times[0] - back, 2) if times else None,
        "all_delivered_after_back_s": round(times[-1] - back, 2) if times else None,
        "delivered": len({i for i, _ in seen}),
        "duplicates": len(seen) - len({i for i, _ in seen}),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib

    out: dict[str, Any] = {"queue": args.queue}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        redis_url = None
        if args.queue == "redis":
            from simulator.bench.redis_server import RedisServer

            redis_url = stack.enter_context(RedisServer()).url
        for name in ("latency", "throughput", "ceiling", "down"):
            if name == "down" and not args.down_s:
                continue
            folder = Path(tmp) / name
            folder.mkdir()
            rec = Receiver()
            rec.start()
            try:
                if name == "latency":
                    out[name] = await _latency(folder, rec, args.rate, args.duration, redis_url)
                elif name == "throughput":
                    out[name] = await _throughput(
                        folder, rec, args.backlog, args.endpoints, redis_url
                    )
                elif name == "ceiling":
                    out[name] = await _ceiling(rec, args.backlog // 2, args.endpoints)
                else:
                    out[name] = await _down(folder, rec, args.down_s, args.rate, redis_url)
            finally:
                rec.stop()
            if not args.json:
                print(f"{name}: {out[name]}", flush=True)
    return out


def main(args: argparse.Namespace) -> int:
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out, indent=2))
    return 0
