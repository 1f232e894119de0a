"""The demo's stats collector and its pure renderers."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from simulator.demo_view import (
    DemoStats,
    Snapshot,
    percentile,
    plain_line,
    render_live,
    summary_text,
)


def _render(s: Snapshot, width: int = 110) -> str:
    con = Console(width=width, record=True, color_system=None, force_terminal=False)
    con.print(render_live(s))
    return con.export_text()


def test_collector_counts_visits_pushes_and_dedupes() -> None:
    st_ = DemoStats(duration_s=10, engine="daemon (in-process)", broker="mosquitto mqtt://x:1")
    for vid in ("v1", "v2", "v3"):
        st_.on_visit({"visit_id": vid, "event": "enter"})
    st_.on_visit({"visit_id": "v1", "event": "enter"})  # redelivery: ignored
    st_.on_visit({"visit_id": "v1", "event": "dwell", "dwell_s": 300})
    st_.on_visit({"visit_id": "v1", "event": "dwell", "dwell_s": 600})
    st_.on_visit({"visit_id": "v2", "event": "exit"})
    for i, camp in enumerate(["c-coffee", "c-coffee", "c-shoes", "c-coffee"]):
        st_.on_push({"push_id": f"p{i}", "campaign_id": camp}, latency_ms=float(i + 1))
    st_.on_push({"push_id": "p0", "campaign_id": "c-coffee"}, latency_ms=999.0)  # duplicate
    st_.on_deadletter({})
    st_.on_processed(100, now=1.0)
    st_.on_processed(300, now=2.0)
    snap = st_.snapshot(now=st_.started + 5)
    assert (snap.visits_entered, snap.visits_exited, snap.visits_open, snap.dwells) == (3, 1, 2, 2)
    assert snap.pushes == 4 and snap.top_campaigns == (("c-coffee", 3), ("c-shoes", 1))
    assert snap.latency_p50_ms == 2.0 and snap.latency_p99_ms == 4.0
    assert snap.dead_letters == 1 and snap.events_processed == 300
    assert snap.events_per_s == 200.0 and snap.elapsed_s == 5.0


def test_rate_uses_only_the_recent_window() -> None:
    s = DemoStats()
    s.on_processed(0, now=0.0)
    s.on_processed(1000, now=1.0)  # a burst long ago
    s.on_processed(1000, now=10.0)
    s.on_processed(1050, now=11.0)
    assert s.rate(window_s=3.0) == 50.0


def test_the_final_rate_is_the_runs_not_the_idle_tails() -> None:
    """summary.json's events_per_s: the events over the time they took, not over the last few
    seconds (the drain and idle tail) nor over the publisher's start-up."""
    s = DemoStats(started=0.0)
    s.on_processed(0, now=0.25)
    s.on_processed(0, now=0.5)  # the publisher is still starting
    for k in range(1, 11):
        s.on_processed(700 * k, now=0.5 + k)  # 700/s for 10 s
    for k in range(1, 5):
        s.on_processed(7000, now=10.5 + k)  # played and drained: idle
    assert s.snapshot(now=15.0, final=True).events_per_s == 700.0
    assert s.snapshot(now=15.0).events_per_s == 0.0  # the live figure stays the recent rate


def test_histogram_quantiles_win_over_samples() -> None:
    s = DemoStats()
    s.on_push({"push_id": "a", "campaign_id": "c"}, latency_ms=50.0)
    s.latency_p50_ms, s.latency_p99_ms = 1.5, 7.0
    snap = s.snapshot()
    assert (snap.latency_p50_ms, snap.latency_p99_ms) == (1.5, 7.0)


@given(
    st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200),
    st.sampled_from([1, 50, 90, 99, 100]),
)
def test_percentile_is_nearest_rank(values: list[float], q: int) -> None:
    assert percentile(values, q) == float(np.percentile(values, q, method="inverted_cdf"))
    assert percentile(values, q) in values


def test_live_panel_shows_every_figure() -> None:
    snap = Snapshot(
        elapsed_s=12,
        duration_s=60,
        events_processed=12345,
        events_total=50000,
        events_per_s=987,
        visits_entered=40,
        visits_exited=11,
        visits_open=29,
        pushes=17,
        latency_p50_ms=2.25,
        latency_p99_ms=14.0,
        top_campaigns=(("c-coffee", 9), ("c-shoes", 8)),
        dead_letters=3,
        engine="daemon (in-process)",
        broker="amqtt mqtt://127.0.0.1:5",
        sim_clock="09:41",
    )
    text = _render(snap)
    for needle in (
        "12,345 / 50,000",
        "987",
        "29",
        "40 / 11",
        "17",
        "p50 2.2 ms",
        "p99 14.0 ms",
        "c-coffee",
        "c-shoes",
        "dead letters",
        "3",
        "daemon (in-process)",
        "09:41",
        "12s / 60s",
    ):
        assert needle in text, needle
    empty = _render(Snapshot())
    assert "(none yet)" in empty and "p50 —" in empty


def test_plain_line_and_summary() -> None:
    snap = Snapshot(
        elapsed_s=8.04,
        events_processed=500,
        events_per_s=60,
        visits_entered=4,
        pushes=2,
        top_campaigns=(("c1", 2),),
        engine="offline replay (daemon not available)",
        stopping="time is up",
    )
    line = plain_line(snap)
    assert "\n" not in line and "pushes=2" in line and "c1=2" in line and "events=500" in line
    text = summary_text(snap, {"map": "/tmp/x/map.png"})
    assert "time is up after 8.0s" in text and "offline replay (daemon not available)" in text
    assert "pushes      2" in text and "/tmp/x/map.png" in text
