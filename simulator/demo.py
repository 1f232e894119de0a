"""`geopush demo`: a small city, an embedded broker, the engine, the publisher, a live view, a map.

    city (simulator.city) ──trace.jsonl──> publisher ──MQTT──> broker ──> engine daemon (in-process)
                                                                   <── pushes / visits / dead letters
    demo watcher (the daemon's MQTT wrapper) <─────────────────────┘  -> live view + jsonl files

The engine runs as the real daemon (``engine.daemon.service.Service``) in this process, as an
asyncio task, against a real broker; what the view shows is what a subscriber to the output
topics receives. Everything ends after ``--duration`` seconds, when the whole trace has been
processed, or on Ctrl-C (a clean shutdown that still writes the outputs), then the summary is
printed and the map drawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from rich.console import Console

from engine.errors import GeopushError
from simulator.demo_view import DemoStats, Snapshot, plain_line, render_live, summary_text

log = logging.getLogger("geopush.demo")

# Share of --duration the publisher gets to play the city's day; the rest lets the engine drain.
_PLAY_SHARE = 0.8
_OUTPUT_TOPICS = ("push", "visits", "deadletter")


@dataclass
class DemoOptions:
    duration: float = 60.0
    broker: str | None = None
    stores: int = 300
    users: int = 300
    start_hour: float = 12.0  # local hour of the city's day where the played window starts
    hours: float = 1.0  # hours of city time played (the default window is the lunch rush)
    seed: int = 7
    out: Path = Path("geopush-demo")
    live: bool | None = None  # None: a live view when stdout is a terminal, plain lines otherwise
    plain_every_s: float = 2.0


@dataclass
class DemoResult:
    snapshot: Snapshot
    files: dict[str, Path] = field(default_factory=dict)
    exit_code: int = 0


class DemoError(GeopushError):
    """The demo could not run (a part failed to start); the message says which and why."""


# --- the trace ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceInfo:
    events: int
    first_ts: float
    last_ts: float

    @property
    def span_s(self) -> float:
        return max(0.0, self.last_ts - self.first_ts)


def scan_trace(path: Path) -> TraceInfo:
    """Count events (a batch counts its inner events) and find the time span."""
    n, lo, hi = 0, math.inf, -math.inf
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                n += 1
                continue
            evs = rec.get("events") if rec.get("type") == "batch" else None
            for ev in evs if isinstance(evs, list) else [rec]:
                n += 1
                ts = ev.get("ts") if isinstance(ev, dict) else None
                if isinstance(ts, int | float):
                    lo, hi = min(lo, ts), max(hi, ts)
    if n == 0 or lo == math.inf:
        raise DemoError(f"the trace {path} has no timestamped events")
    return TraceInfo(n, float(lo), float(hi))


def choose_speed(info: TraceInfo, duration_s: float) -> float:
    """Acceleration so the whole trace plays in ``_PLAY_SHARE`` of the duration (at least 1x)."""
    play = max(duration_s * _PLAY_SHARE, 0.5)
    return max(1.0, info.span_s / play)


# --- latency from the daemon's histogram --------------------------------------------------------


def histogram_quantile(hist: Any, q: float) -> float | None:
    """Quantile ``q`` (0..1) of a prometheus_client Histogram, interpolated linearly inside the
    bucket that holds it (what PromQL's histogram_quantile does). None when it has no samples."""
    buckets: list[tuple[float, float]] = []
    for metric in hist.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), float(s.value)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):  # beyond the last finite bucket: report its bound (a lower bound)
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


# --- the output watcher -------------------------------------------------------------------------


class OutputWatcher:
    """Subscribes to the engine's output topics with the daemon's MQTT wrapper, feeds the stats
    and writes each payload, one per line, to visits.jsonl / pushes.jsonl / deadletter.jsonl."""

    def __init__(self, url: str, prefix: str, stats: DemoStats, out_dir: Path) -> None:
        from engine.transport.mqtt import MqttLink, parse_broker_url

        self.prefix = prefix
        self.stats = stats
        self.link = MqttLink(
            parse_broker_url(url), client_id=f"geopush-demo-watch-{os.getpid()}", clean_session=True
        )
        self.paths = {
            "push": out_dir / "pushes.jsonl",
            "visits": out_dir / "visits.jsonl",
            "deadletter": out_dir / "deadletter.jsonl",
        }
        self._files: dict[str, IO[bytes]] = {}
        self._task: asyncio.Task[None] | None = None
        self.last_message = time.monotonic()
        self.received = 0

    async def start(self) -> None:
        for k, p in self.paths.items():
            self._files[k] = open(p, "wb")  # noqa: SIM115  (closed in stop())
        await self.link.connect()
        topics = [f"{self.prefix}/push/#", f"{self.prefix}/visits/#", f"{self.prefix}/deadletter"]
        await self.link.subscribe(topics, qos=1)
        self._task = asyncio.create_task(self._pump(), name="demo-watcher")

    async def _pump(self) -> None:
        while True:
            await self.link.wait_inbound(0.5)
            for m in self.link.take(5000):
                self._route(m.topic, m.payload)

    def _route(self, topic: str, payload: bytes) -> None:
        kind = topic[len(self.prefix) + 1 :].split("/", 1)[0]
        if kind not in self._files:
            return
        self.received += 1
        self.last_message = time.monotonic()
        self._files[kind].write(payload.rstrip(b"\n") + b"\n")
        try:
            rec = orjson.loads(payload)
        except orjson.JSONDecodeError:
            rec = {}
        if not isinstance(rec, dict):
            rec = {}
        if kind == "push":
            self.stats.on_push(rec)
        elif kind == "visits":
            self.stats.on_visit(rec)
        else:
            self.stats.on_deadletter(rec)

    async def settle(self, quiet_s: float = 0.5, timeout: float = 5.0) -> None:
        """Wait until no output arrived for ``quiet_s`` (the engine's outbox has drained)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - self.last_message < quiet_s:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for m in self.link.take(len(self.link.inbox)):
            self._route(m.topic, m.payload)
        await self.link.disconnect()
        for f in self._files.values():
            f.close()


# --- the parts others own, behind small seams ---------------------------------------------------


@dataclass(frozen=True)
class City:
    stores: Path
    campaigns: Path
    profiles: Path | None
    trace: Path
    truth: Path | None


def make_city(opts: DemoOptions, city_dir: Path) -> City:
    """Generate the demo city with the simulator (``geopush simulate city``) and cut the played
    window out of its trace. The simulator's day starts at 06:00 and people are home until about
    7, so the city is simulated from 06:00 (routines need the morning) and only the window from
    ``start_hour`` on is published: the engine sees the city at its liveliest."""
    from simulator import city as city_mod

    if not 6.0 <= opts.start_hour < 24.0:
        raise DemoError(f"--start {opts.start_hour:g}: the city's day runs from 06 to 24 h")
    lead_h = opts.start_hour - 6.0
    city_dir.mkdir(parents=True, exist_ok=True)
    rep = city_mod.generate_city(
        stores=opts.stores, users=opts.users, hours=lead_h + opts.hours, seed=opts.seed,
        out=city_dir,
    )  # fmt: skip
    city = city_files(city_dir)
    if lead_h <= 0:
        return city
    played = city_dir / "played-trace.jsonl"
    n = cut_trace(city.trace, played, since_ts=float(rep.t0) + lead_h * 3600.0)
    if n == 0:
        raise DemoError(f"the city's trace has no events after {opts.start_hour:g} h")
    return replace(city, trace=played)


def cut_trace(src: Path, dst: Path, since_ts: float) -> int:
    """Copy the lines of ``src`` whose ``ts`` is at or after ``since_ts`` (lines without a
    readable ts are kept: the engine should see them and say what is wrong)."""
    n = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            try:
                ts = orjson.loads(line).get("ts")
            except (orjson.JSONDecodeError, AttributeError):
                ts = None
            if not isinstance(ts, int | float) or ts >= since_ts:
                fout.write(line)
                n += 1
    return n


def city_files(city_dir: Path) -> City:
    def opt(name: str) -> Path | None:
        p = city_dir / name
        return p if p.exists() else None

    for need in ("stores.geojson", "campaigns.json", "trace.jsonl"):
        if not (city_dir / need).exists():
            raise DemoError(f"the city generator did not write {city_dir / need}")
    return City(
        stores=city_dir / "stores.geojson",
        campaigns=city_dir / "campaigns.json",
        profiles=opt("profiles.jsonl"),
        trace=city_dir / "trace.jsonl",
        truth=opt("truth.jsonl"),
    )


def core_factory_for(settings: Any) -> Callable[[Any], Any]:
    """The daemon's own factory: engine.core.Core over its state store, from settings' files."""
    from engine.daemon.service import real_core_factory

    return real_core_factory(settings)


def warm_up_engine(settings: Any) -> None:
    """Run the real core once on a throw-away state, so the match kernel's JIT compilation (a few
    seconds, once per process) happens before the clock starts and not inside the first
    event-to-push latencies. Best effort: a failure here only costs that warm-up."""
    try:
        from engine.core import Core
        from engine.daemon.loading import load_fences_and_campaigns
        from engine.events import decode
        from engine.state import MemoryStore

        loaded = load_fences_and_campaigns(settings)
        index = loaded["index"]
        first = index.catalog.stores[0]
        if first.center is not None:
            lon, lat = first.center
        else:
            pt = first.polygon.representative_point()
            lon, lat = pt.x, pt.y
        core = Core(index, loaded["campaigns"], MemoryStore())
        ts = 1_700_000_000.0
        for k in range(2):
            ev = {
                "type": "gps",
                "user": "warm-up",
                "ts": ts + k,
                "lon": lon,
                "lat": lat,
                "acc": 5.0,
            }
            core.process(decode(orjson.dumps(ev)))
        core.flush(ts + 86_400.0)
    except Exception as exc:  # noqa: BLE001
        log.warning("engine warm-up failed (latencies may include JIT compilation): %r", exc)


class Publisher:
    """``geopush simulate publish TRACE --broker URL --speed X`` as a child process: it gets a core
    of its own (no GIL shared with the engine), and stopping it is a signal. Its output goes to
    ``log``."""

    def __init__(self, trace: Path, url: str, speed: float, log: Path) -> None:
        self.trace, self.url, self.speed, self.log = trace, url, speed, log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "engine", "simulate", "publish", str(self.trace),
               "--broker", self.url, "--speed", f"{self.speed:.3f}", "--quiet"]  # fmt: skip
        with open(self.log, "wb") as fh:
            # Its own session: a Ctrl-C in the terminal reaches only the demo, which then stops
            # the publisher itself (rather than seeing it die and calling that a failure).
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def done(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    @property
    def error(self) -> str:
        """Why it failed ('' while running or after a clean exit)."""
        if self._proc is None or self._proc.returncode in (None, 0):
            return ""
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return f"exit code {self._proc.returncode}: " + " / ".join(tail)

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # lets it close its connection cleanly
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- orchestration ------------------------------------------------------------------------------


@contextlib.contextmanager
def busy(console: Console, message: str) -> Iterator[None]:
    """A spinner while something slow runs (a plain line when not on a terminal). Unlike
    ``console.status`` it leaves sys.stdout alone: numba wraps sys.stdout (colorama) the first
    time it compiles, and must not keep a proxy that dies with the spinner."""
    if not console.is_terminal:
        console.print(message, highlight=False, soft_wrap=True)
        yield
        return
    from rich.live import Live
    from rich.spinner import Spinner

    with Live(Spinner("dots", text=message), console=console, transient=True,
              redirect_stdout=False, redirect_stderr=False):  # fmt: skip
        yield


def check_broker(url: str, timeout: float = 3.0) -> None:
    """Fail fast, with what to do, when --broker names a broker nobody answers for."""
    import socket

    from engine.transport.mqtt import parse_broker_url

    addr = parse_broker_url(url)
    try:
        with socket.create_connection((addr.host, addr.port), timeout=timeout):
            pass
    except OSError as exc:
        raise DemoError(
            f"cannot reach the broker at {url} ({exc}); start it, or leave out --broker and "
            "the demo starts its own"
        ) from exc


def _fmt_clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M UTC") if ts > 0 else ""


@contextlib.contextmanager
def engine_log_to(path: Path) -> Iterator[None]:
    """The engine's log goes to a file while the demo runs (the live view owns the terminal);
    the "geopush" logger is left as it was found afterwards."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("geopush")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        handler.close()


class _Run:
    """One demo run inside an event loop."""

    def __init__(self, opts: DemoOptions, city: City, url: str, broker_label: str,
                 console: Console) -> None:  # fmt: skip
        self.opts, self.city, self.url, self.console = opts, city, url, console
        self.stats = DemoStats(
            duration_s=opts.duration, engine="daemon (in-process asyncio task)", broker=broker_label
        )
        self.info = scan_trace(city.trace)
        self.stats.events_total = self.info.events
        self.speed = choose_speed(self.info, opts.duration)
        self.stop = asyncio.Event()
        self._interrupts = 0
        self._messages = 0
        self._last_intake = time.monotonic()
        self.engine_figures: dict[str, list[float | None]] = {}

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.stats.stopping = "stopped by Ctrl-C"
            self.stop.set()
        else:  # a second Ctrl-C: stop waiting for a clean drain
            raise KeyboardInterrupt

    async def run(self) -> None:
        from engine.daemon.config import Settings, load_settings
        from engine.daemon.service import Service

        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        state = self.opts.out / "engine-state.sqlite"
        for p in state.parent.glob(state.name + "*"):
            p.unlink()  # a fresh engine: the demo replays the same city each time
        wanted: dict[str, Any] = {
            "broker": self.url,
            "state": state,
            "client_id": f"geopush-demo-engine-{os.getpid()}",
            "status_interval": 1.0,
            "drain_timeout": 5.0,
            "log_level": "INFO",
            "fences": self.city.stores,
            "campaigns": self.city.campaigns,
            "profiles": self.city.profiles,
            "owntracks": False,
        }
        # Only settings this daemon version knows (the daemon's settings may grow or shrink).
        known = set(Settings.model_fields)
        settings = load_settings({k: v for k, v in wanted.items() if k in known})
        with busy(self.console, "warming up the engine (compiling the match kernel)…"):
            await asyncio.to_thread(warm_up_engine, settings)
        svc = Service(settings, core_factory_for(settings))
        svc_task = asyncio.create_task(svc.run(), name="engine")
        watcher = OutputWatcher(self.url, settings.prefix, self.stats, self.opts.out)
        try:
            await self._wait_ready(svc, svc_task)
            await watcher.start()
            publisher = Publisher(
                self.city.trace, self.url, self.speed, self.opts.out / "publisher.log"
            )
            self.stats.started = time.monotonic()
            publisher.start()
            try:
                await self._watch(svc, watcher, publisher)
            finally:
                publisher.stop()
        finally:
            svc.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(svc_task), settings.drain_timeout + 10)
            await watcher.settle(quiet_s=0.3, timeout=3.0)
            self._sample(svc)
            await watcher.stop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)

    async def _wait_ready(self, svc: Any, svc_task: asyncio.Task[int]) -> None:
        ready = asyncio.ensure_future(svc.ready.wait())
        done, _ = await asyncio.wait({ready, svc_task}, timeout=20, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if svc_task.done() and svc_task.exception() is not None:
                raise DemoError(f"the engine failed to start: {svc_task.exception()}")
            raise DemoError(f"the engine did not connect to {self.url} within 20 s")

    def _sample(self, svc: Any) -> None:
        s = self.stats
        messages = int(svc.totals.get("messages", 0))
        if messages != self._messages:
            self._messages, self._last_intake = messages, time.monotonic()
        s.on_processed(int(svc.totals.get("events", 0)))
        s.sim_clock = _fmt_clock(svc.event_clock)
        hist = svc.metrics.event_to_push
        p50, p99 = histogram_quantile(hist, 0.5), histogram_quantile(hist, 0.99)
        if p50 is not None and p99 is not None:
            s.latency_p50_ms, s.latency_p99_ms = p50 * 1000, p99 * 1000
            s.latency_source = "daemon histogram: message receipt to the push's PUBACK"
        # Where the engine's time goes, for summary.json (p50/p99 ms per micro-batch).
        for name in ("match", "commit", "batch_size"):
            h = getattr(svc.metrics, name, None)
            if h is not None:
                q = [histogram_quantile(h, x) for x in (0.5, 0.99)]
                scale = 1.0 if name == "batch_size" else 1000.0
                self.engine_figures[name] = [None if v is None else v * scale for v in q]

    async def _watch(self, svc: Any, watcher: OutputWatcher, publisher: Publisher) -> None:
        live_mode = self.opts.live if self.opts.live is not None else self.console.is_terminal
        deadline = self.stats.started + self.opts.duration
        last_plain = 0.0
        live_cm: Any = contextlib.nullcontext()
        if live_mode:
            from rich.live import Live

            live_cm = Live(render_live(self.stats.snapshot()), console=self.console,
                           refresh_per_second=4, transient=False,
                           # no stdout/stderr proxies: libraries that wrap sys.stdout while the
                           # view runs (numba's colorama) would keep a dead proxy. Logs go to a file.
                           redirect_stdout=False, redirect_stderr=False)  # fmt: skip
        with live_cm as live:
            while True:
                self._sample(svc)
                now = time.monotonic()
                if live is not None:
                    live.update(render_live(self.stats.snapshot()))
                elif now - last_plain >= self.opts.plain_every_s:
                    last_plain = now
                    self.console.print(
                        plain_line(self.stats.snapshot()), highlight=False, soft_wrap=True
                    )
                reason = self._should_stop(svc, watcher, publisher, now, deadline)
                if reason:
                    self.stats.stopping = self.stats.stopping or reason
                    if live is not None:
                        live.update(render_live(self.stats.snapshot()))
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.25)

    def _should_stop(self, svc: Any, watcher: OutputWatcher, publisher: Publisher, now: float,
                     deadline: float) -> str:  # fmt: skip
        if self.stop.is_set():
            return "stopped by Ctrl-C"
        if now >= deadline:
            return f"time is up ({self.opts.duration:g}s)"
        if publisher.done:
            if publisher.error:
                raise DemoError(f"the publisher failed: {publisher.error}")
            # Played and drained: the engine took no message and published nothing for a while
            # (the broker may still hold messages after the publisher's last PUBACK).
            if now - self._last_intake > 1.5 and now - watcher.last_message > 1.0:
                return "the whole trace was played"
        return ""


def run_demo(
    opts: DemoOptions, console: Console | None = None, city: City | None = None
) -> DemoResult:
    """Run the demo end to end; returns the final snapshot and the files written. ``city``: use
    these files instead of generating a city (tests, or a city of your own)."""
    console = console or Console()
    out = opts.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".geopush-demo-write-test").touch()
        (out / ".geopush-demo-write-test").unlink()
    except OSError as exc:
        raise DemoError(f"cannot write to --out {out}: {exc}") from exc
    if opts.broker:
        check_broker(opts.broker)  # before minutes of work, not after
    clean_out(out)
    files: dict[str, Path] = {}
    with engine_log_to(out / "engine.log"):
        if city is None:
            with busy(console, f"generating a city: {opts.stores} stores, {opts.users} people…"):
                city = make_city(opts, out / "city")
        files["city"] = city.stores.parent
        broker = None
        if opts.broker:
            url, label = opts.broker, f"external {opts.broker}"
        else:
            from simulator.embedded_broker import start_broker

            broker = start_broker()
            url, label = broker.url, f"embedded {broker.kind} {broker.url}"
        try:
            run = _Run(opts, city, url, label, console)
            console.print(
                f"[bold]geopush demo[/]: {run.info.events:,} events over "
                f"{run.info.span_s / 3600:.1f} h of city time, played at {run.speed:,.0f}x "
                f"through {label}; engine log in {out / 'engine.log'}",
                highlight=False,
                soft_wrap=True,
            )
            asyncio.run(run.run())
        finally:
            if broker is not None:
                broker.stop()
        snap = run.stats.snapshot(final=True)
        files.update({k: p for k, p in (("pushes", out / "pushes.jsonl"),
                                        ("visits", out / "visits.jsonl"),
                                        ("dead letters", out / "deadletter.jsonl"))})  # fmt: skip
        files["engine log"] = out / "engine.log"
        with busy(console, "drawing the map…"):
            files["map"] = draw_map(city, out, snap)
        files["summary"] = write_summary(
            out / "summary.json", snap, run.speed, run.info, run.engine_figures
        )
    console.print(
        summary_text(snap, {k: str(v) for k, v in files.items()}), highlight=False, soft_wrap=True
    )
    return DemoResult(snapshot=snap, files=files, exit_code=0)


def draw_map(city: City, out: Path, snap: Snapshot) -> Path:
    from simulator.mapplot import render_map

    stats = render_map(
        out / "map.png",
        stores=city.stores,
        trace=city.trace,
        visits=out / "visits.jsonl",
        pushes=out / "pushes.jsonl",
        title="geopush demo",
        subtitle=f"{snap.events_processed:,} events, engine: {snap.engine}",
    )
    assert stats.out is not None
    return stats.out


def write_summary(
    path: Path, snap: Snapshot, speed: float, info: TraceInfo, engine: dict[str, Any]
) -> Path:
    body = asdict(snap) | {
        "speed": speed,
        "trace_span_s": info.span_s,
        # p50/p99 per micro-batch: core time (ms), SQLite commit (ms), messages per batch
        "engine_batch_p50_p99": engine,
    }
    path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path


def clean_out(out: Path) -> None:
    """Remove a previous demo's result files, so a stale one is never taken for this run's.
    Only the names the demo writes; the city's files are overwritten by the generator."""
    for name in ("pushes.jsonl", "visits.jsonl", "deadletter.jsonl", "map.png", "summary.json"):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
