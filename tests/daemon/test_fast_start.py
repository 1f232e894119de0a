"""`geopush run` keeps a compiled snapshot of --fences beside its state file and restarts from
it (fences.snapshot); the snapshot answers like the catalog file, follows the file when it
changes, and can be turned off."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.daemon.config import load_settings
from engine.daemon.loading import load_fences_and_campaigns, warm_up

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _settings(tmp_path: Path, **flags: object) -> object:
    return load_settings(
        {
            "state": tmp_path / "s.db",
            "fences": EXAMPLES / "stores.geojson",
            "campaigns": EXAMPLES / "campaigns.yaml",
            **flags,
        }
    )


def _answers(index: object) -> list[object]:
    stores = index.catalog.stores  # type: ignore[attr-defined]
    out = []
    for s in list(stores):
        lon, lat = s.center if s.center is not None else s.polygon.representative_point().coords[0]
        out.append(index.query(lon, lat, 20.0))  # type: ignore[attr-defined]
    return out


def test_restart_uses_the_snapshot_beside_the_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geopush.daemon")
    settings = _settings(tmp_path)
    first = load_fences_and_campaigns(settings)  # type: ignore[arg-type]
    snap = tmp_path / "s.db.fences.snapshot"
    assert snap.exists()
    second = load_fences_and_campaigns(settings)  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fences:")]
    assert "loaded from" in messages[0] and "no snapshot yet" in messages[0]
    assert f"from the snapshot {snap}" in messages[1]
    assert _answers(first["index"]) == _answers(second["index"])
    warm_up(second["index"], second["campaigns"])


def test_snapshot_off_and_redis_state_write_none(tmp_path: Path) -> None:
    settings = _settings(tmp_path, fences_snapshot="off")
    assert settings.fences_snapshot_path is None  # type: ignore[attr-defined]
    load_fences_and_campaigns(settings)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*snapshot*"))
    redis = _settings(tmp_path, state="redis://localhost:6379/0")
    assert redis.fences_snapshot_path is None  # type: ignore[attr-defined]
    chosen = _settings(
        tmp_path, state="redis://localhost:6379/0", fences_snapshot=tmp_path / "f.snap"
    )
    assert chosen.fences_snapshot_path == tmp_path / "f.snap"  # type: ignore[attr-defined]
