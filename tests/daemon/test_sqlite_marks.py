"""SQLite state off the hot path: acknowledged outputs marked sent inside the next batch commit,
WAL checkpoints in a background thread with the WAL still bounded, and what survives restarts."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time

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


def test_checkpoints_run_in_the_background_and_the_wal_stays_bounded(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    blob = os.urandom(2000)
    try:
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # noqa: SLF001
        for b in range(40):  # ~40 MB through the WAL, 1 MB per commit, with time between
            store.commit([], extra=[OutRow(f"b{b}-{i}", "t/x", blob) for i in range(500)])
            time.sleep(0.1)
        ck = store._checkpointer  # noqa: SLF001
        assert ck is not None and ck.checkpoints > 0
        # the log restarts after each checkpoint that caught up: it never held many commits
        assert os.path.getsize(f"{path}-wal") < 5 * 2**20
    finally:
        store.close()
    assert store._checkpointer is None  # noqa: SLF001  (stopped with the store)


def test_under_steady_commits_the_log_still_restarts(tmp_path):
    """A commit every ~2 ms, as under load: a plain checkpoint always ends after the next commit
    appended more, so the writer never finds the log fully copied and cannot restart it; the
    checkpointer chases the tail until it can. Without the chase the WAL reaches
    WAL_LIMIT_BYTES within ~300 such commits and the writer checkpoints on its own."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    blob = os.urandom(2000)
    sizes = []
    try:
        for b in range(400):  # ~50 MB through the WAL, ~120 KB per commit
            store.commit([], extra=[OutRow(f"b{b}-{i}", "t/x", blob) for i in range(60)])
            sizes.append(os.path.getsize(f"{path}-wal"))
            time.sleep(0.002)  # the service's work between commits
        assert store.inline_checkpoints == 0
        assert max(sizes) < sqlite_store.WAL_LIMIT_BYTES // 2
    finally:
        store.close()


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
