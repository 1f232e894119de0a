"""Visit scoring against hand-made cases: perfect, missed, spurious, late, fragments, groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.score import (
    Detected,
    ScoreError,
    TruthStay,
    load_truth,
    load_visits,
    match,
    quantile,
    score,
)


def T(user: str, store: str, a: float, b: float, *sig: str) -> TruthStay:
    return TruthStay(user, store, a, b, tuple(sig) or ("gps",))


def D(vid: str, user: str, store: str, a: float, b: float | None, signal: str = "gps") -> Detected:
    return Detected(vid, user, store, a, b, signal)


def test_perfect() -> None:
    truth = [T("u1", "s1", 100, 700, "gps", "wifi"), T("u2", "s2", 0, 400, "gps")]
    det = [D("v1", "u1", "s1", 100, 700, "wifi"), D("v2", "u2", "s2", 0, 400)]
    rep = score(truth, det)
    assert rep.overall.recall == 1.0 and rep.overall.precision == 1.0
    assert rep.groups["wifi"].recall == 1.0 and rep.groups["gps"].precision == 1.0
    assert rep.overall.enter_delays == [0, 0]


def test_missed_stay_costs_recall_only() -> None:
    truth = [T("u1", "s1", 0, 600), T("u1", "s2", 1000, 1600)]
    det = [D("v1", "u1", "s1", 10, 650)]
    rep = score(truth, det)
    assert rep.overall.recall == 0.5
    assert rep.overall.precision == 1.0


def test_spurious_visit_costs_precision_only() -> None:
    truth = [T("u1", "s1", 0, 600)]
    det = [D("v1", "u1", "s1", 0, 600), D("v2", "u1", "s9", 100, 200),  # wrong store
           D("v3", "u2", "s1", 0, 600)]  # wrong user
    rep = score(truth, det)
    assert rep.overall.recall == 1.0
    assert rep.overall.precision == pytest.approx(1 / 3)


def test_late_enter_and_exit_are_timed() -> None:
    truth = [T("u1", "s1", 1000, 2000), T("u2", "s1", 1000, 2000), T("u3", "s1", 1000, 2000)]
    det = [D("a", "u1", "s1", 1030, 2100), D("b", "u2", "s1", 1010, 2050),
           D("c", "u3", "s1", 990, 2200)]
    rep = score(truth, det)
    s = rep.overall.summary()
    assert s["enter_delay_median_s"] == 10.0
    assert s["exit_delay_median_s"] == 100.0
    assert s["enter_delay_p90_s"] == pytest.approx(26.0)  # numpy's linear quantile of -10,10,30
    assert s["exit_delay_p90_s"] == pytest.approx(180.0)


def test_tolerance_decides_whether_a_late_visit_matches() -> None:
    truth = [T("u1", "s1", 0, 100)]
    det = [D("v", "u1", "s1", 150, 400)]  # starts 50 s after the stay ended
    assert score(truth, det, tolerance=60).overall.recall == 1.0
    assert score(truth, det, tolerance=30).overall.recall == 0.0


def test_two_visits_for_one_stay_is_one_hit_and_one_spurious() -> None:
    truth = [T("u1", "s1", 0, 1000)]
    det = [D("v1", "u1", "s1", 0, 400), D("v2", "u1", "s1", 500, 1000)]
    pairs = match(truth, det)
    assert len(pairs) == 1
    rep = score(truth, det)
    assert rep.overall.recall == 1.0 and rep.overall.precision == 0.5


def test_one_visit_spanning_two_stays_matches_only_one() -> None:
    truth = [T("u1", "s1", 0, 300), T("u1", "s1", 400, 1000)]
    det = [D("v1", "u1", "s1", 0, 1000)]
    assert match(truth, det) == [(1, 0)]  # the larger overlap wins
    assert score(truth, det).overall.recall == 0.5


def test_open_visit_runs_to_the_end_of_the_data() -> None:
    truth = [T("u1", "s1", 0, 100), T("u1", "s1", 5000, 6000)]
    det = [D("v1", "u1", "s1", 4990, None)]
    rep = score(truth, det)
    assert rep.overall.matched == 1
    assert rep.overall.exit_delays == []  # no exit seen: no exit timing


def test_groups_by_strongest_signal() -> None:
    assert T("u", "s", 0, 1, "gps", "wifi", "nfc").group == "near-field"
    assert T("u", "s", 0, 1, "beacon").group == "near-field"
    assert T("u", "s", 0, 1, "gps", "wifi").group == "wifi"
    assert T("u", "s", 0, 1, "gps").group == "gps"
    assert TruthStay("u", "s", 0, 1, ()).group == "none"
    assert D("v", "u", "s", 0, 1, "nfc").group == "near-field"
    truth = [T("u1", "s1", 0, 600, "gps", "beacon"), T("u2", "s1", 0, 600, "gps")]
    det = [D("a", "u1", "s1", 0, 600, "gps"), D("b", "u3", "s1", 0, 600, "wifi")]
    rep = score(truth, det)
    # Recall by the truth's group, precision by the detection's.
    assert rep.groups["near-field"].recall == 1.0 and rep.groups["gps"].recall == 0.0
    assert rep.groups["gps"].precision == 1.0 and rep.groups["wifi"].precision == 0.0


def test_min_stay_makes_short_stays_and_short_visits_optional() -> None:
    truth = [T("u1", "s1", 0, 100), T("u1", "s2", 1000, 2000)]
    det = [D("a", "u1", "s1", 0, 100), D("b", "u1", "s2", 1000, 2000),
           D("c", "u1", "s3", 3000, 3060)]  # a short spurious blip
    rep = score(truth, det, min_stay=300)
    assert rep.optional_truth == 1 and rep.ignored_detected == 2
    assert rep.overall.recall == 1.0 and rep.overall.precision == 1.0
    full = score(truth, det)
    assert full.overall.precision == pytest.approx(2 / 3)


def test_quantile_matches_numpy() -> None:
    import numpy as np

    vals = [5.0, -3.0, 12.0, 7.5, 0.0, 100.0]
    for q in (0.0, 0.5, 0.9, 1.0):
        assert quantile(vals, q) == pytest.approx(float(np.quantile(vals, q)))
    assert quantile([], 0.5) is None


def test_load_visits_pairs_enter_and_exit(tmp_path: Path) -> None:
    p = tmp_path / "visits.jsonl"
    rows = [
        {"kind": "visit", "visit_id": "v1", "user": "u1", "store_id": "s1", "merchant_id": "m",
         "event": "enter", "ts": 10.0, "signal": "gps"},
        {"kind": "visit", "visit_id": "v1", "user": "u1", "store_id": "s1", "merchant_id": "m",
         "event": "dwell", "ts": 610.0, "signal": "wifi", "dwell_s": 600},
        {"kind": "visit", "visit_id": "v2", "user": "u2", "store_id": "s1", "merchant_id": "m",
         "event": "enter", "ts": 20.0, "signal": "beacon"},
        {"kind": "visit", "visit_id": "v1", "user": "u1", "store_id": "s1", "merchant_id": "m",
         "event": "exit", "ts": 900.0, "signal": "gps"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {d.visit_id: d for d in load_visits(p)}
    assert got["v1"] == Detected("v1", "u1", "s1", 10.0, 900.0, "wifi")
    assert got["v2"].end is None and got["v2"].group == "near-field"


def test_bad_lines_name_the_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "truth.jsonl"
    p.write_text('{"user":"u","store_id":"s","start":1,"end":2}\n{"user":"u"}\n')
    with pytest.raises(ScoreError, match=r"truth.jsonl:2"):
        load_truth(p)
    p.write_text('{"user":"u","store_id":"s","start":5,"end":2}\n')
    with pytest.raises(ScoreError, match="before start"):
        load_truth(p)
    with pytest.raises(ScoreError, match="cannot read"):
        load_visits(tmp_path / "missing.jsonl")


def test_subset_by_catalog_tag(tmp_path: Path) -> None:
    from simulator.score import score_files, stores_with_tag

    cat = tmp_path / "stores.geojson"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": None, "properties": {"store_id": "s1", "tags": ["mall"]}},
        {"type": "Feature", "geometry": None, "properties": {"store_id": "s2", "tags": []}},
    ]}))
    assert stores_with_tag(cat, "mall") == {"s1"}
    truth = tmp_path / "truth.jsonl"
    truth.write_text('{"user":"u","store_id":"s1","start":0,"end":600,"signals":["gps"]}\n'
                     '{"user":"u","store_id":"s2","start":1000,"end":1600,"signals":["gps"]}\n')
    visits = tmp_path / "visits.jsonl"
    visits.write_text(json.dumps({"visit_id": "v", "user": "u", "store_id": "s3", "event": "enter",
                                  "ts": 5.0, "signal": "gps"}) + "\n")
    assert score_files(truth, visits).overall.truth == 2
    only_mall = score_files(truth, visits, keep_stores={"s1"})
    assert only_mall.overall.truth == 1 and only_mall.overall.detected == 0
    no_mall = score_files(truth, visits, drop_stores={"s1"})
    assert no_mall.overall.truth == 1 and no_mall.overall.detected == 1
    with pytest.raises(ScoreError, match="store tags"):
        stores_with_tag(truth, "mall")
