"""Ctrl-C of `geopush simulate publish` (what the demo does to its publisher): a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from simulator.embedded_broker import MosquittoBroker, find_mosquitto


@pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary (SIGSTOP of it)")
def test_ctrl_c_with_publishes_in_flight_leaves_no_unretrieved_future(tmp_path: Path) -> None:
    """Messages awaiting PUBACK when the publisher is interrupted fail on disconnect; nobody may
    be left holding an unread exception ("Future exception was never retrieved" in the log)."""
    trace = tmp_path / "trace.jsonl"
    with trace.open("w") as fh:  # one fix every 10 ms for 10 minutes of trace time
        for i in range(60_000):
            ev = {"type": "gps", "user": f"u{i % 50}", "ts": 1.7e9 + i * 0.01,
                  "lon": 2.35, "lat": 48.85, "acc": 5.0}  # fmt: skip
            fh.write(json.dumps(ev) + "\n")
    broker = MosquittoBroker()
    broker.start()
    got_one = threading.Event()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda *_a: got_one.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe("geopush/events/#", qos=0)
    sub.loop_start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "simulate", "publish", str(trace), "--broker", broker.url,
         "--speed", "1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert broker._proc is not None  # noqa: SLF001
    broker_pid = broker._proc.pid  # noqa: SLF001
    try:
        assert got_one.wait(30), "the publisher never published"
        os.kill(broker_pid, signal.SIGSTOP)  # from now on no PUBACK comes back
        stopped = threading.Event()
        stopped.wait(0.5)  # the publisher keeps sending: these stay in flight
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
        sub.loop_stop()
        broker.stop()
    assert "never retrieved" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
