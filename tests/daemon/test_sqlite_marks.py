"""SQLite state off the hot path: acknowledged outputs marked sent inside the next batch commit,
WAL checkpoints in a background thread with the WAL still bounded, and what survives restarts."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3

from engine.stores import sqlite_store
from engine.stores.sqlite_store import OutRow, SQLiteStore

from .conftest import Collector, gps, publish_all, running_service


def _sent(path) -> dict[str, bool]:
    """The outbox's sent flags as another process would read them (a fresh connection)."""
    db = sqlite3.connect(str(path))
    try:
        return {o: bool(s) for o, s in db.execute("SELECT out_id, sent FROM outbox")}
    finally:
        db.close()


def test_deferred_marks_are_written_by_the_next_commit_or_mark_sent(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    try:
        store.commit([], extra=[OutRow(f"o{i}", "t/x", b"p") for i in range(6)])
        store.defer_sent(["o0", "o1"])
        assert store.sent_deferred == 2
        assert not any(_sent(path).values())  # not yet: no transaction of their own
        store.rollback()  # a batch the core failed on does not forget them
        store.commit([], extra=[OutRow("o6", "t/x", b"p")], inputs=[b"d1".ljust(16, b"-")])
        assert store.sent_deferred == 0
        assert {o for o, s in _sent(path).items() if s} == {"o0", "o1"}
        store.defer_sent(["o2"])
        store.mark_sent(["o3"])  # the idle path: deferred and given ids, one transaction
        assert {o for o, s in _sent(path).items() if s} == {"o0", "o1", "o2", "o3"}
        store.mark_sent([])  # nothing to do
        assert [r.out_id for r in store.unsent()] == ["o4", "o5", "o6"]
    finally:
        store.close()
    again = SQLiteStore(path)  # reopened: the marks were committed
    try:
        assert [r.out_id for r in again.unsent()] == ["o4", "o5", "o6"]
    finally:
        again.close()


def _settle(store: SQLiteStore) -> None:
    """Wait (no sleep, no timing) until a checkpoint round that began after the last commit is
    done: the round in progress may predate the commit, so wait for it and then one more."""
    ck = store._checkpointer  # noqa: SLF001
    assert ck is not None
    rounds = ck.rounds
    assert ck.wait_round(rounds), "checkpointer thread stuck"
    ck.poke()
    assert ck.wait_round(rounds + 1), "checkpointer thread stuck"


def test_checkpoints_run_in_the_background_and_the_wal_stays_bounded(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    blob = os.urandom(2000)
    sizes = []
    try:
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # noqa: SLF001
        for b in range(40):  # ~40 MB through the WAL, 1 MB per commit
            store.commit([], extra=[OutRow(f"b{b}-{i}", "t/x", blob) for i in range(500)])
            sizes.append(os.path.getsize(f"{path}-wal"))
            _settle(store)  # the background thread copied everything: the next commit restarts
        ck = store._checkpointer  # noqa: SLF001
        assert ck is not None and ck.checkpoints > 0
        # the log restarts after each checkpoint that caught up: it never holds two commits
        assert max(sizes) < 2 * 2**20
        assert store.inline_checkpoints == 0
    finally:
        store.close()
    assert store._checkpointer is None  # noqa: SLF001  (stopped with the store)


def _steady_commits(tmp_path, commits: int) -> tuple[list[int], int]:
    """The race of a steady stream of commits, played deterministically. Under load the writer's
    next commit lands while a checkpoint pass runs, so the pass ends with frames it did not copy.
    Here a reader pinned to the snapshot before that commit stops the pass at the same place (a
    PASSIVE checkpoint copies no frame past the oldest reader), and lets go after the pass, as
    the racing commit's end would. The checkpointer is driven step by step, never on its own.
    Returns the WAL sizes and the writer's own checkpoints."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    blob = os.urandom(2000)
    ck = sqlite_store._Checkpointer(path, start=False)  # noqa: SLF001
    store._checkpointer = ck  # noqa: SLF001  (poked by commits, never running on its own)
    db = sqlite3.connect(str(path), isolation_level=None)
    reader = sqlite3.connect(str(path), isolation_level=None)
    sizes = []

    def commit(n: int) -> None:
        store.commit([], extra=[OutRow(f"c{n}-{i}", "t/x", blob) for i in range(60)])
        sizes.append(os.path.getsize(f"{path}-wal"))

    try:
        for n in range(commits):
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM outbox").fetchall()  # snapshot pinned here
            commit(n)  # the commit that races the next pass
            ck._checkpoint(db, between=lambda: reader.in_transaction and reader.execute("COMMIT"))  # noqa: SLF001
            assert not reader.in_transaction
        return sizes, store.inline_checkpoints
    finally:
        reader.close()
        db.close()
        store.close()


def test_under_steady_commits_the_log_still_restarts(tmp_path):
    """A plain checkpoint under steady commits nearly always ends after the next commit appended
    more, so the writer never finds the log fully copied and cannot restart it; the checkpointer
    chases the tail until it can (a long log is chased; a short one waits for the next round)."""
    sizes, inline = _steady_commits(tmp_path, 300)  # ~42 MB through the WAL
    assert inline == 0
    assert max(sizes) < sqlite_store.WAL_LIMIT_BYTES // 2


def test_without_the_chase_the_log_grows_until_the_writer_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "_CHASE_MAX", 0)  # the oracle for the test above
    sizes, inline = _steady_commits(tmp_path, 300)
    assert inline > 0
    assert max(sizes) > sqlite_store.WAL_LIMIT_BYTES // 2


def test_the_writer_checkpoints_itself_when_the_background_falls_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "WAL_LIMIT_BYTES", 2 * 2**20)
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    blob = os.urandom(2000)
    try:
        store.commit([], extra=[OutRow("first", "t/x", blob)])
        store._stop_checkpointer()  # noqa: SLF001  a checkpointer that never runs ...
        store._checkpointer = _Stuck()  # noqa: SLF001
        sizes = []
        for b in range(30):  # ~30 MB
            store.commit([], extra=[OutRow(f"b{b}-{i}", "t/x", blob) for i in range(500)])
            sizes.append(os.path.getsize(f"{path}-wal"))
        assert max(sizes) < 6 * 2**20  # ... and the WAL is still bounded (limit + one commit)
        assert store.count("outbox") == 1 + 30 * 500
    finally:
        store.close()


class _Stuck:
    def poke(self) -> None:
        pass

    def stop(self) -> None:
        pass


async def test_outputs_marked_in_batch_commits_are_not_republished_after_a_restart(broker, tmp_path):
    state = tmp_path / "s.db"
    msgs = [("geopush/events/fay", gps("fay", float(i))) for i in range(1, 301)]
    async with Collector(broker.url, ["geopush/push/#"]) as col:
        async with running_service(broker.url, state, batch_size=20) as svc:
            for i in range(0, len(msgs), 30):  # many batches: acks fold into later commits
                await publish_all(broker.url, msgs[i : i + 30])
            await col.wait_for(lambda c: len(c.messages) == len(msgs))
            assert svc.totals["batches"] >= 10
        assert len(col.messages) == len(msgs)
        assert all(_sent(state).values()) and len(_sent(state)) == len(msgs)
        # a clean restart re-publishes nothing: every row was marked sent
        async with running_service(broker.url, state) as svc2:
            await publish_all(broker.url, [("geopush/events/fay", gps("fay", 1000.0))])
            await col.wait_for(lambda c: len(c.messages) == len(msgs) + 1)
            await asyncio.sleep(0.5)
            assert svc2.totals["pushes"] == 1
    assert len(col.messages) == len(msgs) + 1
    pushes = [json.loads(p)["push_id"] for _, p in col.messages]
    assert len(set(pushes)) == len(pushes)  # each push once, across the restart


def test_a_rollback_forgets_changes_to_cached_records(tmp_path):
    """Records stay in the store's cache while a batch touches them: a rollback (a batch the
    core failed on) must drop the changed ones, so the next look-up reads the committed state."""
    store = SQLiteStore(tmp_path / "s.db", cache_users=3)
    try:
        for u in ("a", "b", "c"):
            store.user(u).visit_seq = 1
        store.commit([])
        store.user("a").visit_seq = 99  # cached, changed, never committed
        store.user("d").visit_seq = 99  # not cached before
        store.rollback()
        assert store.user("a").visit_seq == 1 and store.user("d").visit_seq == 0
        store.user("b").visit_seq = 2
        store.commit([])  # a, b, d touched: the cache keeps the 3 newest
        assert store.user("b").visit_seq == 2 and store.user("c").visit_seq == 1
        assert len(store._cache) <= 3  # noqa: SLF001
    finally:
        store.close()
    again = SQLiteStore(tmp_path / "s.db")
    try:
        assert [again.user(u).visit_seq for u in "abcd"] == [1, 2, 1, 0]
    finally:
        again.close()


def test_coupon_counters_are_written_relative_to_the_file(tmp_path):
    """The HTTP API's process moves a campaign's counter in the file (an inventory edit) while
    the engine holds it cached and takes coupons: the engine's commit keeps both changes."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    try:
        assert store.take_coupon("c1", 5)  # 4 left, the row made by this commit
        store.commit([])
        assert store.take_coupon("c1", 5)  # 3 left (cached)
        other = sqlite3.connect(str(path), isolation_level=None)
        other.execute("UPDATE inventory SET left = left + 10 WHERE campaign_id = 'c1'")  # the API
        store.commit([])  # the batch's coupon: 4 + 10 - 1 in the file, not the cached 3
        assert other.execute("SELECT left FROM inventory").fetchone() == (13,)
        assert store.take_coupon("c1", 5)
        store.forget_inventory("c1")  # the engine learns of the API's edit mid-batch
        store.commit([])
        assert other.execute("SELECT left FROM inventory").fetchone() == (12,)
        assert store.inventory_left("c1", 5) == 12  # read again from the file after the commit
        other.close()
    finally:
        store.close()
