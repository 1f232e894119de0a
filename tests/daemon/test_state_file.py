"""The state file is never silently taken for a new, empty state, and a corrupt user record is
reported (file and user) or quarantined: real SQLite files, the real `geopush run` command."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import StateError
from engine.outputs import encode_output
from engine.state import UserState, Visit
from engine.stores.sqlite_store import OutRow, SQLiteStore

from .conftest import Collector, World, spawn_daemon, wait_online


def _render(out: object) -> OutRow:
    return OutRow("x", "t", encode_output(out))  # type: ignore[arg-type]


def _make_state(path: Path) -> None:
    """A state file with two users (one with an open visit) and a coupon counter at 0."""
    store = SQLiteStore(path, render=_render)
    a = store.user("alice")
    a.visits["s1"] = Visit(
        visit_id="v1", store_id="s1", merchant_id="m1", enter_ts=1.0, last_seen_ts=2.0, signal="gps"
    )
    store.user("bob").last_ts = 5.0
    assert store.take_coupon("c1", 1)
    store.commit([])
    store.close()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_truncated_state_file_is_refused_not_taken_for_a_new_state(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _make_state(path)
    path.write_bytes(b"")  # truncated to 0 bytes
    with pytest.raises(StateError, match="--new-state") as err:
        SQLiteStore(path)
    assert str(path) in str(err.value) and "0 bytes" in str(err.value)
    assert path.stat().st_size == 0  # left as it was
    # deliberately: a new state over the empty file
    store = SQLiteStore(path, new=True)
    assert store.created and store.count("users") == 0
    assert store.take_coupon("c1", 1)
    store.commit([])
    store.close()
    again = SQLiteStore(path)  # now a geopush file: no flag needed
    assert not again.created and again.inventory() == {"c1": 0}
    again.close()


def test_a_missing_file_is_a_new_state_and_an_existing_one_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.sqlite"
    store = SQLiteStore(path)
    assert store.created
    store.close()
    _make_state(tmp_path / "s2.sqlite")
    store = SQLiteStore(tmp_path / "s2.sqlite", new=True)  # the flag never empties a state
    assert not store.created and store.inventory() == {"c1": 0} and store.count("users") == 2
    store.close()


def test_foreign_files_are_refused_even_with_new_state(tmp_path: Path) -> None:
    text = tmp_path / "campaigns.json"
    text.write_text('{"campaigns": []}')
    with pytest.raises(StateError, match="not a SQLite database"):
        SQLiteStore(text, new=True)
    assert text.read_text() == '{"campaigns": []}'

    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="not a geopush state file") as err:
        SQLiteStore(other, new=True)
    assert str(other) in str(err.value) and "orders" in str(err.value)
    db = sqlite3.connect(other)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["orders"]
    db.close()

    empty_db = tmp_path / "empty.db"
    sqlite3.connect(empty_db).execute("PRAGMA user_version = 1").close()  # header, no tables
    with pytest.raises(StateError, match="no tables"):
        SQLiteStore(empty_db)
    SQLiteStore(empty_db, new=True).close()


def _corrupt(path: Path, user: str) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE users SET blob = x'c1ffee' WHERE user = ?", (user,))
    db.commit()
    db.close()


def test_a_corrupt_user_record_names_file_and_user_or_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _make_state(path)
    _corrupt(path, "bob")
    store = SQLiteStore(path)
    with pytest.raises(StateError) as err:
        store.users_with_visits()
    msg = str(err.value)
    assert str(path) in msg and "'bob'" in msg and "--quarantine-corrupt" in msg
    with pytest.raises(StateError, match="'bob'"):
        store.user("bob")
    store.close()

    store = SQLiteStore(path, quarantine_corrupt=True)
    assert [u.user for u in store.users_with_visits()] == ["alice"]
    assert store.quarantined == 1
    assert store.user("bob") == UserState(user="bob")  # starts afresh
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT user, blob FROM quarantine").fetchall() == [("bob", b"\xc1\xff\xee")]
    assert db.execute("SELECT user FROM users").fetchall() == [("alice",)]
    db.close()


def test_geopush_run_refuses_a_truncated_file_and_a_corrupt_record_with_a_message(
    tmp_path: Path,
) -> None:
    world = World(tmp_path / "city")
    files = ["--fences", str(world.fences), "--campaigns", str(world.campaigns)]
    # no broker is needed: the state is opened first
    broker = ["--broker", "mqtt://127.0.0.1:9", "--log-level", "WARNING"]
    path = tmp_path / "state.sqlite"
    _make_state(path)
    path.write_bytes(b"")
    res = _run_cli("--state", str(path), *files, *broker)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert str(path) in res.stderr and "--new-state" in res.stderr

    path.unlink()
    _make_state(path)
    _corrupt(path, "bob")
    res = _run_cli("--state", str(path), *files, *broker)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert str(path) in res.stderr and "'bob'" in res.stderr and "--quarantine-corrupt" in res.stderr


def test_geopush_run_quarantines_a_corrupt_record_and_starts(tmp_path: Path, broker) -> None:
    world = World(tmp_path / "city")
    path = tmp_path / "state.sqlite"
    _make_state(path)
    _corrupt(path, "bob")

    async def main() -> None:
        async with Collector(broker.url, ["geopush/status/#"]) as col:
            proc = spawn_daemon(broker.url, path, world, "--quarantine-corrupt")
            try:
                await wait_online(col, proc.pid)
            finally:
                proc.terminate()
                _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert b"'bob' is corrupt" in err and b"quarantine" in err

    asyncio.run(main())
    db = sqlite3.connect(path)
    assert db.execute("SELECT user FROM quarantine").fetchall() == [("bob",)]
    db.close()
