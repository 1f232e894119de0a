"""`geopush demo`: its pieces, then end-to-end runs (real city generator, brokers, daemon,
publisher)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from simulator.demo import TraceInfo, choose_speed, histogram_quantile, scan_trace

sys.path.insert(0, str(Path(__file__).parent))
from tiny_city import T0, write_tiny_city  # noqa: E402

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)


def _hist(values: list[float]) -> Histogram:
    h = Histogram("x_seconds", "test", registry=CollectorRegistry(), buckets=BUCKETS)
    for v in values:
        h.observe(v)
    return h


def test_histogram_quantile_empty_and_simple() -> None:
    assert histogram_quantile(_hist([]), 0.5) is None
    # 100 samples at 3 ms: every quantile lies in the (2 ms, 5 ms] bucket
    h = _hist([0.003] * 100)
    for q in (0.01, 0.5, 0.99):
        v = histogram_quantile(h, q)
        assert v is not None and 0.002 <= v <= 0.005
    # beyond the last finite bucket: the bound is reported (a lower bound, never invented)
    assert histogram_quantile(_hist([5.0, 6.0]), 0.99) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0001, 0.9), min_size=1, max_size=300), st.sampled_from([0.5, 0.9, 0.99])
)
def test_histogram_quantile_brackets_the_exact_quantile(values: list[float], q: float) -> None:
    """Oracle: the exact nearest-rank quantile; the estimate must lie in the same bucket."""
    est = histogram_quantile(_hist(values), q)
    assert est is not None
    exact = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    bounds = (0.0, *BUCKETS)
    hi_i = next(i for i, b in enumerate(bounds) if exact <= b)
    assert bounds[hi_i - 1] <= est <= bounds[hi_i] + 1e-12


def test_scan_trace_and_speed(tmp_path: Path) -> None:
    p = write_tiny_city(tmp_path, walkers=2, minutes=10)
    info = scan_trace(p["trace"])
    assert info.events == 2 * 60 + 1  # the torn line still counts: it is published too
    assert info.first_ts == T0 and info.last_ts == T0 + 590
    assert choose_speed(info, 10.0) == pytest.approx(590 / 8.0)
    assert choose_speed(TraceInfo(10, 0.0, 1.0), 60.0) == 1.0  # never slower than real time
    batch = tmp_path / "b.jsonl"
    batch.write_text(
        '{"type":"batch","user":"u","events":[{"type":"gps","ts":5},{"type":"gps","ts":9}]}\n'
    )
    assert scan_trace(batch) == TraceInfo(2, 5.0, 9.0)


def test_cut_trace_keeps_the_window_and_unreadable_lines(tmp_path: Path) -> None:
    from simulator.demo import cut_trace

    src, dst = tmp_path / "t.jsonl", tmp_path / "w.jsonl"
    src.write_text(
        '{"type":"gps","ts":10}\n{"type":"gps","ts":20}\nbroken\n{"type":"gps","ts":30.5}\n'
    )
    assert cut_trace(src, dst, since_ts=20) == 3
    assert dst.read_text() == '{"type":"gps","ts":20}\nbroken\n{"type":"gps","ts":30.5}\n'


# --- end to end ---------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert 600 <= w <= 4000 and 600 <= h <= 4000, (w, h)
    return w, h


def _jsonl(path: Path) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_demo_on_a_tiny_city_through_an_external_amqtt_broker(tmp_path: Path) -> None:
    """--broker with the in-process amqtt broker (the no-mosquitto path), the live view on a
    terminal, the real daemon and publisher; outputs agree with each other."""
    import io

    from rich.console import Console

    from simulator.demo import DemoOptions, city_files, run_demo
    from simulator.embedded_broker import AmqttBroker

    write_tiny_city(tmp_path / "city")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with AmqttBroker() as broker:
        res = run_demo(
            DemoOptions(duration=5, broker=broker.url, out=tmp_path, live=True),
            console=console,
            city=city_files(tmp_path / "city"),
        )
    snap = res.snapshot
    assert res.exit_code == 0
    assert snap.pushes > 0 and snap.visits_entered >= snap.pushes  # one enter campaign per store
    assert snap.dead_letters == 1  # the torn line of the tiny city
    pushes, visits = _jsonl(res.files["pushes"]), _jsonl(res.files["visits"])
    assert len({p["push_id"] for p in pushes}) == snap.pushes
    entered = {v["visit_id"] for v in visits if v["event"] == "enter"}
    assert all(p["visit_id"] in entered for p in pushes)  # no push outside a visit we saw open
    assert snap.latency_p50_ms is not None and snap.latency_p99_ms is not None
    # Oracle: offline replay of the same city decides the same pushes (the trace played whole).
    from engine.replay import replay

    city = tmp_path / "city"
    replay(city / "trace.jsonl", city / "stores.geojson", city / "campaigns.json",
           out_dir=tmp_path / "replay", progress=False)  # fmt: skip
    oracle = {p["push_id"] for p in _jsonl(tmp_path / "replay" / "pushes.jsonl")}
    got = {p["push_id"] for p in pushes}
    assert got <= oracle  # every push the demo showed is one replay decides too
    if snap.events_processed + snap.dead_letters == snap.events_total:  # the engine took it all
        assert got == oracle
    _check_png(res.files["map"])
    out = buf.getvalue()
    assert "top campaigns by pushes" in out and "event→push" in out  # the live panel was drawn
    assert f"pushes      {snap.pushes}" in out  # the summary


def test_geopush_demo_cli_on_a_small_city(tmp_path: Path) -> None:
    """The documented command, not on a terminal: plain progress lines, summary, map, exit 0."""
    import json
    import subprocess

    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "demo", "--duration", "8", "--no-live",
         "--stores", "20", "--users", "100", "--start", "12", "--hours", "1", "--seed", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "events=" in proc.stdout  # periodic plain lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pushes"] > 0, proc.stdout
    assert f"pushes      {summary['pushes']:,}" in proc.stdout
    assert str(out / "map.png") in proc.stdout
    _check_png(out / "map.png")
    assert len(_jsonl(out / "pushes.jsonl")) == summary["pushes"]
    # The run's rate: over the time the events took, at least the mean over the whole run.
    assert summary["events_per_s"] >= summary["events_processed"] / summary["elapsed_s"]


def test_ctrl_c_stops_cleanly_and_still_writes_outputs(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import time

    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "demo", "--duration", "120", "--no-live",
         "--stores", "20", "--users", "60", "--start", "6", "--hours", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # wait until the engine is processing events
            seen.append(line)
            if line.startswith("[") and "events=0 " not in line:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(seen) + rest
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by Ctrl-C" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopping"] == "stopped by Ctrl-C" and summary["elapsed_s"] < 60
    _check_png(out / "map.png")


def test_engine_log_goes_to_a_file_and_logging_is_restored(tmp_path: Path) -> None:
    import logging

    from simulator.demo import engine_log_to

    logger = logging.getLogger("geopush")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with engine_log_to(tmp_path / "engine.log"):
        logging.getLogger("geopush.daemon").info("hello from the engine")
    assert "hello from the engine" in (tmp_path / "engine.log").read_text()
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
