"""`geopush demo`: its pieces, then end-to-end runs against real brokers."""

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
