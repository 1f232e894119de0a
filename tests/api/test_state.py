"""The API's tables in the state file: migration from schema 3, hashed tokens, change order."""

from __future__ import annotations

import json
import sqlite3

from engine.api.state import ApiState, StoreChange, hash_token, read_store_changes
from engine.stores.sqlite_store import SCHEMA_VERSION, SQLiteStore


def test_a_schema_3_state_file_gets_the_api_tables(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '3');
        """
    )
    db.commit()
    db.close()
    assert read_store_changes(path) == []  # before the migration: no changes, no error
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert {"api_stores", "api_tokens"} <= names


def test_tokens_are_kept_hashed_and_changes_numbered_in_order(tmp_path):
    st = ApiState(tmp_path / "s.db")  # creates the file
    try:
        _info, secret = st.create_token("operator")
        st.record([StoreChange("b", "m", {"x": 1}), StoreChange("a", "m", None)])
        st.record([StoreChange("b", "m", {"x": 2})])
    finally:
        st.close()
    db = sqlite3.connect(tmp_path / "s.db")
    rows = db.execute("SELECT sha256 FROM api_tokens").fetchall()
    db.close()
    assert rows == [(hash_token(secret),)]
    assert secret not in json.dumps(rows)
    changes = read_store_changes(tmp_path / "s.db")
    assert [(c.store_id, c.feature, c.seq) for c in changes] == [("a", None, 2), ("b", {"x": 2}, 3)]
    assert [c.store_id for c in read_store_changes(tmp_path / "s.db", after=2)] == ["b"]


def test_what_only_a_sqlite_state_keeps_is_refused_with_a_reason_on_redis() -> None:
    """A group's API (Redis state) serves stores, tokens and webhooks; reports say why not and
    what to do (a 503) instead of failing on a missing log or making a file."""
    import pytest

    from engine.api.deps import sqlite_only
    from engine.api.errors import NotInGroup

    sqlite_only("/var/lib/geopush/state.sqlite", "reports")  # a SQLite file: fine
    with pytest.raises(NotInGroup, match="reports need.*single daemon with a SQLite state file"):
        sqlite_only("redis://127.0.0.1:6379/0", "reports")
