"""Start-up of `geopush run` as a subprocess: SIGHUP during start-up, the start-up summary, and
the broker's own dropped-message counter ($SYS) watched and reported."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from .conftest import Collector, World, needs_mosquitto, publish_all, spawn_daemon


async def _open_writer(fifo: Path, proc: subprocess.Popen[bytes]) -> int:
    """Open ``fifo`` for writing once the daemon opened it for reading (blocking writes)."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            assert proc.poll() is None, proc.communicate()[1].decode()
            await asyncio.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


async def _until(col: Collector, proc: subprocess.Popen[bytes], pred: Any, timeout: float = 60.0) -> None:
    """Wait for ``pred(statuses of proc)``; fail at once if the daemon exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        mine = [s for s in col.json_on("geopush/status/") if s.get("pid") == proc.pid]
        if pred(mine):
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"daemon exited with {proc.returncode}: {err.decode()[-2000:]}")
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_sighup_during_start_up_is_held_and_reloads_once_started(broker, tmp_path: Path) -> None:
    world = World(tmp_path / "city")
    content = world.campaigns.read_bytes()
    fifo = tmp_path / "campaigns.json"
    os.mkfifo(fifo)
    world.campaigns = fifo  # the daemon blocks reading it: a point surely inside start-up
    async with Collector(broker.url, ["geopush/status/#"]) as col:
        proc = spawn_daemon(broker.url, tmp_path / "s.db", world, "--log-level", "INFO")
        try:
            fd = await _open_writer(fifo, proc)
            for _ in range(5):  # repeatedly, while the daemon loads its campaigns
                proc.send_signal(signal.SIGHUP)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            await _until(col, proc, lambda ss: any(s["state"] == "online" for s in ss))
            # the held reload runs once started: it reads the campaigns again
            fd = await _open_writer(fifo, proc)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            await _until(col, proc, lambda ss: any(s["counters"].get("reloads") == 1 for s in ss))
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    text = err.decode()
    assert "SIGHUP received during start-up" in text
    assert text.count("reloaded fences and campaigns") == 1


@needs_mosquitto
async def test_messages_the_broker_drops_while_the_engine_is_down_are_reported(
    mosquitto_factory, tmp_path: Path
) -> None:
    # a stock-like broker: a small queue per offline session, $SYS refreshed every second
    broker = mosquitto_factory(
        persistence=True, max_queued_messages=5, extra_config="sys_interval 1\n"
    )
    world = World(tmp_path / "city")
    state = tmp_path / "s.db"
    async with Collector(broker.url, ["geopush/status/#"]) as col:
        proc = spawn_daemon(broker.url, state, world, "--log-level", "INFO")
        try:
            await _until(col, proc, lambda ss: any(s["state"] == "online" for s in ss))
        finally:
            proc.terminate()
            _, err1 = proc.communicate(timeout=30)
        assert proc.returncode == 0, err1.decode()

        # the engine is down: its persistent session queues 5 messages, the broker drops 25
        await publish_all(broker.url, world.messages[:30])

        proc = spawn_daemon(broker.url, state, world, "--log-level", "INFO")
        try:
            await _until(
                col, proc, lambda ss: any(s["counters"].get("broker_dropped") == 25 for s in ss)
            )
        finally:
            proc.terminate()
            _, err2 = proc.communicate(timeout=30)
    assert proc.returncode == 0, err2.decode()
    text = err2.decode()
    assert "the broker dropped " in text and "geopush-engine" in text
    # the start-up summary: what was loaded, then what the broker let us check
    first = err1.decode()
    assert "starting: state" in first and "(new, empty: 0 users" in first
    assert "(existing: 0 users" in text
    for t in (first, text):
        assert "fences: 16 stores (" in t  # a 4 x 4 city
        assert "campaigns: 16 (" in t and "profiles: none" in t
    assert "broker checks: mosquitto version" in text
    assert "via $SYS; dropped messages: $SYS/broker/publish/messages/dropped = " in text
    assert "max_queued_messages" in text and "not checked" in text


@needs_mosquitto
async def test_a_broker_without_sys_counters_is_reported_as_not_checked(mosquitto_factory) -> None:
    from engine.daemon.broker_watch import BrokerWatch
    from engine.daemon.config import load_settings
    from engine.daemon.metrics import Metrics

    broker = mosquitto_factory(extra_config="sys_interval 0\n")  # no $SYS counters
    metrics = Metrics()
    watch = BrokerWatch(load_settings({"broker": broker.url}), metrics, probe_s=1.0)
    task = asyncio.create_task(watch.run())
    try:
        for _ in range(600):
            if watch.checked is not None or task.done():
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert watch.checked is not None and "could not check" in watch.checked
    assert metrics.broker_sys._value.get() == 0


def test_the_dropped_count_is_compared_with_the_previous_run_and_survives_broker_restarts(
    caplog: Any,
) -> None:
    from engine.daemon.broker_watch import DROPPED, UPTIME, BrokerWatch
    from engine.daemon.config import load_settings
    from engine.daemon.metrics import Metrics

    settings = load_settings({"broker": "mqtt://127.0.0.1:9"})
    meta: dict[str, str] = {}

    def watch() -> tuple[BrokerWatch, Metrics]:
        m = Metrics()
        w = BrokerWatch(settings, m, load=lambda: meta.get("k"), save=lambda v: meta.update(k=v))
        return w, m

    def total(m: Metrics) -> float:
        return float(m.broker_dropped._value.get())

    # run 1: a fresh broker, nothing dropped; the value is kept
    w, m = watch()
    w.on_message(UPTIME, b"100 seconds")
    w.on_message(DROPPED, b"0")
    assert total(m) == 0 and meta["k"].startswith("0 ")
    # run 2, same broker run (retained count before the uptime): 25 dropped while it was down
    w, m = watch()
    w.on_message(DROPPED, b"25")
    w.on_message(UPTIME, b"160 seconds")
    assert total(m) == 25 and m.totals["broker_dropped"] == 25
    assert "since this engine last looked" in caplog.text
    assert "= 25 since it started" in (w.checked or "")
    w.on_message(DROPPED, b"30")  # live
    assert total(m) == 30
    # run 3: the broker restarted meanwhile (another start time): its count is all new
    w, m = watch()
    w.on_message(UPTIME, b"5 seconds")
    w.on_message(DROPPED, b"3")
    assert total(m) == 3 and "since the broker started" in caplog.text
    w.on_message(DROPPED, b"1")  # a restart seen live: the counter went back
    assert total(m) == 4


def test_the_sys_watch_needs_a_login_of_its_own_where_the_engine_has_one() -> None:
    """A second connection under the engine's login would take the engine's session over where
    client ids are tied to logins (deploy/mosquitto.conf): the watch runs only anonymously or
    with sys_username, and says why not otherwise."""
    from engine.daemon.broker_watch import watch_refusal
    from engine.daemon.config import load_settings

    assert watch_refusal(load_settings({})) is None  # anonymous broker: client ids are our own
    refusal = watch_refusal(load_settings({"username": "geopush-engine"}))
    assert refusal is not None and "sys_username" in refusal and "not watched" in refusal
    assert watch_refusal(load_settings({"username": "e", "sys_username": "e-sys"})) is None
    in_url = watch_refusal(load_settings({"broker": "mqtt://geopush-engine:pw@localhost:1883"}))
    assert in_url is not None and "'geopush-engine'" in in_url
