"""Daemon test fixtures: a REAL broker per test (mosquitto on a free port, or the embedded amqtt
broker where no mosquitto binary exists), MQTT helper clients, a running in-process daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.daemon.collect import Subscriber
from engine.daemon.config import load_settings
from engine.daemon.service import Service
from engine.transport.mqtt import Inbound, MqttLink, fast_path_default, parse_broker_url
from simulator.embedded_broker import EmbeddedBroker, MosquittoBroker, find_mosquitto, start_broker

# GEOPUSH_TEST_BROKER=amqtt runs the suite as a machine without mosquitto would.
HAVE_MOSQUITTO = find_mosquitto() is not None and os.environ.get("GEOPUSH_TEST_BROKER") != "amqtt"
needs_mosquitto = pytest.mark.skipif(
    not HAVE_MOSQUITTO, reason="needs the mosquitto binary (ACLs / persistence); amqtt lacks them"
)

# CI runs the transport tests twice: as they are (the fast MQTT path) and with GEOPUSH_MQTT_FAST=0
# (the plain aiomqtt path every link falls back to). Tests of the fast path's own machinery skip
# on the plain pass.
fast_path_only = pytest.mark.skipif(
    not fast_path_default(), reason="the fast MQTT path's own machinery (GEOPUSH_MQTT_FAST=0)"
)

# The daemon acks only after commit, so the broker's in-flight window bounds its intake; the
# deploy config sets it too (deploy/mosquitto.conf).
BROKER_EXTRA = "max_inflight_messages 200\nset_tcp_nodelay true\n"
# Started as root, mosquitto drops to the `mosquitto` user, which cannot write its persistence
# file or read password/ACL files in our private temp dirs: stay root in tests.
AS_ROOT = "user root\n" if os.geteuid() == 0 else ""


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    b = (
        start_broker(extra_config=BROKER_EXTRA, persistence=True)
        if HAVE_MOSQUITTO
        else start_broker()
    )
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mosquitto_factory() -> Iterator[Callable[..., MosquittoBroker]]:
    started: list[MosquittoBroker] = []

    def make(**kw: Any) -> MosquittoBroker:
        kw["extra_config"] = AS_ROOT + kw.get("extra_config", "")
        b = MosquittoBroker(**kw)
        b.start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


class Collector:
    """A subscriber that records every message it gets (topic -> list of payloads)."""

    def __init__(self, url: str, topics: list[str], client_id: str | None = None) -> None:
        self.sub = Subscriber(url, topics, self._record, client_id=client_id)
        self.messages: list[tuple[str, bytes]] = []
        self.times: list[float] = []  # receive time of each message (time.time())

    async def __aenter__(self) -> Collector:
        await self.sub.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.stop()

    def _record(self, msgs: list[Inbound]) -> None:
        for m in msgs:
            self.messages.append((m.topic, m.payload))
            self.times.append(m.received)

    def on(self, prefix: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.messages if t.startswith(prefix)]

    def json_on(self, prefix: str) -> list[dict[str, Any]]:
        return [json.loads(p) for _, p in self.on(prefix)]

    async def wait_for(self, pred: Callable[[Collector], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {len(self.messages)} messages")
            await asyncio.sleep(0.02)


async def publish_all(
    url: str, items: list[tuple[str, bytes]], client_id: str | None = None
) -> None:
    """Publish QoS 1, many in flight, and wait for every PUBACK."""
    link = MqttLink(parse_broker_url(url), client_id=client_id)
    await link.connect()
    try:
        futs = [link.publish_nowait(t, p, qos=1) for t, p in items]
        await asyncio.gather(*futs)
    finally:
        await link.disconnect()



@contextlib.asynccontextmanager
async def events_flowing(url: str, user: str, t0: float, lat: float, lon: float) -> AsyncIterator[None]:
    """Events keep flowing while the block runs: a fix from ``user`` at (lat, lon) every 20 ms.

    Stopped by a flag, not by cancelling the task: in Python 3.11 ``asyncio.wait_for`` (which
    the link's connect and disconnect use) can swallow a cancellation that lands just as its
    inner awaitable finishes (python/cpython#86296, fixed in 3.12), and a ``while True`` loop
    stopped only by ``cancel()`` then ran on, so the test hung until pytest's timeout (seen in
    CI, twice)."""
    stop = asyncio.Event()

    async def walk() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            await publish_all(url, [(f"geopush/events/{user}", gps(user, t0 + k, lat, lon))])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)

    task = asyncio.create_task(walk())
    try:
        yield
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=30)  # a guard against a hang
        if not done:
            task.cancel()
            raise AssertionError("the background publisher did not stop")
        task.result()  # a failure of the walker is the test's

class StandInCore:
    """A tiny deterministic pipeline for transport tests (the real Core is tested elsewhere):
    every GPS fix with lat > 0 yields one push, id ``{user}:{ts}``, through ``seen_push``."""

    watermark = float("-inf")  # no timers: nothing to restore after a restart

    def __init__(self, store: Any) -> None:
        self.store = store

    def restore(self, users: Any, *, watermark: float | None = None) -> None:
        return None

    def process(self, events: list[Any]) -> list[Any]:
        from engine.outputs import Coupon, Push

        outs = []
        for ev in events:
            st = self.store.user(ev.user)
            st.last_ts = max(st.last_ts, ev.ts)
            if type(ev).__name__ == "Gps" and ev.lat > 0:
                pid = f"{ev.user}:{ev.ts}"
                if self.store.seen_push(pid):
                    continue
                outs.append(
                    Push(
                        push_id=pid,
                        user=ev.user,
                        campaign_id="c",
                        store_id="s",
                        merchant_id="m",
                        visit_id="v",
                        trigger="enter",
                        ts=ev.ts,
                        coupon=Coupon("t", 1.0, "EUR", 60),
                    )
                )
        return outs

    def flush(self, now_ts: float) -> list[Any]:
        return []


def gps(user: str, ts: float, lat: float = 1.0, lon: float = 1.0) -> bytes:
    return json.dumps(
        {"type": "gps", "user": user, "ts": ts, "lon": lon, "lat": lat, "acc": 5}
    ).encode()


@contextlib.asynccontextmanager
async def running_service(
    url: str, state: Path, core_factory: Callable[[Any], Any] | None = None,
    world: World | None = None, **flags: Any,
) -> AsyncIterator[Service]:
    """The daemon as a task in this loop: the stand-in core, or the real one over ``world``."""
    from engine.daemon.loading import load_fences_and_campaigns
    from engine.daemon.service import real_core_factory

    if world is not None:
        flags.update(fences=world.fences, campaigns=world.campaigns)
    settings = load_settings({"broker": url, "state": state, "status_interval": 0.5, **flags})
    reloader = None
    if world is not None:
        core_factory = real_core_factory(settings)
        reloader = lambda: load_fences_and_campaigns(settings)  # noqa: E731
    svc = Service(settings, core_factory or StandInCore, reloader=reloader)
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.ready.wait(), 15)
        yield svc
    finally:
        svc.request_stop()
        rc = await asyncio.wait_for(task, 20)
        assert rc == 0


# --- the real engine: a small city, an oracle, the daemon as a subprocess ------------------------


class World:
    """A small synthetic city written to files, its trace, and what replay decides on it."""

    def __init__(self, folder: Path, side: int = 4, users: int = 20, per_user: int = 20,
                 inventory: dict[int, int] | None = None) -> None:
        from simulator.bench.workload import City, trace

        self.city = City(side)
        self.fences, self.campaigns = self.city.write(folder, inventory=inventory or {0: 2})
        self.events = list(trace(self.city, users, per_user))
        self.messages = [
            (f"geopush/events/{e['user']}", json.dumps(e, separators=(",", ":")).encode())
            for e in self.events
        ]

    def oracle(self) -> dict[str, set[str]]:
        """What `geopush replay` decides on the same trace (engine.replay.replay, its outputs
        read back from pushes.jsonl / visits.jsonl)."""
        import tempfile

        from engine.outputs import decode_output
        from engine.replay import replay

        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.jsonl"
            trace.write_bytes(b"".join(p + b"\n" for _, p in self.messages))
            replay(trace, self.fences, self.campaigns, out_dir=Path(tmp) / "out", progress=False)
            pushes = (Path(tmp) / "out" / "pushes.jsonl").read_bytes().splitlines()
            visits = (Path(tmp) / "out" / "visits.jsonl").read_bytes().splitlines()
        return {
            "pushes": {decode_output(x).out_id for x in pushes},
            "visits": {decode_output(x).out_id for x in visits},
        }


def received_outputs(col: Collector) -> dict[str, set[str]]:
    pushes = {d["push_id"] for d in col.json_on("geopush/push/")}
    visits = set()
    for d in col.json_on("geopush/visits/"):
        suffix = f":dwell:{d['dwell_s']}" if d["event"] == "dwell" else f":{d['event']}"
        visits.add(d["visit_id"] + suffix)
    return {"pushes": pushes, "visits": visits}


def spawn_daemon(url: str, state: Path, world: World, *extra: str) -> Any:
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "engine", "run", "--broker", url, "--state", str(state),
        "--fences", str(world.fences), "--campaigns", str(world.campaigns),
        "--status-interval", "0.3", "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def wait_online(col: Collector, pid: int, timeout: float = 30.0) -> None:
    def ok(c: Collector) -> bool:
        return any(s.get("pid") == pid and s["state"] == "online" for s in c.json_on("geopush/status/"))

    await col.wait_for(ok, timeout)
