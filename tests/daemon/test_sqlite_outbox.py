"""The SQLite outbox marks rows sent by their seq (schema 3, no index on out_id): held against
a plain model of which rows were acknowledged, across restarts, and from a schema-2 file."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.stores.sqlite_store import SCHEMA_VERSION, OutRow, SQLiteStore, seq_runs

ids = st.sampled_from([f"o{i}" for i in range(12)])  # few ids: repeats happen


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("commit"), st.lists(ids, max_size=6)),
            st.tuples(st.just("ack_later"), st.lists(ids, max_size=4)),
            st.tuples(st.just("ack_now"), st.lists(ids, max_size=4)),
            st.tuples(st.just("restart"), st.just([])),
        ),
        max_size=25,
    )
)
def test_each_acknowledgement_marks_one_written_row(tmp_path_factory, steps):
    path = tmp_path_factory.mktemp("outbox") / "s.db"
    store = SQLiteStore(path)
    unsent: list[str] = []  # the model: out_ids of unsent rows, oldest first
    deferred: list[str] = []
    for kind, arg in steps:
        if kind == "commit":
            store.commit([], extra=[OutRow(o, "t/x", o.encode()) for o in arg])
            for o in deferred:  # the commit writes the marks acknowledged before it
                if o in unsent:
                    unsent.remove(o)
            deferred = []
            unsent += arg
        elif kind == "ack_later":
            store.defer_sent(arg)
            deferred += arg
        elif kind == "ack_now":
            store.mark_sent(arg)
            for o in [*deferred, *arg]:
                if o in unsent:
                    unsent.remove(o)
            deferred = []
        else:  # a restart forgets deferred marks: those rows stay unsent (re-published)
            store.close()
            store = SQLiteStore(path)
            deferred = []
            assert [r.out_id for r in store.unsent()] == unsent  # and reloads their seqs
    assert [r.out_id for r in store.unsent()] == unsent
    assert store.count("outbox", "WHERE sent = 0") == len(unsent)
    store.close()


@settings(max_examples=500)
@given(st.lists(st.integers(1, 60), max_size=40))
def test_marks_go_by_runs_that_hold_exactly_the_acknowledged_seqs(seqs):
    """The mark statement's ranges (one UPDATE per run of consecutive seqs) against the obvious:
    the numbers they cover are the given ones, each once, in as few runs as possible."""
    runs = seq_runs(seqs)
    covered = [q for a, b in runs for q in range(a, b + 1)]
    assert covered == sorted(set(seqs))
    assert all(b + 1 < a2 for (_, b), (a2, _) in zip(runs, runs[1:], strict=False))  # maximal
    assert len(runs) == len({q for q in seqs if q - 1 not in seqs})


def test_an_acknowledgement_of_an_unknown_id_marks_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    store.commit([], extra=[OutRow("a", "t/x", b"p")])
    store.mark_sent(["zzz"])
    assert [r.out_id for r in store.unsent()] == ["a"]
    store.close()


def test_a_schema_2_file_is_rebuilt_and_keeps_its_rows_and_flags(tmp_path):
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '2');
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, out_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL, payload BLOB NOT NULL, sent INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX outbox_unsent ON outbox (sent, seq);
        INSERT INTO outbox (out_id, topic, payload, sent) VALUES
            ('a', 't/a', x'01', 1), ('b', 't/b', x'02', 0), ('c', 't/c', x'03', 0);
        """
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    assert store.get_meta("schema") == str(SCHEMA_VERSION)
    assert [(r.out_id, r.topic, r.payload) for r in store.unsent()] == [
        ("b", "t/b", b"\x02"),
        ("c", "t/c", b"\x03"),
    ]
    store.mark_sent(["c"])
    store.commit([], extra=[OutRow("b", "t/b2", b"\x04")])  # the same id again: a second row
    assert [r.topic for r in store.unsent()] == ["t/b", "t/b2"]
    indexes = {
        r[0]
        for r in store._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'"
        )
    }
    assert indexes == {"outbox_unsent"}  # no index on out_id any more
    store.close()


def test_sent_rows_beyond_the_keep_are_pruned_unsent_ones_never(tmp_path):
    store = SQLiteStore(tmp_path / "s.db", outbox_keep=300)
    store.commit([], extra=[OutRow("stuck", "t/x", b"p")])  # never acknowledged
    for b in range(20):
        ids = [f"b{b}-{i}" for i in range(100)]
        store.commit([], extra=[OutRow(o, "t/x", b"p") for o in ids])
        store.defer_sent(ids)  # acknowledged: marked by the next commit
    store.commit([], extra=[OutRow("last", "t/x", b"p")])
    kept = store.count("outbox", "WHERE sent = 1")
    assert 300 - 256 <= kept <= 300 + 256 + 100  # bounded near the keep, pruned as commits go
    assert [r.out_id for r in store.unsent()] == ["stuck", "last"]
    store.close()



def _vm_steps(store: SQLiteStore, work) -> int:
    """SQLite virtual-machine steps (in thousands) ``work`` makes on the store's connection:
    what the statements read, counted, not timed."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(tick, 1000)
    try:
        work()
    finally:
        store._db.set_progress_handler(None, 1000)
    return steps[0]


def _batches(store: SQLiteStore, prefix: str, n: int, *, ack: bool) -> None:
    for b in range(n):
        ids = [f"{prefix}{b}-{i}" for i in range(100)]
        store.commit([], extra=[OutRow(o, "t/x", b"p" * 100) for o in ids])
        if ack:
            store.defer_sent(ids)


def test_a_long_unsent_backlog_is_not_read_again_at_every_prune(tmp_path):
    """A broker down for long leaves an unsent backlog at the front of the outbox; the prunes
    that follow (every 256 rows) read only the seqs past the previous prune, not the backlog
    again each time (the partial index left the prune no index of its own)."""
    costs = {}
    for backlog in (0, 30_000):
        store = SQLiteStore(tmp_path / f"s{backlog}.db", outbox_keep=300)
        _batches(store, "down", backlog // 100, ack=False)  # the broker is down: none acked
        _batches(store, "warm", 10, ack=True)  # the first prunes after it (may read the front)
        costs[backlog] = _vm_steps(store, lambda s=store: _batches(s, "up", 50, ack=True))
        assert store.count("outbox", "WHERE sent = 0") == backlog + 100
        store.close()
    # 50 commits, ~20 prunes: without the watermark each read the 30,000 rows again (~60x)
    assert costs[30_000] < 2 * costs[0] + 50, costs


def test_a_backlog_acknowledged_late_is_marked_then_pruned(tmp_path):
    store = SQLiteStore(tmp_path / "s.db", outbox_keep=300)
    _batches(store, "down", 10, ack=False)
    _batches(store, "up", 10, ack=True)
    store.commit([], extra=[OutRow("last", "t/x", b"p")])  # writes the last marks, prunes
    late = [f"down{b}-{i}" for b in range(10) for i in range(100)]
    assert [r.out_id for r in store.unsent()] == [*late, "last"]
    store.mark_sent(late[:500])  # beyond the kept window: gone rather than kept as sent
    store.defer_sent(late[500:])
    store.commit([], extra=[OutRow("after", "t/x", b"p")])
    assert [r.out_id for r in store.unsent()] == ["last", "after"]
    assert store.count("outbox", "WHERE out_id LIKE 'down%'") == 0
    assert store.count("outbox") <= 300 + 256 + 100  # bounded near the keep
    store.close()
    again = SQLiteStore(tmp_path / "s.db", outbox_keep=300)
    assert [r.out_id for r in again.unsent()] == ["last", "after"]
    again.close()


def _unsent_index_sql(store: SQLiteStore) -> str:
    rows = store._db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'"
    ).fetchall()
    assert len(rows) == 1, rows  # one index on the outbox
    return str(rows[0][0])


def test_the_unsent_index_holds_only_unsent_rows_and_old_files_get_it(tmp_path):
    """The outbox's index is partial (``WHERE sent = 0``): a mark takes the row out of it, an
    insert adds one entry. A file with the old ``(sent, seq)`` index gets the partial one at
    open, its rows and flags unchanged, and the queries on ``sent`` still answer the same."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    assert "WHERE sent = 0" in _unsent_index_sql(store)
    store.commit([], extra=[OutRow(f"o{i}", "t/x", b"p") for i in range(6)])
    store.mark_sent(["o1", "o2", "o4"])
    store.close()
    db = sqlite3.connect(path)  # the index a file written before 2026-12-07 evening has
    db.executescript("DROP INDEX outbox_unsent; CREATE INDEX outbox_unsent ON outbox (sent, seq);")
    db.close()
    store = SQLiteStore(path)
    assert "WHERE sent = 0" in _unsent_index_sql(store)
    assert [r.out_id for r in store.unsent()] == ["o0", "o3", "o5"]
    plan = store._db.execute("EXPLAIN QUERY PLAN SELECT seq FROM outbox WHERE sent = 0 ORDER BY seq")
    assert "outbox_unsent" in str(plan.fetchall())
    store.mark_sent(["o3"])
    assert store.count("outbox", "WHERE sent = 0") == 2
    assert [r[0] for r in store.outbox() if r[3]] == ["o1", "o2", "o3", "o4"]
    store.close()
    # an older geopush opening the file runs CREATE INDEX IF NOT EXISTS: the partial one stays
    db = sqlite3.connect(path)
    db.execute("CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent, seq)")
    assert "WHERE sent = 0" in str(db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'outbox_unsent'").fetchone()[0])  # fmt: skip
    db.close()


def test_each_acknowledgement_marks_its_own_row_new_ids_and_repeated_ones(tmp_path):
    """Which rows the marks hit, row by row: ids new in their commit (the store's C-level path)
    and an id committed again while its first row is unsent (its later seqs kept apart), each
    acknowledgement marking the oldest unmarked row of its id."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.commit([], extra=[OutRow(o, "t/x", o.encode()) for o in ("a", "b", "c")])
        store.defer_sent(["b"])
        store.commit([], extra=[OutRow(o, "t/y", o.encode()) for o in ("d", "a", "e")])
        assert [(r[0], r[1], r[3]) for r in store.outbox()] == [
            ("a", "t/x", False), ("b", "t/x", True), ("c", "t/x", False),
            ("d", "t/y", False), ("a", "t/y", False), ("e", "t/y", False),
        ]  # fmt: skip
        store.mark_sent(["a", "e"])  # the oldest "a" (t/x), then "e"
        assert [r[3] for r in store.outbox()] == [True, True, False, False, False, True]
        store.defer_sent(["a", "c", "a"])  # the second "a" (t/y); the third finds no row
        store.commit([], extra=[OutRow("f", "t/z", b"f")])
        assert [r[3] for r in store.outbox()] == [True, True, True, False, True, True, False]
        assert [(r.out_id, r.topic) for r in store.unsent()] == [("d", "t/y"), ("f", "t/z")]
    finally:
        store.close()
