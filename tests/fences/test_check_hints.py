"""`geopush fences check` for what a new user stumbles on: repeated JSON members (located, among
the other problems), an empty file, an empty catalog, coordinates that look swapped (warnings,
failing only with --strict), and one Feature validated exactly as the check validates it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from fences.catalog import load_catalog, store_from_feature, validate
from fences.errors import CatalogError


def circle(sid: str, lon: float, lat: float, merchant: str = "m-1", **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"store_id": sid, "merchant_id": merchant, "radius_m": 30, **props},
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }


def fc(*features: Any) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, list[str]]:
    p = tmp_path / "cat.geojson"
    p.write_text(text)
    rc = main(["fences", "check", str(p), *flags])
    return rc, capsys.readouterr().out.splitlines()


def test_repeated_member_is_located_and_the_check_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        '{"type": "FeatureCollection", "features": [\n'
        '{"type": "Feature", "properties": {"store_id": "a", "merchant_id": "m", "radius_m": 30, '
        '"radius_m": 40}, "geometry": {"type": "Point", "coordinates": [24.94, 60.17]}},\n'
        '{"type": "Feature", "properties": {"store_id": "b", "merchant_id": "m", "radius_m": 0}, '
        '"geometry": {"type": "Point", "coordinates": [24.95, 60.17]}}\n'
        '], "type": "FeatureCollection"}\n'
    )
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 1
    assert lines[0] == (
        "catalog: line 4 column 4: the top-level object has the member 'type' twice, so readers "
        "disagree on its value (the last one is used here); keep only one"
    )
    assert lines[1].startswith(
        "feature 0 (store_id 'a'): line 2 column 89: properties has the member 'radius_m' twice"
    )
    assert lines[2].startswith("feature 1 (store_id 'b'): radius_m 0 is out of range")
    assert lines[-1].endswith("1 valid stores: 1 circles, 0 polygons, 0 wifi BSSIDs, 0 beacons, 0 NFC tags; 3 problem(s) in 2 feature(s)")
    # loading (strict) refuses it with the same located message
    with pytest.raises(CatalogError, match="line 2 column 89"):
        load_catalog(tmp_path / "cat.geojson", strict=True)


@pytest.mark.parametrize("text", ["", "  \n\n"])
def test_empty_file_says_it_is_empty_and_what_a_catalog_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 1
    assert lines[0].startswith("catalog: the file is ")
    assert '{"type": "FeatureCollection", "features": [{"type": "Feature"' in lines[0]
    assert "Expecting value" not in "\n".join(lines)
    with pytest.raises(CatalogError, match="the file is"):
        load_catalog(tmp_path / "cat.geojson")


def test_empty_catalog_and_missing_type_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, lines = check(tmp_path, '{"features": []}', capsys)
    assert rc == 1
    assert lines[0].startswith('catalog: "type" is missing; a catalog is a GeoJSON FeatureCollection')
    assert lines[1].startswith('catalog: "features" is empty: the catalog has no stores')
    empty = fc()
    assert [p.reason.split(":")[0] for p in validate(empty)] == ['"features" is empty']
    with pytest.raises(CatalogError, match="no stores"):
        load_catalog(_write(tmp_path, "e.geojson", empty))


def _write(tmp_path: Path, name: str, obj: Any) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


HELSINKI = [(24.9384, 60.1699), (24.9414, 60.1719), (24.9500, 60.1650), (24.9300, 60.1600)]


def test_swapped_coordinates_are_warnings_naming_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feats = [circle(f"h{i}", lon, lat) for i, (lon, lat) in enumerate(HELSINKI)]
    feats.append(circle("swapped-merchant", 60.1710, 24.9420))  # no tz: its merchant tells
    feats.append(circle("swapped-tz", 60.1700, 24.9400, merchant="m-2", tz="Europe/Helsinki"))
    feats.append(circle("link-tz", 40.7128, -74.0060, merchant="m-3", tz="US/Eastern"))  # not in zone.tab
    # left alone: a chain with a store abroad, a store in its zone, UTC says nothing
    feats.append(circle("ny", -74.0060, 40.7128, tz="America/New_York"))
    feats.append(circle("utc", 60.1700, 24.9400, merchant="m-4", tz="UTC"))
    text = json.dumps(fc(*feats))
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 0, lines
    warned = [line for line in lines if ": warning: " in line]
    assert [w.split(":")[0] for w in warned] == [
        "feature 4 (store_id 'swapped-merchant')",
        "feature 5 (store_id 'swapped-tz')",
        "feature 6 (store_id 'link-tz')",
    ]
    assert "from the median location" in warned[0] and "write [24.942, 60.171]" in warned[0]
    assert "from its time zone Europe/Helsinki" in warned[1] and "write [24.94, 60.17]" in warned[1]
    assert "US/Eastern" in warned[2] and "write [-74.006, 40.7128]" in warned[2]
    assert lines[-1].endswith("; OK, 3 warning(s)")
    rc, lines = check(tmp_path, text, capsys, "--strict")
    assert rc == 1 and lines[-1].endswith("; OK, 3 warning(s) (--strict: failing)")
    # warnings never stop loading
    assert len(load_catalog(tmp_path / "cat.geojson")) == len(feats)


def test_one_feature_is_validated_exactly_as_the_check_does() -> None:
    from fences.catalog import check_stores, feature_problems

    good = circle("a", 24.94, 60.17, tz="Europe/Helsinki")
    swapped = circle("b", 60.17, 24.94, tz="Europe/Helsinki")
    bad = circle("c", 24.94, 60.17, radius_m=0, tz="Mars/Olympus", wifi=["zz"])
    _, problems = check_stores(fc(good, swapped, bad))
    for i, f in enumerate((good, swapped, bad)):
        assert feature_problems(f, i) == [p for p in problems if p.index == i], i
    assert feature_problems(good) == []
    assert [p.warning for p in feature_problems(swapped)] == [True]
    assert len(feature_problems(bad)) == 3 and not any(p.warning for p in feature_problems(bad))
    assert store_from_feature(swapped).store_id == "b"  # a warning does not raise
