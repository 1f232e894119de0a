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
import dataclasses
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

from engine.daemon.broker_watch import META_KEY as BROKER_META_KEY
from engine.daemon.broker_watch import BrokerWatch, watch_refusal
from engine.daemon.config import Settings
from engine.daemon.holds import GroupHolds
from engine.daemon.loading import (
    API_CAMPAIGN_SEQ,
    API_SEQ,
    load_fences_and_campaigns,
    warm_up,
)
from engine.daemon.metrics import Metrics
from engine.daemon.outbox import Outbox
from engine.daemon.pipeline import Decoder, Renderer, Topics, deadletter_row, digest
from engine.daemon.poison import POISON_DETAIL, Budget, CrashGuard
from engine.daemon.tasks import cancel_and_wait
from engine.daemon.wiring import change_follower, state_follower, webhook_dispatcher
from engine.errors import DecodeError, GeopushError, TransportError
from engine.state import Output, StateStore
from engine.stores.redis_store import HeldBack, RedisStore, commit_batch, open_store
from engine.stores.sqlite_store import OutRow, SQLiteStore
from engine.transport.mqtt import BrokerAddress, Inbound, MqttLink, Will, parse_broker_url

log = logging.getLogger("geopush.daemon")

DEADLETTER_SAMPLE = 10  # dropped events copied to the dead-letter topic, per reason and minute
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


@dataclasses.dataclass
class _Sorted:
    """A micro-batch sorted out (``Service._sort``)."""

    events: list[Any] = dataclasses.field(default_factory=list)
    per_msg: list[tuple[Inbound, bytes, list[Any]]] = dataclasses.field(default_factory=list)
    dead: list[OutRow] = dataclasses.field(default_factory=list)  # dead letters
    inputs: list[bytes] = dataclasses.field(default_factory=list)  # digests committed
    retained_meta: dict[str, str] = dataclasses.field(default_factory=dict)

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
        self.api: Any = None  # engine.api.process.ApiProcess with --http
        self.api_follow: Any = None  # engine.api.follow.StateFollower (--http, SQLite state)
        self.webhooks: Any = None  # engine.daemon.webhooks.WebhookDispatcher (SQLite state)
        self.follower: Any = None  # engine.api.redis_state.ChangeFollower in a group
        self.broker_watch: BrokerWatch | None = None
        self._last_full_gc = time.monotonic()
        self._inbox_warned = 0.0
        # Crash-loop protection (engine/daemon/poison.py): the batch in hand, the messages the
        # previous process died on (run alone), the ones it died on alone (quarantined).
        self.guard: CrashGuard | None = None
        # Dead letters carrying a payload excerpt: at most deadletter_rate/s (bursts of 10 s).
        self._excerpts = Budget(settings.deadletter_rate, 10 * settings.deadletter_rate)
        self._dl_sampled: dict[str, tuple[int, int]] = {}  # reason -> (minute, dead letters sent)
        self.holds: GroupHolds | None = None  # a worker group's holds (engine/daemon/holds.py)
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
        watch: asyncio.Task[None] | None = None
        follow: asyncio.Task[None] | None = None
        try:
            self._open_state(store)
            if s.redis_url is not None:
                follow = self._follow_api_changes(s.redis_url)
            if s.http:
                await self._start_api()
            self._write_pid()
            if s.metrics_port:
                self.metrics.serve(s.metrics_port)
            self._open_link(store)
            await self._start_webhooks()
            watch = self._start_broker_watch(store)
            await self._connection_loop()
            await self._drain()
            return 0
        except asyncio.CancelledError:
            if self.link is not None:
                self.link.drop()
            if self.api is not None:
                self.api.stop_now()
            return 1
        finally:
            await self._close(store, (watch, follow))

    def _open_state(self, store: SQLiteStore) -> None:
        """What the previous process left (the breadcrumb, a group's holds), then the core over
        the state (``restore_core`` may repair a poisoned watermark: counted)."""
        s = self.settings
        self.guard = CrashGuard(s.inflight_path, s.batch_size)
        self.guard.load(store.seen_inputs)
        group = self._group()
        if group is not None:
            self.holds = GroupHolds(group, self.decoder, self.topics.control)
            self.holds.start()  # a previous run's holds (it died holding)
        repairs = store.get_meta(REPAIRS_KEY)
        self.core = self.core_factory(store)  # restore_core: may repair a poisoned watermark
        log.info("%s", start_summary(s, self.core, store))
        if store.get_meta(REPAIRS_KEY) != repairs:
            self.metrics.watermark_repairs.inc()
            self.totals["watermark_repaired"] += 1

    def _open_link(self, store: SQLiteStore) -> None:
        """The broker link (not connected yet) and the outbox over it; the API's redemptions
        are published here and answered to it."""
        s = self.settings
        address = parse_broker_url(s.broker)
        self.link = link = self._make_link(
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
            fast=s.mqtt_fast,
        )
        self.outbox = Outbox(link, store, self.metrics, max_in_flight=s.max_in_flight)
        if self.api is not None:  # the API's redemptions: published here, answers to it
            self.outbox.on_commit = self.api.committed
            self.api.publish = lambda t, p: link.publish_nowait(t, p, qos=1)

    def _start_broker_watch(self, store: SQLiteStore) -> asyncio.Task[None] | None:
        """The broker's own dropped-message counter ($SYS), on a connection (and login) of its
        own (engine/daemon/broker_watch.py), unless the settings rule it out."""
        s = self.settings
        refusal = watch_refusal(s)
        if refusal is not None:
            log.warning("%s", refusal)
            return None
        self.broker_watch = BrokerWatch(
            s, self.metrics, load=lambda: store.get_meta(BROKER_META_KEY),
            save=lambda v: store.commit([], meta={BROKER_META_KEY: v}),
        )  # fmt: skip
        return asyncio.create_task(self.broker_watch.run(), name="broker-watch")

    async def _close(
        self, store: SQLiteStore, tasks: Sequence[asyncio.Task[None] | None]
    ) -> None:
        """Stop the API's process, the webhooks and the helper tasks; close the state."""
        if self.api is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.api.stop()
        if self.webhooks is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.webhooks.stop()
        if self.guard is not None:
            self.guard.close()
        if self.follower is not None:
            self.follower.stop()  # ends even where redis-py swallows the cancellation
        await cancel_and_wait(tasks)  # again and again: a cancellation can be lost (3.11)
        if self.api_follow is not None:
            self.api_follow.close()
        store.close()
        self._remove_pid()

    async def _start_webhooks(self) -> None:
        """Deliver committed outputs to registered webhooks (engine/daemon/wiring.py); the
        outbox tells the dispatcher of each commit."""
        self.webhooks = webhook_dispatcher(self.settings, self.store, self.metrics)
        if self.webhooks is None:
            return
        await self.webhooks.start()
        self._require_outbox().on_push = self.webhooks.wake

    async def _start_api(self) -> None:
        """Start the HTTP API's process (--http, engine/api/process.py); with a SQLite state,
        follow the changes it makes between two micro-batches (engine/api/follow.py)."""
        from engine.api.process import ApiProcess

        assert self.settings.http is not None
        self.api_follow = state_follower(self.settings, self._require_core())
        self.api = ApiProcess(self.settings, self.metrics)
        await self.api.start()

    def _follow_api_changes(self, url: str) -> asyncio.Task[None] | None:
        """A group's worker: apply the store changes made through any worker's API (kept in
        Redis) to this worker's live fence index (engine/api/redis_state.py)."""
        self.follower = change_follower(url, self._require_core())
        if self.follower is None:
            return None  # a stand-in core: no live fence index
        return asyncio.create_task(self.follower.run(), name="api-changes")

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
        if self.guard is not None:
            self.guard.clear()  # a clean stop: nothing was in hand
        if self.holds is not None:  # what this worker held back is left to the broker
            self.holds.release()
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
                    if not self.handle(link.take(s.batch_size)):
                        break  # held back: the broker re-delivers it to this session later
                return
            follow = self.api_follow
            if follow is not None and follow.due(time.monotonic()):
                follow.check()
            if not link.inbox:
                waiter = asyncio.ensure_future(link.wait_inbound(s.idle_flush or 1.0))
                woke = asyncio.ensure_future(self._wake.wait())
                disc = asyncio.ensure_future(link.wait_disconnected())
                await asyncio.wait({waiter, woke, disc}, return_when=asyncio.FIRST_COMPLETED)
                for f in (waiter, woke, disc):
                    f.cancel()
                self._wake.clear()
                if follow is not None:  # the first batch after a pause sees every API change
                    follow.check()
            if s.linger_ms and len(link.inbox) < enough:
                await self._linger(link, enough, s.linger_ms / 1000.0)
            if len(link.inbox) < s.batch_size:
                link.pump(s.batch_size - len(link.inbox))
            holds = self.holds
            if holds is not None and holds.outage_seen():
                await holds.resync(link)  # before anything more of the backlog is applied
            batch = link.take(s.batch_size)
            held = False
            if batch and holds is not None and holds.holding():
                batch = holds.cut(batch, link.inbox)
                held = not batch
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
            elif held:
                await asyncio.sleep(0.005)  # another worker applies older events of our users

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

    def handle(self, batch: list[Inbound]) -> bool:
        """Process one micro-batch: decode, core, commit, ack, hand outputs to the outbox.
        False: a worker group's commit was held back (``HeldBack``); the batch (or what was
        left of it) is back in the inbox, unacked."""
        keys = [digest(x.topic, x.payload) for x in batch]
        guard = self.guard
        if guard is not None:
            if guard.has_suspects(keys):
                return guard.handle_suspects(batch, keys, self._handle, self._require_link().inbox)
            guard.mark(keys)  # survives a crash of the process: see poison.py
        return self._handle(batch, keys)

    def _handle(self, batch: list[Inbound], keys: list[bytes]) -> bool:
        """Decode (``_sort``), run the core (``_run_core``), commit (``_commit``), ack, and
        hand the committed rows to the outbox. False: held back (see ``handle``)."""
        sorted_ = self._sort(batch, keys)
        events, per_msg, dead = sorted_.events, sorted_.per_msg, sorted_.dead
        t0 = time.perf_counter()
        outputs = self._run_core(events, per_msg, dead)
        t1 = time.perf_counter()
        rejected = getattr(self.core, "rejected", None) if events else None  # this batch's
        if rejected:
            self._drop_rejected(rejected, per_msg, dead)
        committed = self._commit(batch, sorted_, outputs)
        if committed is None:
            return False
        outputs, rows = committed
        m, totals = self.metrics, self.totals
        m.messages.inc(len(batch))
        totals["messages"] += len(batch)
        t2 = time.perf_counter()
        self._require_link().ack_many(batch)  # the batch's PUBACKs as one buffer
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
        return True

    def _sort(self, batch: list[Inbound], keys: list[bytes]) -> _Sorted:
        """A batch's messages sorted out: redeliveries already applied and control messages
        skipped, quarantined, undecodable and clock-skewed ones dead-lettered, the rest decoded
        into events."""
        store, m, totals = self._require_store(), self.metrics, self.totals
        control = self.topics.control
        guard = self.guard
        # Redeliveries (dup) and retained messages the broker re-sends at a (re)subscription
        # may have been applied already: look their digests up.
        dup_keys = [k for x, k in zip(batch, keys, strict=True) if x.dup or x.retain]
        seen = store.seen_inputs(dup_keys) if dup_keys else set()
        out = _Sorted()
        dead = out.dead
        for x, k in zip(batch, keys, strict=True):
            if k in seen:
                m.duplicates.inc()
                totals["duplicates"] += 1
                continue
            if x.topic == control:
                self._control(x.payload)
                continue
            if x.retain:
                if store.get_meta(RETAINED_KEY + x.topic) == k.hex():
                    m.duplicates.inc()
                    totals["duplicates"] += 1
                    totals["retained_seen"] += 1
                    continue
                out.retained_meta[RETAINED_KEY + x.topic] = k.hex()  # committed with the batch
            out.inputs.append(k)
            if guard is not None and guard.quarantined(k, x.topic):
                dead.append(self._dead_letter(x, k, "poison", POISON_DETAIL))
                continue
            evs = self._decode(x, k, dead)
            if evs is None:
                continue
            out.events.extend(evs)
            out.per_msg.append((x, k, evs))
        return out

    def _decode(self, x: Inbound, k: bytes, dead: list[OutRow]) -> list[Any] | None:
        """A message's events; None when it was dead-lettered (undecodable, or an event too far
        ahead of the receiving clock)."""
        m, totals = self.metrics, self.totals
        try:
            evs = self.decoder(x.topic, x.payload)
        except DecodeError as exc:
            dead.append(self._dead_letter(x, k, exc.reason, exc.detail))
            m.rejects.labels(exc.reason).inc()
            totals["rejects"] += 1
            totals[f"reject:{exc.reason}"] += 1
            return None
        except Exception as exc:  # noqa: BLE001  (any failure on one message: its dead letter)
            log.error("decoding a message from %s failed: %r", x.topic, exc)
            dead.append(self._dead_letter(x, k, "decode_error", _exc_detail(exc)))
            m.rejects.labels("decode_error").inc()
            totals["rejects"] += 1
            totals["reject:decode_error"] += 1
            return None
        # A device's clock must not reach anyone else: a message with an event further
        # ahead of the receiving clock than --max-skew is dead-lettered whole.
        skew = self.settings.max_skew
        ahead = (evs[0].ts if len(evs) == 1 else max(e.ts for e in evs)) if evs else 0.0
        if ahead > x.received + skew:
            detail = (
                f"event time {ahead:.3f} is {ahead - x.received:.0f} s ahead of the receiving "
                f"clock (--max-skew {skew:g} s): fix the device's clock"
            )
            self._drop("clock_skew", len(evs), x, k, detail, dead)
            return None
        return evs

    def _run_core(
        self,
        events: list[Any],
        per_msg: list[tuple[Inbound, bytes, list[Any]]],
        dead: list[OutRow],
    ) -> list[Output]:
        """The core's outputs of the batch's events; a core failure falls back to committing
        message by message (``_process_one_by_one``: its outputs are then committed already)."""
        store, core = self._require_store(), self._require_core()
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
        return outputs

    def _commit(
        self, batch: list[Inbound], sorted_: _Sorted, outputs: list[Output]
    ) -> tuple[list[Output], list[OutRow]] | None:
        """Commit the batch (one transaction) with its dead letters, input digests and meta;
        None when a worker group's hold sent it back to the inbox (nothing applied)."""
        store, core, link = self._require_store(), self._require_core(), self._require_link()
        events = sorted_.events
        self._require_outbox().fold_marks()  # outputs acked since the last batch: same commit
        # commit_batch: a shared (Redis) store may report a conflict; the batch is then re-run.
        holds = self.holds
        order: dict[str, float] | None = None
        if holds is not None:
            order = holds.order(events)
            holds.refresh(link.inbox)  # keep this worker's holds current
        retained_meta = sorted_.retained_meta
        try:
            return commit_batch(
                core, store, events, outputs, extra=sorted_.dead, inputs=sorted_.inputs,
                meta=lambda: _with(watermark_meta(core), retained_meta), order=order,
            )  # fmt: skip
        except HeldBack as exc:
            # Another worker holds older events of some of our users: nothing was applied; the
            # batch goes back to the inbox (unacked) and waits for them (GroupHolds.cut).
            assert holds is not None
            holds.held_back(exc, core)
            link.inbox.extendleft(reversed(batch))
            return None

    def _drop(
        self, reason: str, n: int, x: Inbound, key: bytes, detail: str, dead: list[OutRow]
    ) -> None:
        """Count ``n`` events of message ``x`` dropped for ``reason`` (metrics and the status
        message's ``dropped``) and sample the message to the dead-letter topic: the first
        DEADLETTER_SAMPLE per reason and wall-clock minute (a device with a wrong clock sends
        every event wrong; the count stays exact)."""
        self.metrics.dropped.labels(reason).inc(n)
        self.metrics.dropped_by_reason[reason] += n
        self.totals[f"dropped:{reason}"] += n
        minute = int(x.received // 60)
        last, used = self._dl_sampled.get(reason, (minute, 0))
        if last != minute:
            used = 0
        if used >= DEADLETTER_SAMPLE:
            return
        self._dl_sampled[reason] = (minute, used + 1)
        dead.append(self._dead_letter(x, key, reason, detail))

    def _drop_rejected(
        self,
        rejected: Sequence[tuple[str, Any]],
        per_msg: list[tuple[Inbound, bytes, list[Any]]],
        dead: list[OutRow],
    ) -> None:
        """The core's rejections of this batch (a fix beyond the speed limit, an event older
        than the user's last): counted and sampled like ``_drop``."""
        owner = {id(e): (x, k, i) for x, k, evs in per_msg for i, e in enumerate(evs)}
        for reason, ev in rejected:
            found = owner.get(id(ev))
            if found is None:
                continue
            x, k, i = found
            cls: type = ev.__class__
            detail = f"event {i} of the message ({_event_type(cls)}, ts {ev.ts}): {reason}"
            # one dead letter per rejected event: its id derives from the message and the event
            self._drop(reason, 1, x, digest(reason, k + i.to_bytes(4, "big")), detail, dead)

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
                dead.append(self._dead_letter(x, k, "engine_error", _exc_detail(exc)))
                self.metrics.rejects.labels("engine_error").inc()
                continue
            outs, rows = commit_batch(core, store, evs, outs)  # re-runs on a group conflict
            self._account([], outs)  # the batch accounts for the events themselves
            self._require_outbox().push(rows, received=x.received)

    def _dead_letter(self, x: Inbound, k: bytes, reason: str, detail: str) -> OutRow:
        """The bounded dead letter of one message (pipeline.deadletter_row), counted; over
        ``deadletter_rate`` it carries no payload excerpt (a flood cannot fill the disk)."""
        m, limit = self.metrics, self.settings.deadletter_payload
        if limit and not self._excerpts.take():
            limit = 0
            m.deadletter_payloads_dropped.inc()
            self.totals["deadletter_payloads_dropped"] += 1
        m.deadletters.labels(reason).inc()
        self.totals["deadletters"] += 1
        self.totals[f"deadletter:{reason}"] += 1
        return deadletter_row(
            self.topics, x.topic, x.payload, reason, detail, k, x.received, limit=limit
        )

    # --- a worker group ---------------------------------------------------------------------------

    def _group(self) -> RedisStore | None:
        """The store of a worker group (``--group``: Redis), else None (one process)."""
        store = self.store
        if self.settings.group is None or not isinstance(store, RedisStore):
            return None
        return store

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
                None if type(o).__name__ == "Push" else getattr(o, "event", None) or _outcome(o)
                for o in outputs
            )
            pushes = kinds.pop(None, 0)
            if pushes:
                m.pushes.inc(pushes)
                totals["pushes"] += pushes
            for ev_kind, n in kinds.items():
                if isinstance(ev_kind, tuple):  # a holdout, redemption answer or order
                    m.outcomes.labels(ev_kind[0]).inc(n)
                    continue
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
            seq = fresh.pop(API_SEQ, None)
            follow = self.api_follow
            if seq is not None and (follow is not None or self.follower is not None):
                # store changes the API made while the files loaded: onto the new index too
                from engine.api.live import overlay_state

                seq = overlay_state(fresh["index"], self.settings.state, after=seq)
            cseq = fresh.pop(API_CAMPAIGN_SEQ, None)
            if cseq is not None and follow is not None and "campaigns" in fresh:
                # campaign changes the API made while the files loaded, likewise
                from engine.api.campaigns import overlay_campaigns_state

                fresh["campaigns"], cseq = overlay_campaigns_state(
                    fresh["campaigns"], self.settings.state, after=cseq
                )
            reload = getattr(core, "reload", None)
            if reload is None:
                raise GeopushError("this core does not support reload")
            reload(**fresh)
            if follow is not None:  # the fresh index and campaigns hold the changes up to these
                follow.store_seq = seq if seq is not None else follow.store_seq
                follow.campaign_seq = cseq if cseq is not None else follow.campaign_seq
            if self.api is not None:
                self.api.reload()  # the API's process reloads its own copy
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
            "dropped": dict(self.metrics.dropped_by_reason),
        }
        if self.outbox is not None:
            body["outbox_pending"] = self.outbox.pending
        if self.api is not None:
            body["api"] = self.api.status()
        redis_stats = getattr(self.store, "stats", None)  # a worker group's Redis store
        if redis_stats is not None:
            body["redis"] = {k: getattr(redis_stats, k) for k in ("round_trips", "commits", "conflicts")}
        if reason:
            body["reason"] = reason
        return json.dumps(body, separators=(",", ":")).encode()

    # --- helpers -------------------------------------------------------------------------------

    def _make_link(self, address: BrokerAddress, **kw: Any) -> MqttLink:
        """The MQTT link, or with ``--intake nats://...`` one that also consumes this worker's
        partitions from the NATS cluster (engine/transport/jetstream.py)."""
        s = self.settings
        if s.intake is None:  # the inbox's bound: 4 batches (reads pause there, resume at 2)
            return MqttLink(address, max_inbox=4 * s.batch_size, **kw)
        from engine.transport.jetstream import (
            JetStreamLink,
            parse_nats_urls,
            parse_partition_list,
        )

        return JetStreamLink(
            address,
            nats_urls=parse_nats_urls(s.intake),
            partitions=parse_partition_list(s.partitions, s.partition_count),
            partition_count=s.partition_count,
            prefix=s.prefix,
            **kw,
        )

    def _subscriptions(self) -> list[str]:
        if self.settings.intake is not None:  # events come from the partitions (JetStreamLink)
            return [self.topics.control]
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

def _exc_detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --- the real engine -------------------------------------------------------------------------------


def start_summary(settings: Settings, core: Any, store: Any) -> str:
    """One line: the state, fences, campaigns and profiles the daemon starts with, and where it
    connects (the broker checks follow from ``BrokerWatch`` once read)."""
    if settings.redis_url is not None:
        from urllib.parse import urlsplit

        u = urlsplit(settings.redis_url)  # without the credentials
        where = f"{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path}"
        state = f"{u.scheme}://{where} (shared by group {settings.group})"
    else:
        describe = getattr(store, "describe", None)
        state = describe() if describe is not None else settings.state
    parts = [f"state {state}"]
    catalog = getattr(core, "catalog", None)
    if catalog is not None:
        parts.append(f"fences: {len(catalog)} stores ({settings.fences})")
    campaigns = getattr(getattr(core, "campaigns", None), "campaigns", None)
    if campaigns is not None:
        parts.append(f"campaigns: {len(campaigns)} ({settings.campaigns})")
    profiles = getattr(core, "profiles", None)
    parts.append(f"profiles: {len(profiles)} ({settings.profiles})" if profiles is not None else "profiles: none")
    address = parse_broker_url(settings.broker)
    parts.append(f"broker mqtt://{address.host}:{address.port} as {settings.client_id}")
    return "starting: " + "; ".join(parts)


def real_core_factory(settings: Settings, warnings: list[str] | None = None) -> CoreFactory:
    """Build ``engine.core.Core`` over the daemon's store from the configured files; what loading
    them warned about is appended to ``warnings`` (for ``Service(load_warnings=...)``)."""
    from engine.core import Core, CoreConfig
    from engine.profiles import load_profiles

    loaded = load_fences_and_campaigns(settings, warnings)
    profiles = load_profiles(settings.profiles) if settings.profiles is not None else None

    warm_up(loaded["index"], loaded["campaigns"])

    def factory(store: SQLiteStore) -> CoreLike:
        # SQLiteStore.commit returns the outbox rows it wrote: a compatible extension of the
        # StateStore protocol (whose commit returns None).
        config = CoreConfig(
            max_skew_s=settings.max_skew,
            watermark_quorum=settings.watermark_quorum,
            attribution_window_s=settings.attribution_window_s,
            coupon_secret=coupon_secret(settings, store),
        )
        core = Core(
            loaded["index"], loaded["campaigns"], cast("StateStore", store), config, profiles=profiles
        )
        restore_core(core, store)
        return core

    return factory


COUPON_SECRET_KEY = "coupon_secret"


def coupon_secret(settings: Settings, store: SQLiteStore) -> str:
    """The key of coupon codes: ``coupon_secret`` when set; else the one kept in the state,
    generated (32 random bytes, URL-safe base64) and stored there on first start. With Redis
    state the first worker's secret is shared by the group, so any worker verifies any code."""
    if settings.coupon_secret is not None:
        return settings.coupon_secret
    import secrets

    return store.meta_once(COUPON_SECRET_KEY, secrets.token_urlsafe(32))


def _outcome(o: Any) -> tuple[str]:
    """The kind of an output that is neither a push nor a visit event, as a 1-tuple (so that it
    cannot be mistaken for a visit event's ``event``)."""
    return (str(type(o).__struct_config__.tag),)


WATERMARK_KEY = "core.watermark"
REPAIRS_KEY = "core.watermark_repairs"  # how many times restore_core repaired it (ever)
RETAINED_KEY = "retained:"  # + topic: the digest (hex) of the last retained message applied


def restore_core(core: CoreLike, store: SQLiteStore, *, now: float | None = None) -> int:
    """Re-arm the core's in-memory timers after a restart, so visits carry on: the sweep queue of
    open visits (silent users still get their dwell and exit) and the event-time watermark,
    through the public ``Core.restore``. Returns the number of open visits re-armed.

    A persisted watermark further ahead of the wall clock (``now``) than the core's
    ``max_skew_s`` was poisoned by a device's clock (before the watermark quorum existed): it
    is repaired to the newest open visit's last event time that is not ahead of the clock
    (or none), with a warning, in the state at once (``REPAIRS_KEY`` counts the repairs)."""
    wm_text = store.get_meta(WATERMARK_KEY)
    users = store.users_with_visits()
    wm = float(wm_text) if wm_text is not None else None
    skew = float(getattr(getattr(core, "config", None), "max_skew_s", 300.0))
    clock = time.time() if now is None else now
    if wm is not None and wm > clock + skew:
        sane = [u.last_ts for u in users if u.last_ts <= clock + skew]
        fixed = max(sane) if sane else None
        log.warning(
            "the state's watermark %.3f is %.0f s ahead of the clock (a device's clock, before "
            "the watermark quorum): repaired to %s", wm, wm - clock, fixed,
        )  # fmt: skip
        wm = fixed
        repairs = int(store.get_meta(REPAIRS_KEY) or 0) + 1
        store.commit([], meta={WATERMARK_KEY: repr(wm if wm is not None else float("-inf")),
                               REPAIRS_KEY: str(repairs)})  # fmt: skip
    core.restore(users, watermark=wm)
    return sum(len(u.visits) for u in users)


def _with(a: dict[str, str] | None, b: dict[str, str]) -> dict[str, str] | None:
    return {**a, **b} if a and b else (a or b or None)


def core_watermark(core: CoreLike) -> float | None:
    wm = core.watermark
    return float(wm) if wm != float("-inf") else None


def watermark_meta(core: CoreLike) -> dict[str, str] | None:
    """The meta row committed with each batch, so a restart resumes at the same event time."""
    wm = core_watermark(core)
    return {WATERMARK_KEY: repr(wm)} if wm is not None else None
