"""`geopush bench api`: what the HTTP API costs the event path, and how fast a store change
through it takes effect, over a real mosquitto and `geopush run` with a large catalog.

The catalog is the e2e city (simulator.bench.workload: 20 x 20 stores, one enter campaign per
merchant, users walking into them) plus filler stores (circles 25 m, 100 m apart, far from the
city) up to ``--stores``. The event load is `geopush bench e2e`'s (simulator/bench/e2e.py: its
raw-socket publishers, its Watch on the engine's status and pushes, its backlog-drain maximum):

1. **throughput**: the engine's maximum (a preloaded backlog of single-fix messages drained,
   10% -> 100%, from its own status) in three configurations, one after the other in the same
   run: the API off (no ``--http``), on and idle, on under ``--rate`` requests/s of mixed API
   calls (60% GET one store, 20% a page of ``GET /v1/stores?bbox=...``, 20% PUT of a filler
   store moved a little). ``--rounds`` rounds, the configurations interleaved; the median of
   each is reported, and the API's cost relative to off.
2. **upsert to effect**: ``--upserts`` times, with the engine idle and the API on (3 s after its
   start, as a drain): PUT a new
   store (a new place, merchant m0, whose campaign pushes on enter) through HTTP, then publish
   one fix inside it for a fresh user, and time from the PUT's start until the push that fix
   caused reaches the Watch (so it includes the fix's trip through the broker, the engine's
   batch and the push's trip back); the PUT's own round trip is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FILLER_STEP_M = 100.0
FILLER_LON0, FILLER_LAT0 = 10.0, 50.0  # far from the city (simulator.bench.workload)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    from simulator.bench.e2e import plain_help

    p = sub.add_parser(
        "api",
        help="the HTTP API's cost on the event path, and store upsert to effect latency",
        description=plain_help(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--stores",
        type=int,
        default=500_000,
        metavar="N",
        help="stores in the catalog (default 500000)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds of backlog per throughput measurement (10,000 msgs/s; default 3)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        metavar="N",
        help="rounds of the three throughput configurations (default 2)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=100.0,
        metavar="R",
        help="API requests/s under load (default 100)",
    )
    p.add_argument(
        "--upserts",
        type=int,
        default=100,
        metavar="N",
        help="upsert-to-effect samples (default 100)",
    )
    p.add_argument("--publishers", type=int, default=1, metavar="N", help="publisher processes")
    p.add_argument(
        "--batch-size", type=int, default=1000, metavar="N", help="the engine's --batch-size"
    )
    p.add_argument(
        "--mix",
        default="get:60,list:20,put:20",
        metavar="K:W,...",
        help="the API calls under load and their weights: get (one store), list (a page of "
        "GET /v1/stores?bbox=...), put (a filler store moved a little); default "
        "get:60,list:20,put:20",
    )
    p.add_argument(
        "--group",
        action="store_true",
        help="also time upserts across a worker group: PUT on worker A, until worker B's index "
        "answers (two workers, a redis-server of their own)",
    )
    p.add_argument("--broker", metavar="URL", help="use this broker instead of starting mosquitto")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_main, uvloop=False, engine_arg=[])  # fmt: skip


def _filler(i: int, merchant: str = "fill") -> dict[str, Any]:
    from simulator.bench.workload import M_LAT

    side = 1000
    lon = FILLER_LON0 + (i % side) * FILLER_STEP_M / (M_LAT * 0.64)
    lat = FILLER_LAT0 + (i // side) * FILLER_STEP_M / M_LAT
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [round(lon, 7), round(lat, 7)]},
        "properties": {"store_id": f"f{i}", "merchant_id": merchant, "radius_m": 25.0},
    }


def write_world(folder: Path, stores: int) -> int:
    """The e2e city plus filler stores up to ``stores``; the number of filler stores."""
    from simulator.bench.e2e import CITY_SIDE
    from simulator.bench.workload import City

    city = City(CITY_SIDE)
    city.write(folder)
    cat = city.catalog()
    n = max(0, stores - len(cat["features"]))
    with (folder / "fences.geojson").open("w") as f:
        f.write('{"type":"FeatureCollection","features":[')
        f.write(",".join(json.dumps(x, separators=(",", ":")) for x in cat["features"]))
        for i in range(n):
            f.write("," + json.dumps(_filler(i), separators=(",", ":")))
        f.write("]}")
    return n


class ApiLoad:
    """A thread sending mixed API calls at ``rate``/s over one keep-alive connection."""

    def __init__(
        self, url: str, token: str, rate: float, fillers: int, mix: str = "get:60,list:20,put:20"
    ) -> None:
        self.url, self.token, self.rate, self.fillers = url, token, rate, fillers
        weights = {k: float(w) for k, w in (part.split(":") for part in mix.split(","))}
        unknown = set(weights) - {"get", "list", "put"}
        if unknown:
            raise SystemExit(f"--mix: unknown call(s) {sorted(unknown)}; use get, list, put")
        total = sum(weights.values())
        self.cuts = (
            weights.get("get", 0) / total,
            (weights.get("get", 0) + weights.get("list", 0)) / total,
        )
        self.stop = threading.Event()
        self.done = 0
        self.errors: list[str] = []
        self.latency: list[float] = []
        self._thread = threading.Thread(target=self._run, name="api-load", daemon=True)

    def __enter__(self) -> ApiLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._arun())

    async def _arun(self) -> None:
        """Open loop: each request starts at its time, whatever the others are doing (up to
        64 at once). The client is a minimal HTTP/1.1 one over keep-alive connections (``_Http``):
        it shares the machine's 2 cores with the engine, and httpx's ~1 ms of Python a request
        here would be measured as the API's cost."""
        rnd = random.Random(7)
        pool = _Http(self.url, self.token)
        while not self.stop.is_set():  # until the engine's API answers
            try:
                await pool.request("GET", "/v1/health")
                break
            except OSError:
                await asyncio.sleep(0.05)
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        k = 0
        while not self.stop.is_set():
            due = t0 + k / self.rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            k += 1
            if len(tasks) < 64:
                task = asyncio.create_task(self._one(pool, rnd))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                self.errors.append("64 requests in progress: one skipped")
        await asyncio.gather(*tasks, return_exceptions=True)
        pool.close()

    async def _one(self, http: _Http, rnd: random.Random) -> None:
        i = rnd.randrange(max(1, self.fillers))
        x = rnd.random()
        t = time.monotonic()
        try:
            if x < self.cuts[0]:
                status, body = await http.request("GET", f"/v1/stores/f{i}")
            elif x < self.cuts[1]:
                lon, lat = _filler(i)["geometry"]["coordinates"]
                box = f"{lon - 0.002},{lat - 0.002},{lon + 0.002},{lat + 0.002}"
                status, body = await http.request("GET", f"/v1/stores?bbox={box}&limit=10")
            else:
                f = _filler(i)
                f["geometry"]["coordinates"][1] += rnd.choice((1, -1)) * 1e-5
                status, body = await http.request("PUT", f"/v1/stores/f{i}", json.dumps(f).encode())
            if status >= 400:
                self.errors.append(f"{status} {body[:200]!r}")
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            self.errors.append(repr(exc))
        self.latency.append(time.monotonic() - t)
        self.done += 1


class _Http:
    """Keep-alive HTTP/1.1 connections to one server, one request at a time on each."""

    def __init__(self, url: str, token: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.auth = f"Authorization: Bearer {token}\r\nHost: {host}\r\n".encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: list[asyncio.StreamWriter] = []

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.idle:
            try:
                return await self._request(self.idle.pop(), method, path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # a kept-alive connection the server closed meanwhile (idle 5 s): anew
        conn = await asyncio.open_connection(self.host, self.port)
        self.all.append(conn[1])
        return await self._request(conn, method, path, body)

    async def _request(
        self,
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        method: str,
        path: str,
        body: bytes,
    ) -> tuple[int, bytes]:
        reader, writer = conn
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self.auth
        if body:
            head += b"Content-Type: application/json\r\n"
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        size = next(int(v) for k, _, v in (x.partition(b":") for x in lines[1:])
                    if k.lower() == b"content-length")  # fmt: skip
        data = await reader.readexactly(size) if size else b""
        self.idle.append((reader, writer))
        return status, data

    def close(self) -> None:
        for writer in self.all:
            writer.close()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the engine's API process), from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


async def _drain(url: str, args: argparse.Namespace, engine: Any, watch: Any, say: Any,
                 load: ApiLoad | None = None, cpu: dict[str, list[float]] | None = None,
                 key: str = "") -> float:  # fmt: skip
    """The engine's maximum msgs/s draining a backlog (e2e's method), without a restart: the
    running engine is frozen (SIGSTOP) while the broker takes the backlog, then thawed and
    timed from its own status, 10% -> 100% with every output acknowledged. (A restart would
    put the start-up's work, e.g. the API's listing tables, inside the measurement.)"""
    import signal

    from simulator.bench.e2e import _backlog, _publish

    n = _backlog("single", args.duration)
    pid = engine.proc.pid if engine.proc is not None and engine.proc.poll() is None else None
    if pid is None:
        pid = await engine.start(watch)
    await asyncio.sleep(3.0)  # settle: start-up work done (warm-up, the API's tables)
    base = watch.messages(pid)
    tag = f"d{time.monotonic_ns()}-"
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.to_thread(_publish, url, "single", tag, n, None, args.publishers)
    finally:
        os.kill(pid, signal.SIGCONT)
    from simulator.bench.e2e import proc_cpu

    k0 = len(watch.status)
    kids = _children(pid)  # the API's process (--http)
    t0, e0, a0 = time.monotonic(), proc_cpu(pid), sum(proc_cpu(k) for k in kids)
    if load is not None:
        load.__enter__()
    try:
        await watch.wait(
            lambda: watch.idle(pid, base + n), 600, f"the engine to drain {n} messages"
        )
    finally:
        if load is not None:
            load.__exit__()
    wall = time.monotonic() - t0
    if cpu is not None and wall > 0:  # CPU shares over the drain (1.0: one core all along)
        used = proc_cpu(pid) - e0
        cpu.setdefault(f"{key}_engine", []).append(round(used / wall, 3))
        # the engine's CPU per message: what the API costs the event path even when the
        # machine's cores are shared (throughput then also measures the neighbours)
        cpu.setdefault(f"{key}_engine_us_per_msg", []).append(round(used / n * 1e6, 2))
        if kids:
            api = sum(proc_cpu(k) for k in kids) - a0
            cpu.setdefault(f"{key}_api", []).append(round(api / wall, 3))
    pts = [
        (st["ts"], st["counters"].get("messages", 0) - base, st.get("outbox_pending", 0))
        for st in watch.status[k0:]
        if st.get("pid") == pid and "counters" in st
    ]
    lo = next((p for p in pts if p[1] >= 0.1 * n), None)
    hi = next((p for p in pts if p[1] >= n and p[2] == 0), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return float(hi[1] - lo[1]) / float(hi[0] - lo[0])


async def _upserts(url: str, api: str, token: str, args: argparse.Namespace, watch: Any,
                   say: Any) -> dict[str, Any]:  # fmt: skip
    import httpx

    from simulator.bench.pub import RawPublisher

    effect: list[float] = []
    put: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    with RawPublisher(url, client_id=f"bench-api-{os.getpid()}") as pub:
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=10.0) as http:
            for k in range(args.upserts):
                lon, lat = 30.0 + k * 0.01, 40.0  # a new place for each
                feat = {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [lon, lat]},
                    "properties": {"store_id": f"new{k}", "merchant_id": "m0", "radius_m": 30.0},
                }
                user = f"apiu{k}"
                fix = {
                    "type": "gps",
                    "user": user,
                    "ts": time.time(),
                    "lon": lon,
                    "lat": lat,
                    "acc": 5.0,
                }
                packets = RawPublisher.prepare(
                    [(f"geopush/events/{user}", json.dumps(fix).encode())]
                )
                t0 = time.time()  # the Watch's receive times are wall clock
                r = await http.put(f"/v1/stores/new{k}", json=feat)
                t1 = time.time()
                if r.status_code != 201:
                    raise RuntimeError(f"bench: PUT failed: {r.status_code} {r.text[:300]}")
                await asyncio.to_thread(pub.publish, packets)
                await watch.wait(lambda u=user: any(p[0] == u for p in watch.pushes), 30,
                                 f"the push of {user}")  # fmt: skip
                got = next(p[2] for p in watch.pushes if p[0] == user)
                effect.append((got - t0) * 1000)
                put.append((t1 - t0) * 1000)
    from simulator.bench.e2e import _pct

    res = {
        "samples": len(effect),
        "effect_p50_ms": round(_pct(effect, 0.5), 2),
        "effect_p99_ms": round(_pct(effect, 0.99), 2),
        "put_p50_ms": round(_pct(put, 0.5), 2),
        "put_p99_ms": round(_pct(put, 0.99), 2),
    }
    say(f"[upsert] {res}")
    return res


async def _bench(url: str, args: argparse.Namespace, folder: Path, say: Any) -> dict[str, Any]:
    from engine.api.state import ApiState
    from simulator.bench.e2e import Engine, Watch
    from simulator.embedded_broker import free_port

    t = time.monotonic()
    fillers = write_world(folder, args.stores)
    say(f"[world] {args.stores:,} stores written in {time.monotonic() - t:.1f} s")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    watch = Watch(url)
    await watch.start()
    off = Engine(url, folder, args)
    # the token in the state file the engine runs on (e2e's Engine names it)
    st = ApiState(off.cmd[off.cmd.index("--state") + 1])
    _info, token = st.create_token("operator", name="bench")
    st.close()
    on_args = argparse.Namespace(**{**vars(args), "engine_arg": [f"--http=127.0.0.1:{port}"]})
    on = Engine(url, folder, on_args)
    rates: dict[str, list[float]] = {"off": [], "on_idle": [], "on_load": []}
    loads: list[dict[str, Any]] = []
    cpu: dict[str, list[float]] = {}  # CPU shares (cores) of the engine and its API process
    res: dict[str, Any] = {"mix": args.mix, "stores": args.stores, "rate": args.rate, "duration_s": args.duration,
                           "publishers": args.publishers, "batch_size": args.batch_size}  # fmt: skip
    try:
        t = time.monotonic()
        await off.start(watch)
        say(f"[engine] started with {args.stores:,} stores in {time.monotonic() - t:.1f} s")
        for rnd in range(args.rounds):
            on.stop()
            rates["off"].append(await _drain(url, args, off, watch, say, cpu=cpu, key="off"))
            off.stop()
            rates["on_idle"].append(await _drain(url, args, on, watch, say, cpu=cpu, key="on_idle"))
            load = ApiLoad(api, token, args.rate, fillers, args.mix)
            rates["on_load"].append(
                await _drain(url, args, on, watch, say, load, cpu=cpu, key="on_load")
            )
            on.stop()  # the next round starts with the API off
            loads.append({"requests": load.done, "errors": len(load.errors),
                          "first_error": load.errors[0] if load.errors else None,
                          "request_p50_ms": round(statistics.median(load.latency) * 1000, 2)
                          if load.latency else None})  # fmt: skip
            say(f"[round {rnd + 1}] cpu {({k: v[-1] for k, v in cpu.items()})}")
            say(f"[round {rnd + 1}] msgs/s off {rates['off'][-1]:,.0f}, on idle "
                f"{rates['on_idle'][-1]:,.0f}, on + {args.rate:.0f} req/s {rates['on_load'][-1]:,.0f} "
                f"({loads[-1]})")  # fmt: skip
        med = {k: statistics.median(v) for k, v in rates.items()}
        def _int(x: float) -> int | None:  # a drain too short to time is NaN: null
            return None if math.isnan(x) else round(x)

        res["throughput_msgs_per_s"] = {k: _int(v) for k, v in med.items()}
        res["throughput_rounds"] = {k: [_int(x) for x in v] for k, v in rates.items()}
        res["api_cost"] = {
            "on_idle": round(1 - med["on_idle"] / med["off"], 3),
            "on_load": round(1 - med["on_load"] / med["off"], 3),
        }
        res["api_load"] = loads
        res["cpu_cores"] = {k: statistics.median(v) for k, v in cpu.items()}
        res["cpu_cores_rounds"] = cpu
        await on.start(watch)
        await asyncio.sleep(3.0)  # settle, as before a drain: the API's start-up work done
        res["upsert"] = await _upserts(url, api, token, args, watch, say)
    finally:
        on.stop()
        off.stop()
        await watch.stop()
    if args.group:
        res["group_upsert"] = await _group_upserts(url, args, folder, say)
    return res


async def _group_upserts(
    url: str, args: argparse.Namespace, folder: Path, say: Any
) -> dict[str, Any]:
    """Two workers of a group over their own redis-server: PUT a new store on worker A, then
    poll worker B's API until B's live index answers with it (every 1 ms)."""
    import httpx

    from engine.api.redis_state import RedisApiState
    from simulator.bench.e2e import ENGINE_ID, Engine, Watch, _pct
    from simulator.bench.redis_server import RedisServer
    from simulator.embedded_broker import free_port

    with RedisServer(fsync="everysec") as redis_srv:
        st = RedisApiState(redis_srv.url)
        _info, token = st.create_token("operator", name="bench")
        st.close()
        ports = {"a": free_port(), "b": free_port()}
        common = [f"--state={redis_srv.url}", "--group=bench"]
        a = Engine(url, folder, argparse.Namespace(**{**vars(args), "engine_arg": [
            *common, f"--http=127.0.0.1:{ports['a']}"]}))  # fmt: skip
        b = Engine(url, folder, argparse.Namespace(**{**vars(args), "engine_arg": [
            *common, f"--http=127.0.0.1:{ports['b']}", f"--client-id={ENGINE_ID}-b"]}))  # fmt: skip
        watch = Watch(url)
        await watch.start()
        headers = {"Authorization": f"Bearer {token}"}
        seen: list[float] = []
        put: list[float] = []
        try:
            await a.start(watch)
            b.proc = subprocess.Popen(b.cmd, stdout=subprocess.DEVNULL)
            hb = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['b']}", headers=headers)
            ha = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['a']}", headers=headers)
            async with ha, hb:
                for _ in range(6000):  # worker B up (it loads the same catalog)
                    try:
                        if (await hb.get("/v1/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
                for k in range(args.upserts):
                    feat = {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [30.0 + k * 0.01, 41.0]},
                        "properties": {"store_id": f"g{k}", "merchant_id": "m0", "radius_m": 30.0},
                    }
                    t0 = time.monotonic()
                    r = await ha.put(f"/v1/stores/g{k}", json=feat)
                    t1 = time.monotonic()
                    if r.status_code != 201:
                        raise RuntimeError(f"bench: PUT failed: {r.status_code} {r.text[:300]}")
                    while (await hb.get(f"/v1/stores/g{k}")).status_code != 200:
                        if time.monotonic() - t0 > 30:
                            raise TimeoutError("bench: worker B never saw the change")
                        await asyncio.sleep(0.001)
                    seen.append((time.monotonic() - t0) * 1000)
                    put.append((t1 - t0) * 1000)
        finally:
            b.stop()
            a.stop()
            await watch.stop()
    res = {
        "samples": len(seen),
        "other_worker_p50_ms": round(_pct(seen, 0.5), 2),
        "other_worker_p99_ms": round(_pct(seen, 0.99), 2),
        "put_p50_ms": round(_pct(put, 0.5), 2),
        "put_p99_ms": round(_pct(put, 0.99), 2),
    }
    say(f"[group upsert] {res}")
    return res


def _main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    say = console.print
    with tempfile.TemporaryDirectory(prefix="geopush-api-") as tmp:
        broker = None
        url = args.broker
        if url is None:
            from simulator.embedded_broker import MosquittoBroker

            extra = "max_inflight_messages 2000\nset_tcp_nodelay true\n" + (
                "user root\n" if os.geteuid() == 0 else ""
            )
            broker = MosquittoBroker(extra_config=extra, max_queued_messages=0)
            broker.start()
            url = broker.url
        try:
            results = asyncio.run(_bench(url, args, Path(tmp), say))
        finally:
            if broker is not None:
                broker.stop()
    print(json.dumps(results, indent=2))
    return 0


__all__ = ["register", "write_world"]
