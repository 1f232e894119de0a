"""The mall survey importer on the real data (skips when ../shared/data is absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.events import decode, encode_event
from fences.catalog import parse_catalog
from simulator import mall


@pytest.fixture(scope="module")
def mall_dir(shared_data: Path) -> Path:
    return shared_data / "near_field" / "mall"


@pytest.fixture(scope="module")
def imported(mall_dir: Path) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]], dict[str, int]]:
    return mall.load_mall(mall_dir)


def test_metre_frame_agrees_with_floor_info(mall_dir: Path) -> None:
    frame, _ = mall.read_floor(mall_dir, "F1")
    lat = math.radians((frame.miny + frame.maxy) / 2)
    w = math.radians(frame.maxx - frame.minx) * mall.EARTH_R * math.cos(lat)
    h = math.radians(frame.maxy - frame.miny) * mall.EARTH_R
    assert w == pytest.approx(frame.w, rel=0.01)
    assert h == pytest.approx(frame.h, rel=0.01)
    lon, lat2 = frame.to_lonlat(np.array([10.0]), np.array([20.0]))
    x, y = frame.to_m(lon, lat2)
    assert (x[0], y[0]) == pytest.approx((10.0, 20.0))


def test_waypoints_are_in_corridors_next_to_shopfronts(mall_dir: Path) -> None:
    """The documented fact behind the 'at the shopfront' truth rule."""
    import shapely

    _, stores = mall.read_floor(mall_dir, "F1")
    walks = mall.read_walks(mall_dir / mall.TSV)
    xs = np.concatenate([w.wp_x for w in walks.values()])
    ys = np.concatenate([w.wp_y for w in walks.values()])
    assert len(xs) == 742 and len(walks) == 106
    pts = shapely.points(xs, ys)
    inside = np.zeros(len(xs), bool)
    nearest = np.full(len(xs), np.inf)
    for s in stores:
        inside |= shapely.contains(s.poly_m, pts)
        nearest = np.minimum(nearest, shapely.distance(s.poly_m, pts))
    assert not inside.any()
    assert np.median(nearest) < mall.AT_STORE_M


def test_catalog_is_valid_and_registrations_unique(imported: Any) -> None:
    cat_doc, _, _, counts = imported
    cat = parse_catalog(cat_doc)  # raises on duplicate BSSIDs/beacons or bad polygons
    assert len(cat) == counts["stores"] == 53
    names = {s.name for s in cat.stores}
    assert "UNIQLO" in names and not names & mall.NON_STORES
    assert counts["aps_registered"] > 100
    # The shared beacon id many devices broadcast fails the margin rule.
    assert all("9195B3AD-A9D0-4500-85FF-9FB0F65A5201:0:0" not in s.beacons for s in cat.stores)


def test_registration_rule_on_a_tiny_case() -> None:
    got: dict[int, list[str]] = {}
    sums = {
        "aa": {0: [-50.0, -52.0, -54.0], 1: [-70.0, -72.0, -71.0]},  # clear winner: store 0
        "bb": {0: [-60.0] * 3, 1: [-62.0] * 3},  # within the margin: nobody
        "cc": {1: [-80.0] * 5},  # too weak
        "dd": {2: [-40.0, -40.0]},  # too few scans
    }
    n = mall._assign(sums, mall.AP_MIN_DBM, lambda k, i: got.setdefault(k, []).append(i))
    assert n == 1 and got == {0: ["aa"]}


def test_trace_and_truth(imported: Any) -> None:
    cat_doc, events, truth, counts = imported
    ids = {f["properties"]["store_id"] for f in cat_doc["features"]}
    assert counts["events"] == len(events) > 20_000
    assert {type(e).__name__ for e in events} == {"Wifi", "Beacon"}  # no GPS in the survey
    for e in events[:2000]:
        (back,) = decode(encode_event(e))
        assert back == e
    assert len(truth) > 100
    for t in truth:
        assert t["store_id"] in ids
        assert t["start"] <= t["end"]
        assert set(t["signals"]) <= {"wifi", "beacon"}
    assert sum("wifi" in t["signals"] for t in truth) > len(truth) / 3


def test_write_mall_files(imported: Any, tmp_path: Path) -> None:
    cat_doc, events, truth, counts = imported
    mall.write_outputs(tmp_path, cat_doc, events, truth)
    lines = (tmp_path / "trace.jsonl").read_bytes().splitlines()
    assert len(lines) == counts["events"]
    ts = [json.loads(x)["ts"] for x in lines]
    assert ts == sorted(ts)
    assert len((tmp_path / "truth.jsonl").read_text().splitlines()) == counts["truth"]
    json.loads((tmp_path / "stores.geojson").read_text())


def test_missing_folder_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(mall.MallImportError, match="mall folder"):
        mall.load_mall(tmp_path)
