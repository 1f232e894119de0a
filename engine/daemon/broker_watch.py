"""Watch the broker's own counters ($SYS) for messages it dropped, and say what was checked.

The engine acknowledges only what it committed, but the broker may drop messages before the
engine ever sees them: mosquitto queues at most ``max_queued_messages`` (1000 by default) QoS 1
messages per offline or slow persistent session and drops the rest (its log says "Outgoing
messages are being dropped for client ..."). The engine cannot fix that, but it can see it:
mosquitto publishes a broker-wide count, ``$SYS/broker/publish/messages/dropped`` (retained,
refreshed every ``sys_interval`` seconds, 10 by default; since the broker started), read here on a
connection of its own (client id ``<client_id>-sys``, clean session, so nothing of it is queued
while the engine is down). Not on the engine's own connection: its persistent session would
hold the ``$SYS`` subscription, and the broker counts the QoS 0 ``$SYS`` messages it cannot hand
a busy or absent engine as dropped (measured: a false alarm at every backlog). Where client ids
are tied to logins (the shipped config's ``use_username_as_clientid``) the second connection
needs a login of its own, ``sys_username``/``sys_password``: under the engine's login it would
take the engine's session over. So the watch runs when the broker is anonymous or a
``sys_username`` is set, and otherwise says at start-up why it does not (``watch_refusal``).

The last value seen is kept in the state's meta (``broker.dropped``: count and the broker's start
time, from ``$SYS/broker/uptime``), so a restart compares with what the previous run saw: drops
while the engine was down are reported at start-up. Each increase is logged as a warning,
counted in ``geopush_broker_dropped_messages_total`` and the status counter ``broker_dropped``.
The count is broker-wide: other clients' drops count too (the warning says so).

mosquitto does not publish its limits (``max_queued_messages``, ``max_inflight_messages``): they
cannot be checked over MQTT; the start-up line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from engine.daemon.config import Settings
from engine.daemon.metrics import Metrics
from engine.errors import GeopushError
from engine.transport.mqtt import MqttLink, parse_broker_url

log = logging.getLogger("geopush.daemon")

DROPPED = "$SYS/broker/publish/messages/dropped"
DROP_RATE = "$SYS/broker/load/publish/dropped/15min"  # drops per minute, 15-min moving average
VERSION = "$SYS/broker/version"
UPTIME = "$SYS/broker/uptime"
# Retained values come in this order on subscribe: the uptime (refreshed at every sys_interval)
# last, so its arrival means "the retained values are in".
TOPICS = [VERSION, DROPPED, DROP_RATE, UPTIME]
META_KEY = "broker.dropped"  # "<count> <broker start, epoch seconds>"
# Two start times this close (s) are the same broker run ($SYS/broker/uptime is refreshed every
# sys_interval only, so a computed start time wobbles by that much).
SAME_RUN_S = 120.0
NOT_CHECKABLE = (
    "max_queued_messages and max_inflight_messages are not published by the broker: not checked "
    "(set them as in deploy/mosquitto.conf; mosquitto's default queue of 1000 per session drops "
    "the rest)"
)


def watch_refusal(settings: Settings) -> str | None:
    """Why the watch cannot run safely with these settings, or None when it can (module doc)."""
    login = settings.username or parse_broker_url(settings.broker).username
    if login is None or settings.sys_username:
        return None
    return (
        "broker checks: not watched: the engine logs in as "
        f"{login!r} and no sys_username is set. A second connection under the same "
        "login would take the engine's session over where client ids are tied to logins "
        "(use_username_as_clientid, as deploy/mosquitto.conf ships): give the $SYS watch a login "
        "of its own (sys_username/sys_password in the config file, GEOPUSH_SYS_USERNAME, "
        "GEOPUSH_SYS_PASSWORD; ACL: topic read $SYS/broker/#). Messages the broker drops go "
        f"unnoticed meanwhile; {NOT_CHECKABLE}"
    )


class BrokerWatch:
    """Reads the broker's dropped-message counter and reports increases (see module doc).

    ``load``/``save`` read and write the persisted last value (the state's meta)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        load: Callable[[], str | None] = lambda: None,
        save: Callable[[str], object] = lambda _v: None,
        probe_s: float = 12.0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.load = load
        self.save = save
        self.probe_s = probe_s
        self.link = MqttLink(
            parse_broker_url(settings.broker),
            client_id=f"{settings.client_id}-sys",
            clean_session=True,
            # its own login when given (over one in the broker URL), else the engine's
            username=settings.sys_username or settings.username,
            password=settings.sys_password if settings.sys_username else settings.password,
        )
        self.version: str | None = None
        self.started: float | None = None  # the broker's start time (epoch s), from its uptime
        self.dropped: int | None = None  # the counter's last value handled
        self.dropped_at_start: int | None = None  # its retained value, if any, at subscribe
        self.rate: float | None = None  # the broker's 15-min average of drops per minute
        self.checked: str | None = None  # the start-up line, once the probe is over
        self._pending: int | None = None  # a count that came before the first uptime
        self._seen = asyncio.Event()  # the first uptime arrived

    async def run(self) -> None:
        """Until cancelled: connect, subscribe, read; reconnect with backoff."""
        backoff = 1.0
        probe = asyncio.create_task(self._probe(), name="broker-probe")
        try:
            while True:
                try:
                    await self.link.connect()
                    await self.link.subscribe(TOPICS, qos=0)
                except GeopushError as exc:
                    log.debug("broker $SYS watch: cannot connect (%s)", exc)
                    await self.link.disconnect()
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 60.0)
                    continue
                backoff = 1.0
                await self._read()
                await self.link.disconnect()
                await asyncio.sleep(1.0)  # the broker went away: not straight back
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            await self.link.disconnect()

    async def _read(self) -> None:
        link = self.link
        while link.connected:
            waiter = asyncio.ensure_future(link.wait_inbound())
            gone = asyncio.ensure_future(link.wait_disconnected())
            try:
                await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                gone.cancel()
            link.pump(1000)
            for m in link.take(1000):
                self.on_message(m.topic, m.payload)

    async def _probe(self) -> None:
        """No $SYS after ``probe_s``: log that the broker could not be checked."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._seen.wait(), self.probe_s)
        if not self._seen.is_set():
            self.metrics.broker_sys.set(0)
            self.checked = (
                f"broker checks: could not check: no $SYS/broker/uptime within {self.probe_s:g} s "
                "(not mosquitto, sys_interval 0, or an ACL hides $SYS from this user): messages "
                f"the broker drops go unnoticed; {NOT_CHECKABLE}"
            )
            log.warning("%s", self.checked)

    def _report(self) -> None:
        """Log what could be checked, once the retained values are in (at the first uptime)."""
        self.metrics.broker_sys.set(1)
        if self.dropped_at_start is not None:
            count = f"{DROPPED} = {self.dropped_at_start} since it started {_ago(self.started)}"
        elif (self.version or "").startswith("mosquitto"):
            count = (
                f"{DROPPED} unchanged for a minute or more (mosquitto republishes a $SYS value "
                "only when it changes, and drops it after 60 s): watched for changes"
            )
        else:
            count = f"{DROPPED} not published by this broker (yet): watched for it"
        self.checked = (
            f"broker checks: {self.version or 'broker version unknown'} via $SYS; dropped "
            f"messages: {count}; {NOT_CHECKABLE}"
        )
        log.info("%s", self.checked)
        if self.dropped_at_start is None and self.rate is not None and self.rate > 0:
            log.warning(
                "the broker dropped messages in the last hour or so ($SYS 15-min average: %.2f "
                "per minute; the exact count comes with its next change): a full client queue "
                "(mosquitto max_queued_messages): events queued for this engine's persistent "
                "session (%s) may have been lost while it was down. Raise max_queued_messages "
                "(deploy/mosquitto.conf)", self.rate, self.settings.client_id,
            )  # fmt: skip

    # --- the counter -------------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip()
        if topic == VERSION:
            self.version = text
        elif topic == DROP_RATE:
            with contextlib.suppress(ValueError):
                self.rate = float(text)
                self.metrics.broker_drop_rate.set(self.rate)
        elif topic == DROPPED:
            with contextlib.suppress(ValueError):
                value = int(text)
                if self.started is None:  # before the first uptime: the retained value
                    self._pending = self.dropped_at_start = value
                else:
                    self._on_dropped(value)
        elif topic == UPTIME:
            try:
                started = time.time() - float(text.split()[0])
            except (ValueError, IndexError):
                return
            first = self.started is None
            self.started = started
            if first:
                self._report()
                self._seen.set()
                if self._pending is not None:
                    self._on_dropped(self._pending)
                    self._pending = None

    def _on_dropped(self, value: int) -> None:
        last, when = self.dropped, "while this engine watched"
        if last is None:
            last, when = self._baseline(value)
        elif value < last:  # the broker restarted: its counter starts again from zero
            last, when = 0, "since the broker restarted"
        self.dropped = value
        if value > last:
            n = value - last
            self.metrics.broker_dropped.inc(n)
            self.metrics.totals["broker_dropped"] += n
            log.warning(
                "the broker dropped %d message(s) %s (%s went from %d to %d): a full client "
                "queue (mosquitto max_queued_messages): events queued for this engine's "
                "persistent session (%s) may be among them and are lost; the count is "
                "broker-wide. Raise max_queued_messages (deploy/mosquitto.conf)",
                n, when, DROPPED, last, value, self.settings.client_id,
            )  # fmt: skip
        self._persist(value)

    def _baseline(self, value: int) -> tuple[int, str]:
        """The first value seen by this run: compared with what the previous run saw when it is
        the same broker run, else with zero (drops since the broker started)."""
        saved = self.load()
        if saved is not None:
            try:
                count_s, start_s = saved.split()
                count, start = int(count_s), float(start_s)
            except ValueError:
                count, start = -1, 0.0
            same_run = self.started is not None and abs(self.started - start) < SAME_RUN_S
            if 0 <= count <= value and same_run:
                return count, "since this engine last looked (e.g. while it was down)"
        started = "" if self.started is None else f" {_ago(self.started)}"
        return 0, f"since the broker started{started}"

    def _persist(self, value: int) -> None:
        try:
            self.save(f"{value} {self.started if self.started is not None else 0.0:.0f}")
        except GeopushError as exc:
            log.debug("cannot keep the broker's dropped count in the state: %s", exc)


def _ago(epoch: float | None) -> str:
    if epoch is None:
        return "(unknown)"
    s = max(0.0, time.time() - epoch)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


__all__ = ["BrokerWatch"]
