"""fences.snapshot: a restart from the compiled snapshot answers exactly like a cold load (same
stores, look-ups and match results on random fixes, before and after live changes), and any
change to the source, the code or the file itself falls back to a cold load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import shapely

from fences import snapshot as S
from fences.catalog import Catalog, dump_catalog, load_catalog
from fences.errors import CatalogError
from fences.index import FenceIndex
from fences.snapshot import LazyStores, load_index
from fences.store import Store
from fences.synth import synth_city

UUID = "F7826DA6-4FA2-4E98-8024-BC5B71E0893E"
LON0, LAT0 = 116.40, 39.90


def _stores(n: int = 2500) -> list[Store]:
    stores = synth_city(n, seed=4, lon0=LON0, lat0=LAT0).stores
    rich = [
        Store(
            "w-1",
            "m-w",
            name="Kahvila",
            center=(LON0, LAT0),
            radius_m=40.0,
            wifi=("a4:2b:b0:c1:d2:e3",),
            beacons=(f"{UUID}:1:2",),
            nfc=("tag-1",),
            tz="Asia/Shanghai",
            max_accuracy_m=35.0,
            tags=("umbrella",),
            properties={"floor": 2, "hours": {"mon": [9, 17]}},
        ),  # fmt: skip
        Store(
            "h-1",
            "m-h",
            polygon=shapely.Polygon(
                [
                    (LON0, LAT0),
                    (LON0 + 0.01, LAT0),
                    (LON0 + 0.01, LAT0 + 0.01),
                    (LON0, LAT0 + 0.01),
                ],
                [
                    [
                        (LON0 + 0.004, LAT0 + 0.004),
                        (LON0 + 0.006, LAT0 + 0.004),
                        (LON0 + 0.006, LAT0 + 0.006),
                        (LON0 + 0.004, LAT0 + 0.006),
                    ]
                ],
            ),
        ),  # fmt: skip
        Store(
            "a-1",
            "m-a",
            polygon=shapely.MultiPolygon(
                [shapely.box(179.99, 10.0, 180.0, 10.01), shapely.box(-180.0, 10.0, -179.99, 10.01)]
            ),
        ),  # fmt: skip
        Store("big", "m-b", center=(LON0 + 0.05, LAT0), radius_m=20_000.0),
    ]
    return [*stores, *rich]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "stores.geojson"
    dump_catalog(_stores(), path)
    return path


def _fixes(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lons = LON0 + rng.normal(size=n) * 0.08
    lats = LAT0 + rng.normal(size=n) * 0.08
    lons[:50] = rng.uniform(179.98, 180.0, 50) * np.where(rng.random(50) < 0.5, 1, -1)
    lats[:50] = rng.uniform(10.0, 10.01, 50)
    return lons, lats


def _same_answers(a: FenceIndex, b: FenceIndex, seed: int = 0) -> None:
    lons, lats = _fixes(seed=seed)
    for acc in (0.0, 25.0):
        ra, rb = a.query_many(lons, lats, acc), b.query_many(lons, lats, acc)
        for x, y in zip(ra, rb, strict=True):
            assert np.array_equal(x, y)
    for lon, lat in zip(lons[:300].tolist(), lats[:300].tolist(), strict=True):
        assert a.query(lon, lat, 10.0) == b.query(lon, lat, 10.0)
    assert len(a) == len(b)


def _same_catalog(a: Catalog, b: Catalog) -> None:
    assert list(a.stores) == list(b.stores)
    assert [s.properties for s in a.stores] == [s.properties for s in b.stores]
    assert a._by_id == b._by_id and a.tagged == b.tagged
    assert (a._by_bssid, a._by_beacon, a._by_nfc) == (b._by_bssid, b._by_beacon, b._by_nfc)


def test_snapshot_restart_answers_like_a_cold_load(source: Path, tmp_path: Path) -> None:
    snap = tmp_path / "state.fences.snapshot"
    cold, info = load_index(source, snap)
    assert info.source == "cold" and info.reason == "no snapshot yet" and snap.exists()
    warm, info = load_index(source, snap)
    assert info.source == "snapshot"
    assert isinstance(warm.catalog.stores, LazyStores)
    # the BSSID, beacon and NFC look-ups are decoded when first used, each on its own
    assert not any(isinstance(t, dict) for t in warm.catalog._lookups)
    _same_answers(cold, warm)
    assert warm.catalog.by_bssid("A4-2B-B0-C1-D2-E3") == cold.catalog.by_bssid("a4:2b:b0:c1:d2:e3")
    assert [isinstance(t, dict) for t in warm.catalog._lookups] == [True, False, False]
    assert warm.catalog.by_beacon(UUID, 1, 2) == cold.catalog.by_beacon(UUID, 1, 2) is not None
    assert warm.catalog.get("w-1") == cold.catalog.get("w-1")
    _same_catalog(cold.catalog, warm.catalog)
    assert list(tmp_path.glob("*.tmp-*")) == []


def test_owners_without_making_stores(source: Path, tmp_path: Path) -> None:
    snap = tmp_path / "s.snapshot"
    cold, _ = load_index(source, snap)
    warm, _ = load_index(source, snap)
    assert list(warm.catalog.owners()) == list(cold.catalog.owners())
    assert list.count(warm.catalog.stores, None) == len(cold.catalog)  # none made
    for idx in (cold, warm):
        idx.remove("s0000003")
        idx.update(Store("s0000004", "m-new", center=(LON0, LAT0), radius_m=50.0))
        idx.add(Store("z-1", "m-z", center=(LON0, LAT0), radius_m=50.0))
    assert list(warm.catalog.owners()) == list(cold.catalog.owners())
    assert ("s0000004", "m-new") in list(warm.catalog.owners())


def test_live_changes_after_a_snapshot_restart(source: Path, tmp_path: Path) -> None:
    snap = tmp_path / "s.snapshot"
    load_index(source, snap)
    before = hashlib.sha256(snap.read_bytes()).hexdigest()
    cold = FenceIndex(load_catalog(source))
    warm, info = load_index(source, snap)
    assert info.source == "snapshot"
    rng = np.random.default_rng(7)
    for idx in (cold, warm):
        idx.remove("s0000010")
        idx.remove("h-1")
        idx.update(Store("s0000011", "m-x", center=(LON0 + 0.01, LAT0), radius_m=300.0))
        for k in range(40):
            lon, lat = LON0 + rng.normal() * 0.05, LAT0 + rng.normal() * 0.05
            idx.add(
                Store(
                    f"new-{k}",
                    "m-n",
                    center=(lon, lat),
                    radius_m=150.0,
                    wifi=(f"00:00:00:00:00:{k:02x}",),
                )
            )
        rng = np.random.default_rng(7)
    _same_answers(cold, warm, seed=3)
    _same_catalog(cold.catalog, warm.catalog)
    cold.compact()
    warm.compact()
    _same_answers(cold, warm, seed=4)
    assert hashlib.sha256(snap.read_bytes()).hexdigest() == before  # copy-on-write


def test_a_changed_source_is_loaded_cold_and_the_snapshot_rewritten(
    source: Path, tmp_path: Path
) -> None:
    snap = tmp_path / "s.snapshot"
    load_index(source, snap)
    stores = _stores()
    stores[0] = Store(stores[0].store_id, "m-moved", center=(LON0, LAT0 + 0.3), radius_m=99.0)
    dump_catalog(stores, source)
    idx, info = load_index(source, snap)
    assert info.source == "cold" and "changed" in info.reason
    assert idx.catalog.get(stores[0].store_id).merchant_id == "m-moved"
    again, info = load_index(source, snap)
    assert info.source == "snapshot"
    assert again.catalog.get(stores[0].store_id).merchant_id == "m-moved"
    _same_answers(idx, again)


def test_a_one_byte_change_of_the_same_size_and_mtime_is_caught(
    source: Path, tmp_path: Path
) -> None:
    """The digest (computed while the snapshot is mapped) is of the content: a change that keeps
    the size and the modification time still means a cold load."""
    snap = tmp_path / "s.snapshot"
    load_index(source, snap)
    st = source.stat()
    text = source.read_bytes()
    at = text.index(b'"merchant_id": "') + len(b'"merchant_id": "')
    changed = text[:at] + (b"X" if text[at : at + 1] != b"X" else b"Y") + text[at + 1 :]
    source.write_bytes(changed)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source.stat().st_size == st.st_size and source.stat().st_mtime_ns == st.st_mtime_ns
    idx, info = load_index(source, snap)
    assert info.source == "cold" and "changed" in info.reason
    assert (
        idx.catalog.stores[0].merchant_id
        == json.loads(changed)["features"][0]["properties"]["merchant_id"]
    )


def test_a_failing_digest_is_no_snapshot(source: Path, tmp_path: Path) -> None:
    """What computing the catalog's digest raises (in its thread) reaches the caller: an
    unreadable catalog is no snapshot, and then the cold load says what is wrong."""
    snap = tmp_path / "s.snapshot"
    load_index(source, snap)

    def unreadable() -> dict[str, object]:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(S.SnapshotMismatch, match="Permission denied"):
        S.load(snap, unreadable)
    source.unlink()
    with pytest.raises(CatalogError, match="cannot read"):
        load_index(source, snap)


@pytest.mark.parametrize(
    "damage",
    ["truncate", "garbage", "empty", "code"],
)
def test_a_bad_or_foreign_snapshot_falls_back_to_cold(
    source: Path, tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "s.snapshot"
    cold, _ = load_index(source, snap)
    data = snap.read_bytes()
    if damage == "truncate":
        snap.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        snap.write_bytes(b"x" * 1000)
    elif damage == "empty":
        snap.write_bytes(b"")
    else:
        monkeypatch.setattr(S, "FORMAT", S.FORMAT + 1)
    idx, info = load_index(source, snap)
    assert info.source == "cold", info
    _same_answers(cold, idx)
    assert load_index(source, snap)[1].source == "snapshot"


def test_no_snapshot_path_means_always_cold(source: Path, tmp_path: Path) -> None:
    idx, info = load_index(source, None)
    assert info.source == "cold" and list(tmp_path.iterdir()) == [source]
    assert len(idx) == len(_stores())


def test_an_invalid_catalog_raises_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
                   '{"store_id": "x"}, "geometry": null}]}')  # fmt: skip
    with pytest.raises(CatalogError):
        load_index(bad, tmp_path / "s.snapshot")
    assert not (tmp_path / "s.snapshot").exists()


def test_lazy_stores_behave_like_a_list(source: Path, tmp_path: Path) -> None:
    load_index(source, tmp_path / "s.snapshot")
    warm, _ = load_index(source, tmp_path / "s.snapshot")
    stores = warm.catalog.stores
    ref = load_catalog(source).stores
    assert stores[-1] == ref[-1] and stores[3:6] == ref[3:6] and len(stores) == len(ref)
    assert [s.store_id for s in stores] == [s.store_id for s in ref]
    assert stores == ref


def test_an_unwritable_snapshot_is_a_warning_not_an_error(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    idx, info = load_index(source, tmp_path / "missing-dir" / "s.snapshot")
    assert info.source == "cold" and len(idx) == len(_stores())
    assert any("could not write the fences snapshot" in r.getMessage() for r in caplog.records)
