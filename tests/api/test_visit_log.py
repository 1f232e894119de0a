"""The visit log over a real state file: what the daemon's store commits to the outbox is
copied (visit events only, with their outbox seq as id), open visits follow enters and exits,
and the log keeps its newest events."""

from __future__ import annotations

from pathlib import Path

from engine.api.visits import VisitLog
from engine.daemon.pipeline import Renderer, Topics
from engine.outputs import Coupon, Push, VisitEvent
from engine.stores.sqlite_store import TRANSIENT_PREFIX, OutRow, SQLiteStore


def ev(user: str, n: int, event: str, store: str = "s1", merchant: str = "m1") -> VisitEvent:
    return VisitEvent(
        visit_id=f"{user}:{store}:{n}", user=user, store_id=store, merchant_id=merchant,
        event=event, ts=1000.0 + n, signal="gps",  # type: ignore[arg-type]
    )  # fmt: skip


def push(user: str) -> Push:
    return Push(
        push_id=f"p-{user}", user=user, campaign_id="c", store_id="s1", merchant_id="m1",
        visit_id=f"{user}:s1:1", trigger="enter", ts=1001.0, coupon=Coupon("t", 1.0, "EUR", 60),
    )  # fmt: skip


def test_the_log_copies_visit_events_only_tracks_open_visits_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, render=Renderer(Topics(prefix="shop")))
    log = VisitLog(path, "shop/visits/", keep=4, prune_every=1)
    try:
        # a dead letter whose payload looks like a visit is not one (its topic says so)
        fake = OutRow("dl-1", "shop/deadletter", b'{"kind":"visit","merchant_id":"m1"}')
        store.commit([ev("u1", 1, "enter"), push("u1"), ev("u2", 2, "enter", "s2")], extra=[fake])
        store.commit([ev("u3", 3, "enter", "s9", "m2"), ev("u1", 1, "exit")])
        assert log.catch_up() == store.out_seq
        rows = log.page("m1")
        assert [r.seq for r in rows] == [1, 3, 6]  # the outbox seqs: push, dead letter, m2 skipped
        assert [r.to_dict()["out_id"] for r in rows] == ["u1:s1:1:enter", "u2:s2:2:enter", "u1:s1:1:exit"]
        assert rows[0].payload == store.outbox()[0][2]  # the very bytes published
        assert [r.to_dict()["data"]["user"] for r in log.open_visits("m1")] == ["u2"]
        assert [r.to_dict()["data"]["user"] for r in log.open_visits("m2")] == ["u3"]
        assert log.page("m1", after=3) == rows[2:]
        assert log.catch_up() == 0  # nothing new

        store.commit([ev(f"w{i}", 10 + i, "enter") for i in range(5)])
        log.catch_up()
        kept = log.page("m1") + log.page("m2")
        assert len(kept) == 4  # the newest four events of all merchants
        assert [r.to_dict()["data"]["user"] for r in kept] == ["w1", "w2", "w3", "w4"]
    finally:
        log.close()
        store.close()


def test_ids_never_repeat_across_a_restart_even_after_dead_letters_went(tmp_path: Path) -> None:
    """Sent dead letters are deleted: the newest outbox rows may be gone at a restart. The next
    rows must not take their numbers again, or the log (and a resuming client) skips them."""
    path = tmp_path / "state.db"
    store = SQLiteStore(path, render=Renderer(Topics()))
    log = VisitLog(path, "geopush/visits/")
    try:
        dead = OutRow(f"{TRANSIENT_PREFIX}x", "geopush/deadletter", b"{}")
        store.commit([ev("u1", 1, "enter")], extra=[dead])
        store.mark_sent(["u1:s1:1:enter", dead.out_id])  # the dead letter is deleted
        log.catch_up()
        store.close()
        store = SQLiteStore(path, render=Renderer(Topics()))
        store.commit([ev("u2", 2, "enter")])
        assert store.out_seq == 3
        log.catch_up()
        assert [(r.seq, r.to_dict()["data"]["user"]) for r in log.page("m1")] == [(1, "u1"), (3, "u2")]
    finally:
        log.close()
        store.close()
