"""Start-up of `geopush run` as a subprocess: SIGHUP during start-up, the start-up summary, and
the broker's own dropped-message counter ($SYS) watched and reported."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from .conftest import Collector, World, spawn_daemon


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
