"""The daemon's coupon secret: from the settings, else generated on first start and kept in the
state file, so codes issued before a restart still verify after it."""

from __future__ import annotations

import pytest

from engine.daemon.config import load_settings
from engine.daemon.pipeline import Renderer, Topics
from engine.daemon.service import real_core_factory
from engine.errors import ConfigError
from engine.stores.sqlite_store import SQLiteStore

from .conftest import World


def _secret(settings, db) -> str:  # type: ignore[no-untyped-def]
    store = SQLiteStore(db, render=Renderer(Topics()))
    try:
        return real_core_factory(settings)(store).config.coupon_secret
    finally:
        store.close()


def test_secret_generated_once_and_kept_in_the_state(tmp_path):
    world = World(tmp_path, users=2, per_user=2)
    db = tmp_path / "s.db"
    settings = load_settings({"state": db, "fences": world.fences, "campaigns": world.campaigns})
    first = _secret(settings, db)
    assert len(first) >= 32
    assert _secret(settings, db) == first  # a restart keeps it
    assert _secret(settings, tmp_path / "other.db") != first  # another state, another secret
    given = load_settings({"state": db, "fences": world.fences, "campaigns": world.campaigns,
                           "coupon_secret": "a-long-enough-secret"})  # fmt: skip
    assert _secret(given, db) == "a-long-enough-secret"
    assert given.attribution_window_s == 7 * 86400


def test_a_short_secret_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("GEOPUSH_COUPON_SECRET", "tooshort")
    with pytest.raises(ConfigError) as exc:
        load_settings({})
    assert "coupon_secret" in str(exc.value) and "tooshort" not in str(exc.value)
