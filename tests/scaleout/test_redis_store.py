"""RedisStore against a real redis-server: same behaviour as MemoryStore, CAS under concurrency,
no oversold coupon, durability across a Redis restart."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from engine.outputs import Coupon, Push
from engine.state import MemoryStore, Output, UserState
from engine.stores.redis_store import CommitConflict, RedisStore
from simulator.bench.redis_server import RedisServer

MakeStore = Callable[..., RedisStore]


def _push(user: str, pid: str, campaign: str = "c0") -> Push:
    return Push(
        push_id=pid,
        user=user,
        campaign_id=campaign,
        store_id="s1",
        merchant_id="m1",
        visit_id="v1",
        trigger="enter",
        ts=1.0,
        coupon=Coupon("10% off", 10.0, "EUR", 3600),
    )


def _plain(st: UserState) -> dict[str, Any]:
    """A user record without the store-specific version counter."""
    return {f: getattr(st, f) for f in st.__struct_fields__ if f != "version"}


TOTALS: dict[str, int | None] = {"c0": 3, "c1": 1, "c2": None, "c3": 10}


def _random_op(rng: random.Random, store: Any, pending: list[Output]) -> object:
    """Apply one random core-like operation; return what the store answered."""
    kind = rng.randrange(6)
    user = f"u{rng.randrange(6)}"
    if kind == 0:
        st = store.user(user)
        st.last_ts = max(st.last_ts, 0.0) + rng.random()
        st.visit_seq += 1
        pay = st.payments = st.payments or {}
        pay[f"m{rng.randrange(3)}"] = pay.get("m0", 0) + 1
        return st.visit_seq
    if kind == 1:
        st = store.user(user)
        st.tags = [*(st.tags or ()), f"t{rng.randrange(4)}"]
        st.push_times = st.push_times or {}
        st.push_times.setdefault("c0", []).append(float(rng.randrange(100)))
        return len(st.tags)
    if kind == 2:
        c = rng.choice(list(TOTALS))
        return store.inventory_left(c, TOTALS[c])
    if kind == 3:
        c = rng.choice(list(TOTALS))
        got = store.take_coupon(c, TOTALS[c])
        if got:
            pid = f"p{rng.randrange(40)}"
            if not store.seen_push(pid):
                store.user(user).day_pushes = {"2026-11-25": 1}
                pending.append(_push(user, pid, c))
        return got
    if kind == 4:
        return store.seen_push(f"p{rng.randrange(40)}")
    return store.user(user).visit_seq


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_match_memory_store(make_store: MakeStore, seed: int) -> None:
    rstore, mstore = make_store(), MemoryStore()
    rng_r, rng_m = random.Random(seed), random.Random(seed)
    pend_r: list[Output] = []
    pend_m: list[Output] = []
    for step in range(400):
        got_r = _random_op(rng_r, rstore, pend_r)
        got_m = _random_op(rng_m, mstore, pend_m)
        assert got_r == got_m, f"step {step}"
        if step % 7 == 6:  # a micro-batch boundary
            rstore.commit(pend_r)
            mstore.commit(pend_m)
            pend_r, pend_m = [], []
    rstore.commit(pend_r)
    mstore.commit(pend_m)
    # A second store (another worker) sees exactly what the memory store holds.
    other = make_store(worker="w9")
    assert {u: _plain(s) for u, s in other.all_users().items()} == {
        u: _plain(s) for u, s in mstore.all_users().items()
    }
    assert other.inventory() == mstore.inventory()
    assert other.push_ids() == mstore._push_ids


def test_a_moved_user_conflicts_and_nothing_is_applied(make_store: MakeStore) -> None:
    a, b = make_store(worker="a"), make_store(worker="b")
    a.users(["u1", "u2"])
    a.user("u1").visit_seq = 10
    a.user("u2").visit_seq = 20
    assert a.take_coupon("c0", 5)
    b.user("u1").visit_seq = 1  # b commits first
    b.commit([])
    with pytest.raises(CommitConflict) as exc:
        a.commit([_push("u2", "p-a")])
    assert exc.value.users == ["u1"]
    fresh = make_store(worker="c")
    assert fresh.user("u1").visit_seq == 1
    assert fresh.user("u2").visit_seq == 0  # all or nothing: u2 was not written either
    assert fresh.inventory() == {}
    assert fresh.push_ids() == set()
    assert fresh.unsent() == []
    assert a.unsent() == []


def _increment(store: RedisStore, users: Sequence[str]) -> Callable[[Sequence[str]], list[Output]]:
    def process(events: Sequence[str]) -> list[Output]:
        for u in events:
            store.user(u).visit_seq += 1
        return []

    return process


def test_concurrent_workers_never_lose_an_update(make_store: MakeStore) -> None:
    users = ["hot1", "hot2", "hot3"]
    stores = [make_store(worker=f"w{i}") for i in range(3)]
    rounds = 150

    def work(store: RedisStore, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            batch = rng.sample(users, 2)
            store.run_batch(_increment(store, batch), batch)

    threads = [threading.Thread(target=work, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = make_store(worker="check").all_users()
    assert sum(st.visit_seq for st in final.values()) == 3 * rounds * 2
    for u in users:  # version counts the commits that changed the user, no more, no less
        assert final[u].version == final[u].visit_seq


def test_inventory_never_oversold_under_concurrency(make_store: MakeStore) -> None:
    total = 40
    stores = [make_store(worker=f"w{i}") for i in range(4)]
    won: list[list[str]] = [[] for _ in stores]

    def work(i: int) -> None:
        store = stores[i]
        for n in range(60):
            user = f"w{i}-u{n % 7}"

            def process(events: Sequence[str], user: str = user, n: int = n) -> list[Output]:
                out: list[Output] = []
                if store.take_coupon("scarce", total):
                    store.user(user).day_pushes = {"d": n}
                    out.append(_push(user, f"{user}-{n}", "scarce"))
                return out

            outputs, _ = store.run_batch(process, [user])
            won[i].extend(o.push_id for o in outputs if isinstance(o, Push))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [p for w in won for p in w]
    assert len(winners) == total, "every coupon taken exactly once"
    assert len(set(winners)) == total
    check = make_store(worker="check")
    assert check.inventory() == {"scarce": 0}
    assert check.push_ids() == set(winners)
    assert sum(len(s.unsent()) for s in stores) == total


def test_a_push_decided_elsewhere_is_skipped_on_rerun(make_store: MakeStore) -> None:
    a, b = make_store(worker="a"), make_store(worker="b")
    b.take_coupon("c0", 5)
    b.commit([_push("u1", "same")])
    calls: list[bool] = []

    def process(events: Sequence[str]) -> list[Output]:
        seen = a.seen_push("same")
        calls.append(seen)
        if seen or not a.take_coupon("c0", 5):
            return []
        return [_push("u1", "same")]

    outputs, rows = a.run_batch(process, ["u1"])
    assert calls == [False, True]  # first attempt conflicted on the push id, re-run skipped it
    assert outputs == [] and rows == []
    assert a.inventory() == {"c0": 4}, "the conflicting attempt took no coupon"


def test_outbox_inputs_and_round_trips(make_store: MakeStore) -> None:
    s = make_store(worker="w1")
    s.users(["u1"])
    s.user("u1").visit_seq = 1
    rows = s.commit([_push("u1", "p1")], inputs=[b"\x01" * 16])
    assert [r.out_id for r in rows] == ["p1"]
    assert s.stats.round_trips == 2  # one MGET, one commit script
    assert s.seen_inputs([b"\x01" * 16, b"\x02" * 16]) == {b"\x01" * 16}
    again = make_store(worker="w1")  # the same worker restarted: its unsent rows come back
    assert [r.out_id for r in again.unsent()] == ["p1"]
    again.mark_sent(["p1"])
    assert again.unsent() == [] and s.unsent() == []
    assert make_store(worker="w2").unsent() == [], "outboxes are per worker"


def test_a_retried_commit_is_applied_once(make_store: MakeStore) -> None:
    s = make_store()
    s.user("u1").visit_seq = 1
    keys, args = s._script_args(["u1"], [s.render(_push("u1", "p1"))], [], {})
    assert s._script(keys=keys, args=args)[0] == 1
    # The same call again, as redis-py's retry sends it when the reply was lost: a no-op.
    assert s._script(keys=keys, args=args) == [2]
    assert len(s.unsent()) == 1


def test_acknowledged_commits_survive_a_redis_kill(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    s = make_store(worker="w1", reconnect_s=15.0)
    for i in range(20):
        s.users([f"u{i}"])
        s.user(f"u{i}").visit_seq = i + 1
        s.take_coupon("c0", 100)
        s.commit([_push(f"u{i}", f"p{i}")])
    redis_server.kill()  # kill -9: only the AOF (fsync always) survives
    redis_server.start()
    # The same client reconnects by itself and sees every acknowledged commit.
    assert s.user("u19").visit_seq == 20
    s.rollback()
    assert {u: st.visit_seq for u, st in s.all_users().items()} == {
        f"u{i}": i + 1 for i in range(20)
    }
    assert s.inventory() == {"c0": 80}
    assert len(s.unsent()) == 20


def test_a_store_waits_for_redis_to_come_back(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    s = make_store(worker="w1", reconnect_s=15.0)
    s.user("u1").visit_seq = 1
    s.commit([])
    redis_server.stop()
    timer = threading.Timer(0.5, redis_server.start)
    timer.start()
    try:
        outputs, _ = s.run_batch(_increment(s, ["u1"]), ["u1"])  # blocks until Redis is back
    finally:
        timer.join()
    assert outputs == []
    assert make_store(worker="x").user("u1").visit_seq == 2


def test_meta_once_is_shared_by_the_group(make_store):
    """The coupon secret: the first worker's value wins, every worker reads the same."""
    a = make_store(worker="w1")
    b = make_store(worker="w2")
    assert a.meta_once("coupon_secret", "first-secret") == "first-secret"
    assert b.meta_once("coupon_secret", "second-secret") == "first-secret"


def test_redemptions_and_orders_commit_on_redis(make_store: MakeStore) -> None:
    """A redemption answer and an attributed order name an existing push: committing them must
    not look like deciding that push again (which the commit script refuses)."""
    from engine.campaigns import parse_campaigns
    from engine.core import Core
    from engine.events import Gps, Payment, Redeem
    from engine.outputs import Order, RedeemResult
    from fences.catalog import Catalog
    from fences.index import FenceIndex
    from fences.store import Store

    store = make_store(worker="w1")
    store.max_attempts = 3
    index = FenceIndex(Catalog([Store(store_id="A", merchant_id="m-A", center=(24.94, 60.17), radius_m=50.0)]))
    coupon = {"title": "t", "value": 1, "currency": "EUR", "expires_in_s": 3600}
    core = Core(index, parse_campaigns([{"id": "a", "merchant_id": "m-A", "trigger": "enter", "coupon": coupon}]), store)
    t0 = 1_780_000_000.0
    outs, _ = store.run_batch(core.process, [Gps(user="u1", ts=t0, lon=24.94, lat=60.17, acc=5.0)])
    (push,) = [o for o in outs if isinstance(o, Push)]
    outs, _ = store.run_batch(core.process, [
        Redeem(user="u1", ts=t0 + 60, merchant_id="m-A", code=push.code),
        Payment(user="u1", ts=t0 + 61, merchant_id="m-A", amount=2.0),
    ])  # fmt: skip
    assert [o.status for o in outs if isinstance(o, RedeemResult)] == ["ok"]
    assert [o.via for o in outs if isinstance(o, Order)] == ["redeemed"]
    assert store.peek("u1").offers[push.code].order_ts == t0 + 61  # type: ignore[index]


def test_a_commit_waits_for_an_older_event_another_worker_holds(make_store: MakeStore) -> None:
    """Holds: worker a registered that it holds u's event of time 10 (not applied yet); worker b's
    commit of u's event of time 20 applies nothing (``HeldBack``), one of time 5 applies, and
    once a's holds are gone b's newer event applies too. Users nobody holds are never held."""
    from engine.stores.redis_store import HeldBack

    a, b = make_store(worker="a"), make_store(worker="b")
    a.set_holds({"u": 10.0})
    assert b.others_holds(["u", "v"]) == {"u": 10.0}
    b.user("u").last_ts = 20.0
    b.user("v").last_ts = 20.0
    with pytest.raises(HeldBack) as held:
        b.commit([], order={"u": 20.0, "v": 20.0})
    assert held.value.users == ["u"]
    assert b.snapshot(["v"])["v"].version == 0, "nothing applied, not even v"
    assert b.others_holding
    b.user("v").last_ts = 20.0  # another user: not held
    b.commit([], order={"v": 20.0})
    b.user("u").last_ts = 5.0  # u's event older than what a holds: may go first
    b.commit([], order={"u": 5.0})
    assert b.snapshot(["u"])["u"].last_ts == 5.0
    a.user("x").visit_seq = 1
    a.next_holds = {}  # a applied what it held: its commit clears its holds
    a.commit([])
    assert a.holds == {} and b.others_holds(["u"]) == {}
    b.user("u").last_ts = 20.0
    b.commit([], order={"u": 20.0})
    assert b.snapshot(["u"])["u"].last_ts == 20.0
    assert not b.others_holding
