"""The daemon: MQTT in, micro-batches through the core, one SQLite commit per batch, acks, outbox.

Hot path, per micro-batch (everything between two awaits, so a batch is atomic in this process):

1. take up to ``batch_size`` received messages (never waits to fill a batch: latency first);
2. recognise redeliveries (``dup`` flag and digest already committed) -> ack, do not re-run;
3. decode; a bad message becomes a dead letter (an outbox row) with its reason;
4. ``core.process(events)`` -> outputs (visits, pushes);
5. ``store.commit(outputs, dead letters, input digests)``: ONE transaction;
6. PUBACK every message of the batch (only now is a message "accepted": durable);
7. hand the committed rows to the outbox, which publishes them concurrently.

A kill -9 anywhere before 5 loses nothing (no PUBACK was sent; the broker redelivers from the
persistent session); between 5 and 6 the redelivered messages are recognised by digest; after 6
unsent outbox rows are re-published at start with the same ids.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import json
import logging
import operator
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from engine.daemon.config import Settings
from engine.daemon.metrics import Metrics
from engine.daemon.outbox import Outbox
from engine.daemon.pipeline import Decoder, Renderer, Topics, deadletter_row, digest
from engine.errors import DecodeError, GeopushError, TransportError
from engine.state import Output, StateStore
from engine.stores.redis_store import commit_batch, open_store
from engine.stores.sqlite_store import OutRow, SQLiteStore
from engine.transport.mqtt import Inbound, MqttLink, Will, parse_broker_url

log = logging.getLogger("geopush.daemon")

FULL_GC_EVERY_S = 600.0  # an unfrozen full collection, at most this often, when the feed is idle
_TS = operator.attrgetter("ts")


@functools.cache
def _event_type(cls: type) -> str:
    """The wire type of an event class ("gps", ...)."""
    from engine.events import EVENT_TYPES

    names = {c: t for t, c in EVENT_TYPES.items()}
    return str(names.get(cls, cls.__name__.lower()))


class CoreLike(Protocol):
    """What the daemon needs from ``engine.core.Core``."""

    @property
    def watermark(self) -> float: ...

    def process(self, events: Sequence[Any]) -> list[Output]: ...

    def flush(self, now_ts: float) -> list[Output]: ...

    def restore(self, users: Sequence[Any], *, watermark: float | None = None) -> None: ...


CoreFactory = Callable[[SQLiteStore], CoreLike]
# Loads fresh fences/campaigns for a hot reload: returns kwargs for ``core.reload``.
Reloader = Callable[[], dict[str, Any]]


class Service:
    def __init__(
        self,
        settings: Settings,
        core_factory: CoreFactory,
        *,
        reloader: Reloader | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] | None = None,
        load_warnings: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        # What loading the fences and campaigns warned about (``real_core_factory``): repeated
        # in the start-up message, so a campaign that can never push is not missed.
        self.load_warnings = list(load_warnings)
        self.topics = Topics(prefix=settings.prefix, client_id=settings.client_id)
        self.core_factory = core_factory
        self.reloader = reloader
        self.metrics = metrics or Metrics()
        self.totals = self.metrics.totals
        self.decoder = Decoder(self.topics)
        # Wall clock for the idle flush (tests inject one).
        self._clock = clock
        self.event_clock = 0.0
        self.state = "starting"
        self._stopping = False
        self._reload_requested = False
        self._wake = asyncio.Event()
        self._main: asyncio.Task[int] | None = None
        self.store: SQLiteStore | None = None
        self.core: CoreLike | None = None
        self.link: MqttLink | None = None
        self.outbox: Outbox | None = None
        self._last_full_gc = time.monotonic()
        self._inbox_warned = 0.0
        self.ready = asyncio.Event()  # set once connected and subscribed (tests wait on it)

    # --- control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: drain and checkpoint. Second call: exit now (state is safe at any point)."""
        if self._stopping:
            log.warning("second stop request: exiting without draining")
            if self._main is not None:
                self._main.cancel()
            return
        log.info("stop requested: draining")
        self._stopping = True
        self.state = "draining"
        self._wake.set()

    def request_reload(self) -> None:
        log.info("reload requested")
        self._reload_requested = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> int:
        self._main = asyncio.current_task()  # type: ignore[assignment,unused-ignore]
        s = self.settings
        self.store = store = open_store(s, Renderer(self.topics))  # SQLite, or Redis (--group)
        try:
            self.core = self.core_factory(store)
            self._write_pid()
            if s.metrics_port:
                self.metrics.serve(s.metrics_port)
            address = parse_broker_url(s.broker)
            self.link = link = MqttLink(
                address,
                client_id=s.client_id,
                clean_session=False,
                manual_ack=True,
                will=Will(self.topics.status, self._status_payload("offline", "connection lost")),
                # Unlimited in paho: the outbox bounds what is in flight (--max-in-flight), and
                # with a paho limit every PUBACK scans paho's whole in-flight table.
                max_inflight_out=0,
                username=s.username,
                password=s.password,
            )
            self.outbox = Outbox(link, store, self.metrics, max_in_flight=s.max_in_flight)
            await self._connection_loop()
            await self._drain()
            return 0
        except asyncio.CancelledError:
            if self.link is not None:
                self.link.drop()
            return 1
        finally:
            store.close()
            self._remove_pid()

    async def _connection_loop(self) -> None:
        link, outbox = self._require_link(), self._require_outbox()
        backoff = 0.2
        while not self._stopping:
            link.inbox.clear()  # unacked: the broker redelivers them on this new connection
            try:
                await link.connect()
                await link.subscribe(self._subscriptions(), qos=1)
            except TransportError as exc:
                await link.disconnect()
                delay = backoff * (0.5 + random.random())
                log.warning("broker unavailable (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.2
            self.metrics.connected.set(1)
            n = outbox.reset_from_store()
            ws = self.load_warnings
            log.info(
                "connected to %s as %s; re-publishing %d unsent outputs%s",
                self.settings.broker, self.settings.client_id, n,
                f"; {len(ws)} load warning(s): " + "; ".join(ws) if ws else "",
            )  # fmt: skip
            self.state = "online"
            tasks = [
                asyncio.create_task(outbox.run(), name="outbox"),
                asyncio.create_task(self._status_loop(), name="status"),
            ]
            self.ready.set()
            try:
                await self._batch_loop()
            finally:
                if link.connected and self._stopping:
                    # drain the outbox while still connected, then stop the helpers
                    self.state = "draining"
                    self._publish_status()
                    await outbox.wait_idle(self.settings.drain_timeout)
                outbox.stop()
                tasks[1].cancel()  # status: a plain sleep loop
                done, pending = await asyncio.wait(tasks, timeout=2.0)
                for t in pending:
                    t.cancel()
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        log.error("%s task failed: %r", t.get_name(), t.exception())
            if not self._stopping:
                self.ready.clear()
                self.metrics.connected.set(0)
                self.state = "reconnecting"
                log.warning("connection to the broker lost; reconnecting")
                await link.disconnect()

    async def _drain(self) -> None:
        link, outbox, store = self._require_link(), self._require_outbox(), self._require_store()
        outbox.flush_marks()
        store.checkpoint()
        if link.connected:
            self.state = "offline"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    link.publish(
                        self.topics.status, self._status_payload("offline", "shutdown"), retain=True
                    ),
                    2.0,
                )
        await link.disconnect()
        self.metrics.connected.set(0)
        log.info("stopped: outbox %d unsent (re-published on next start)", outbox.pending)

    # --- the hot path --------------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        link, outbox = self._require_link(), self._require_outbox()
        s = self.settings
        enough = min(s.batch_size, s.linger_batch)  # a batch this big does not linger
        last_msg = time.monotonic()
        while link.connected:
            if self._reload_requested:
                await self._reload()
            if outbox.pending > s.max_pending:
                await outbox.wait_below(s.max_pending // 2)
            if self._stopping:
                # Drain what the broker already handed us (bounded by its in-flight window).
                while link.inbox and link.connected:
                    self.handle(link.take(s.batch_size))
                return
            if not link.inbox:
                waiter = asyncio.ensure_future(link.wait_inbound(s.idle_flush or 1.0))
                woke = asyncio.ensure_future(self._wake.wait())
                disc = asyncio.ensure_future(link.wait_disconnected())
                await asyncio.wait({waiter, woke, disc}, return_when=asyncio.FIRST_COMPLETED)
                for f in (waiter, woke, disc):
                    f.cancel()
                self._wake.clear()
            if s.linger_ms and len(link.inbox) < enough:
                await self._linger(link, enough, s.linger_ms / 1000.0)
            if len(link.inbox) < s.batch_size:
                link.pump(s.batch_size - len(link.inbox))
            batch = link.take(s.batch_size)
            if batch:
                self.handle(batch)
            now = time.monotonic()
            depth = len(link.inbox)
            self.metrics.inbox.set(depth)
            if depth > 20 * s.batch_size and now - self._inbox_warned > 60.0:
                # Intake is bounded by the broker's in-flight window (we ack only after commit);
                # a broker with an unlimited window (mosquitto max_inflight_messages 0) lets
                # memory be the only bound.
                self._inbox_warned = now
                log.warning(
                    "%d received messages wait for processing: set the broker's in-flight "
                    "window (mosquitto max_inflight_messages) to ~2x --batch-size", depth
                )
            since_gc = now - self._last_full_gc
            if (since_gc > FULL_GC_EVERY_S and not batch and now - last_msg > 1.0) or since_gc > 6 * FULL_GC_EVERY_S:
                self._last_full_gc = now
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            if batch:
                last_msg = now
            elif s.idle_flush and now - last_msg >= s.idle_flush:
                last_msg = now
                self._idle_flush()
            if batch:
                await asyncio.sleep(0)  # let the outbox and PUBACKs run between batches

    @staticmethod
    async def _linger(link: MqttLink, enough: int, linger_s: float) -> None:
        """Let a small batch grow to ``enough`` messages for at most ``linger_s`` after its
        oldest message arrived.

        Every micro-batch pays fixed costs (a SQLite transaction, the PUBACKs' write, wake-ups):
        on a live stream of ~20k single-event messages/s, batches of a few messages cost the
        engine ~43 µs of CPU per message, against ~32 µs with a 1 ms linger (bench e2e).
        Waiting for company costs at most ``linger_s`` of latency. A batch holding ``enough``
        (``--linger-batch``, 64: the fixed costs are shared by then), or whose oldest message
        already waited that long, goes at once: under load, the messages that arrived while the
        previous batch ran make the next one. The loop does not watch the socket meanwhile
        (``hold_reads``): the sleeps' ends read it, in one go."""
        link.pump(enough - len(link.inbox))
        if not link.inbox:
            return
        deadline = link.inbox[0].received + linger_s
        step = max(0.001, linger_s / 8)  # the loop's timers have ~1 ms resolution anyway
        held = link.hold_reads()
        try:
            while len(link.inbox) < enough and link.connected:
                left = deadline - time.time()
                if left <= 0.0:
                    return
                await asyncio.sleep(min(left, step))
                link.pump(enough - len(link.inbox))
        finally:
            if held:
                link.release_reads()

    def handle(self, batch: list[Inbound]) -> None:
        """Process one micro-batch: decode, core, commit, ack, hand outputs to the outbox."""
        store, core, link = self._require_store(), self._require_core(), self._require_link()
        m, totals = self.metrics, self.totals
        control = self.topics.control
        keys = [digest(x.topic, x.payload) for x in batch]
        dup_keys = [k for x, k in zip(batch, keys, strict=True) if x.dup]
        seen = store.seen_inputs(dup_keys) if dup_keys else set()
        events: list[Any] = []
        dead: list[OutRow] = []
        inputs: list[bytes] = []
        per_msg: list[tuple[Inbound, bytes, list[Any]]] = []
        for x, k in zip(batch, keys, strict=True):
            if k in seen:
                m.duplicates.inc()
                totals["duplicates"] += 1
                continue
            if x.topic == control:
                self._control(x.payload)
                continue
            inputs.append(k)
            try:
                evs = self.decoder(x.topic, x.payload)
            except DecodeError as exc:
                dead.append(
                    deadletter_row(
                        self.topics, x.topic, x.payload, exc.reason, exc.detail, k, x.received
                    )
                )
                m.rejects.labels(exc.reason).inc()
                totals["rejects"] += 1
                totals[f"reject:{exc.reason}"] += 1
                continue
            events.extend(evs)
            per_msg.append((x, k, evs))
        m.messages.inc(len(batch))
        totals["messages"] += len(batch)
        t0 = time.perf_counter()
        try:
            outputs = core.process(events) if events else []
        except GeopushError:
            raise
        except Exception:
            log.exception(
                "core failed on a batch of %d events; retrying message by message", len(events)
            )
            store.rollback()
            self._process_one_by_one(per_msg, dead)
            outputs = []  # committed and queued message by message
        t1 = time.perf_counter()
        self._require_outbox().fold_marks()  # outputs acked since the last batch: same commit
        # commit_batch: a shared (Redis) store may report a conflict; the batch is then re-run.
        outputs, rows = commit_batch(
            core, store, events, outputs, extra=dead, inputs=inputs,
            meta=lambda: watermark_meta(core),
        )  # fmt: skip
        t2 = time.perf_counter()
        link.ack_many(batch)  # the batch's PUBACKs as one buffer
        self._account(events, outputs)
        m.match.observe(t1 - t0)
        m.commit.observe(t2 - t1)
        m.batches.inc()
        m.batch_size.observe(len(batch))
        totals["batches"] += 1
        if rows:
            self._require_outbox().push(rows, received=batch[0].received)
        # Cached user records are long-lived and acyclic: move everything alive out of the cyclic
        # collector's generations (as replay does), or its full collections rescan the whole
        # cache and stall the loop for 100s of ms. Cyclic garbage frozen by mistake is reclaimed
        # by the occasional full collection at an idle moment (_collect_when_idle).
        gc.freeze()

    def _process_one_by_one(
        self, per_msg: list[tuple[Inbound, bytes, list[Any]]], dead: list[OutRow]
    ) -> None:
        """A core bug must not poison the stream: commit message by message, dead-letter the
        message(s) the core cannot process (reason ``engine_error``)."""
        store, core = self._require_store(), self._require_core()
        for x, k, evs in per_msg:
            try:
                outs = core.process(evs)
            except Exception as exc:  # noqa: BLE001  (reported in the dead letter and the log)
                store.rollback()
                log.error("core failed on a message from %s: %r", x.topic, exc)
                dead.append(
                    deadletter_row(
                        self.topics, x.topic, x.payload, "engine_error", repr(exc), k, x.received
                    )
                )
                self.metrics.rejects.labels("engine_error").inc()
                continue
            outs, rows = commit_batch(core, store, evs, outs)  # re-runs on a group conflict
            self._account([], outs)  # the batch accounts for the events themselves
            self._require_outbox().push(rows, received=x.received)

    def _idle_flush(self) -> None:
        """The feed went quiet: time out visits up to the wall clock (minus the core's lateness
        allowance) so silent users still get their dwell and exit on a live feed."""
        core, store = self._require_core(), self._require_store()
        lateness = float(getattr(getattr(core, "config", None), "sweep_lateness_s", 0.0))
        now = (self._clock or time.time)() - lateness
        wm = core_watermark(core)
        if wm is None or now <= wm:
            return
        outs = core.flush(now)
        if outs:
            outs, rows = commit_batch(  # a group's workers may flush the same timers: re-run
                core, store, [], outs, rerun=lambda: core.flush(now),
                meta=lambda: watermark_meta(core),
            )  # fmt: skip
            self._account([], outs)
            self._require_outbox().push(rows)

    def _account(self, events: list[Any], outputs: list[Output]) -> None:
        m, totals = self.metrics, self.totals
        if events:
            # Per batch, not per event: one labelled Prometheus increment per event type (a
            # labelled inc() per event cost ~9% of the engine's CPU under batch load).
            for cls, n in collections.Counter(map(type, events)).items():
                m.events.labels(_event_type(cls)).inc(n)
            totals["events"] += len(events)
            self.event_clock = max(self.event_clock, max(map(_TS, events)))
        if outputs:
            # likewise per batch and kind, not per output
            kinds = collections.Counter(
                None if type(o).__name__ == "Push" else getattr(o, "event", "visit")
                for o in outputs
            )
            pushes = kinds.pop(None, 0)
            if pushes:
                m.pushes.inc(pushes)
                totals["pushes"] += pushes
            for ev_kind, n in kinds.items():
                m.visits.labels(str(ev_kind)).inc(n)
                totals["visits"] += n

    # --- control, reload, status ---------------------------------------------------------------

    def _control(self, payload: bytes) -> None:
        cmd = payload.decode("utf-8", "replace").strip().lower()
        if cmd == "reload":
            self.request_reload()
        else:
            log.warning("ignored control command %r (known: reload)", cmd[:50])

    async def _reload(self) -> None:
        self._reload_requested = False
        if self.reloader is None:
            log.warning("reload requested but this daemon has no fences/campaigns to reload")
            return
        core = self._require_core()
        try:
            # Load in a thread: messages keep queueing (unacked) in the broker meanwhile.
            fresh = await asyncio.to_thread(self.reloader)
            reload = getattr(core, "reload", None)
            if reload is None:
                raise GeopushError("this core does not support reload")
            reload(**fresh)
        except Exception as exc:  # noqa: BLE001  (a bad file must not stop the daemon)
            self.metrics.reloads.labels("error").inc()
            self.totals["reload_errors"] += 1
            log.error("reload failed, keeping the previous fences and campaigns: %s", exc)
            return
        self.metrics.reloads.labels("ok").inc()
        self.totals["reloads"] += 1
        log.info("reloaded fences and campaigns")

    async def _status_loop(self) -> None:
        while True:
            self._publish_status()
            await asyncio.sleep(self.settings.status_interval)

    def _publish_status(self) -> None:
        link = self.link
        if link is not None and link.connected:
            fut = link.publish_nowait(
                self.topics.status, self._status_payload(self.state), qos=1, retain=True
            )
            fut.add_done_callback(lambda f: f.exception())

    def _status_payload(self, state: str, reason: str = "") -> bytes:
        body: dict[str, Any] = {
            "state": state,
            "client_id": self.settings.client_id,
            "pid": os.getpid(),
            "ts": round(time.time(), 3),
            "counters": dict(self.totals),
        }
        if self.outbox is not None:
            body["outbox_pending"] = self.outbox.pending
        redis_stats = getattr(self.store, "stats", None)  # a worker group's Redis store
        if redis_stats is not None:
            body["redis"] = {k: getattr(redis_stats, k) for k in ("round_trips", "commits", "conflicts")}
        if reason:
            body["reason"] = reason
        return json.dumps(body, separators=(",", ":")).encode()

    # --- helpers -------------------------------------------------------------------------------

    def _subscriptions(self) -> list[str]:
        subs = [self.topics.events_sub]
        if self.settings.owntracks:
            subs.append(self.topics.owntracks_sub)
        if self.settings.group:  # a worker group: the broker hands each message to one worker
            subs = [f"$share/{self.settings.group}/{t}" for t in subs]
        return [*subs, self.topics.control]

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        self._wake.clear()

    def _write_pid(self) -> None:
        path = self.settings.pid_path
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{os.getpid()}\n")
        except OSError as exc:
            log.warning("cannot write pid file %s: %s", path, exc)

    def _remove_pid(self) -> None:
        path = self.settings.pid_path
        if path is None:
            return
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()

    def _require_store(self) -> SQLiteStore:
        assert self.store is not None, "service not started"
        return self.store

    def _require_core(self) -> CoreLike:
        assert self.core is not None, "service not started"
        return self.core

    def _require_link(self) -> MqttLink:
        assert self.link is not None, "service not started"
        return self.link

    def _require_outbox(self) -> Outbox:
        assert self.outbox is not None, "service not started"
        return self.outbox


__all__ = ["CoreFactory", "CoreLike", "Reloader", "Service"]


# --- the real engine -------------------------------------------------------------------------------


def load_fences_and_campaigns(
    settings: Settings, warnings: list[str] | None = None
) -> dict[str, Any]:
    """Fresh fence index and campaigns from the configured files (also the SIGHUP reloader).
    Campaigns that match nothing in the catalog are logged as warnings (and appended to
    ``warnings``)."""
    from engine.campaigns import catalog_warnings, load_campaigns
    from fences.snapshot import load_index

    if settings.fences is None or settings.campaigns is None:
        raise GeopushError("--fences and --campaigns are required (flags, GEOPUSH_* or config file)")
    index, info = load_index(settings.fences, settings.fences_snapshot_path)
    took = ", ".join(f"{k} {v:.2f} s" for k, v in info.seconds.items())
    if info.source == "snapshot":
        log.info("fences: %d stores from the snapshot %s (%s)", len(index), info.snapshot, took)
    else:
        why = f"; {info.reason}" if info.reason else ""
        log.info("fences: %d stores loaded from %s (%s%s)", len(index), settings.fences, took, why)
    campaigns = load_campaigns(settings.campaigns)
    found = catalog_warnings(campaigns, index.catalog)
    for w in found:
        log.warning("%s", w)
    if warnings is not None:
        warnings.extend(found)
    return {"index": index, "campaigns": campaigns}


def real_core_factory(settings: Settings, warnings: list[str] | None = None) -> CoreFactory:
    """Build ``engine.core.Core`` over the daemon's store from the configured files; what loading
    them warned about is appended to ``warnings`` (for ``Service(load_warnings=...)``)."""
    from engine.core import Core
    from engine.profiles import load_profiles

    loaded = load_fences_and_campaigns(settings, warnings)
    profiles = load_profiles(settings.profiles) if settings.profiles is not None else None

    warm_up(loaded["index"], loaded["campaigns"])

    def factory(store: SQLiteStore) -> CoreLike:
        # SQLiteStore.commit returns the outbox rows it wrote: a compatible extension of the
        # StateStore protocol (whose commit returns None).
        core = Core(loaded["index"], loaded["campaigns"], cast("StateStore", store), profiles=profiles)
        restore_core(core, store)
        return core

    return factory


def warm_up(index: Any, campaigns: Any) -> None:
    """Run a throwaway core over a few fixes before connecting: numba compiles (or loads) the
    match kernels on first use, 1-2 s during which the first real events would wait."""
    from engine.core import Core
    from engine.events import Gps
    from engine.state import MemoryStore

    stores = index.catalog.stores
    if not stores:
        return
    st = stores[0]
    if st.center is not None:
        lon, lat = st.center
    else:
        pt = st.polygon.representative_point()
        lon, lat = pt.x, pt.y
    core = Core(index, campaigns, MemoryStore())
    fixes = [Gps(user="~warmup", ts=1.0 + i, lon=lon, lat=lat, acc=10.0) for i in range(3)]
    for batch in (fixes[:1], fixes[1:]):  # one-fix and many-fix paths
        core.process(batch)
    core.flush(1e9)


WATERMARK_KEY = "core.watermark"


def restore_core(core: CoreLike, store: SQLiteStore) -> int:
    """Re-arm the core's in-memory timers after a restart, so visits carry on: the sweep queue of
    open visits (silent users still get their dwell and exit) and the event-time watermark,
    through the public ``Core.restore``. Returns the number of open visits re-armed."""
    wm = store.get_meta(WATERMARK_KEY)
    users = store.users_with_visits()
    core.restore(users, watermark=float(wm) if wm is not None else None)
    return sum(len(u.visits) for u in users)


def core_watermark(core: CoreLike) -> float | None:
    wm = core.watermark
    return float(wm) if wm != float("-inf") else None


def watermark_meta(core: CoreLike) -> dict[str, str] | None:
    """The meta row committed with each batch, so a restart resumes at the same event time."""
    wm = core_watermark(core)
    return {WATERMARK_KEY: repr(wm)} if wm is not None else None
