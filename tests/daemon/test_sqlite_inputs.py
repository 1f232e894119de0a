"""The SQLite store's window of committed input digests (redelivery detection), held against
the obvious oracle (the list of the last N digests), across restarts and from a schema-1 file."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import StateError
from engine.stores.sqlite_store import SCHEMA_VERSION, SQLiteStore

WINDOW = 1000  # the store's smallest allowed window

digest = st.integers(0, 1500).map(lambda i: i.to_bytes(16, "big"))


def _oracle(history: list[bytes], probe: list[bytes]) -> set[bytes]:
    last = set(history[-WINDOW:])
    return {d for d in probe if d in last}


@settings(max_examples=25, deadline=None)
@given(
    batches=st.lists(st.lists(digest, max_size=400), max_size=12),
    probe=st.lists(digest, max_size=300),
)
def test_seen_inputs_is_the_last_window_of_committed_digests(tmp_path_factory, batches, probe):
    path = tmp_path_factory.mktemp("inputs") / "s.db"
    store = SQLiteStore(path, input_window=WINDOW)
    history: list[bytes] = []
    for i, batch in enumerate(batches):
        store.commit([], inputs=batch)
        history += batch
        if i == len(batches) // 2:  # a restart midway: the window is rebuilt from the file
            store.close()
            store = SQLiteStore(path, input_window=WINDOW)
    assert store.seen_inputs(probe) == _oracle(history, probe)
    store.close()
    again = SQLiteStore(path, input_window=WINDOW)
    assert again.seen_inputs(probe) == _oracle(history, probe)
    kept = again.logged_inputs()  # the file keeps the window, pruned a few hundred at a time
    assert min(len(history), WINDOW) <= kept <= WINDOW + 256 + 400
    again.close()


def test_a_failed_commit_remembers_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.db", input_window=WINDOW)
    store.commit([], inputs=[b"a" * 16])
    store._db.execute(
        "CREATE TRIGGER no_more BEFORE INSERT ON input_log BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    with pytest.raises(StateError):
        store.commit([], inputs=[b"b" * 16])
    assert store.seen_inputs([b"a" * 16, b"b" * 16]) == {b"a" * 16}


def test_a_schema_1_file_is_migrated_with_its_digests(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE inputs (digest BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX inputs_seq ON inputs (seq);
        """
    )
    db.executemany(
        "INSERT INTO inputs VALUES (?, ?)", [(bytes([i]) * 16, i + 1) for i in range(50)]
    )
    db.commit()
    db.close()
    store = SQLiteStore(path, input_window=WINDOW)
    assert store.seen_inputs([bytes([3]) * 16, bytes([99]) * 16]) == {bytes([3]) * 16}
    assert store.get_meta("schema") == str(SCHEMA_VERSION)
    store.commit([], inputs=[bytes([200]) * 16])  # numbering goes on after the old rows
    assert store.logged_inputs() == 51
    names = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master")}
    assert "inputs" not in names and "input_log" in names
    store.close()


def test_one_row_per_commit_and_old_one_digest_rows_read_alike(tmp_path):
    """A commit writes its digests as one row numbered by its last input; a log written one
    digest per row (the layout before) is read the same, and numbering goes on after it."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path, input_window=WINDOW)
    store._db.executemany(  # the old layout: one row per input, numbered by input
        "INSERT INTO input_log (seq, digest) VALUES (?, ?)",
        [(i + 1, i.to_bytes(16, "big")) for i in range(3)],
    )
    store.close()
    store = SQLiteStore(path, input_window=WINDOW)
    new = [i.to_bytes(16, "big") for i in range(3, 8)]
    store.commit([], inputs=new)
    rows = store._db.execute("SELECT seq, length(digest) FROM input_log ORDER BY seq").fetchall()
    assert rows == [(1, 16), (2, 16), (3, 16), (8, 80)]
    store.close()
    again = SQLiteStore(path, input_window=4)  # the window cuts through the packed row
    probe = [i.to_bytes(16, "big") for i in range(9)]
    assert again.seen_inputs(probe) == set(probe[4:8])
    assert again.logged_inputs() == 8
    again.close()


def test_a_digest_of_the_wrong_size_is_refused(tmp_path):
    store = SQLiteStore(tmp_path / "s.db", input_window=WINDOW)
    with pytest.raises(StateError, match="16 bytes"):
        store.commit([], inputs=[b"short"])
    assert store.logged_inputs() == 0
    store.close()


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 5000),
    batches=st.lists(st.lists(st.integers(0, 3000), max_size=700), max_size=15),
    probe=st.lists(st.integers(0, 3000), max_size=200),
)
def test_the_chunked_window_against_the_last_n(size, batches, probe):
    """The store's in-memory window (chunks of ~size/16, dropped whole) answers exactly the
    last ``size`` digests, and holds no more than a chunk and a batch beyond them."""
    from engine.stores.sqlite_store import _InputWindow

    as_bytes = [[i.to_bytes(16, "big") for i in b] for b in batches]
    window = _InputWindow(size)
    history: list[bytes] = []
    for b in as_bytes:
        window.add(b)
        history += b
        assert len(window) <= size + max(256, size // 16) + len(b)
    p = [i.to_bytes(16, "big") for i in probe]
    last = set(history[-size:])
    assert window.seen(p) == {d for d in p if d in last}
