"""A conflicting commit re-runs the batch with the real core and loses no visit timer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.campaigns import load_campaigns
from engine.core import Core, CoreConfig
from engine.events import Gps, Payment
from engine.outputs import VisitEvent
from engine.stores.redis_store import RedisStore, commit_batch
from fences.catalog import load_catalog
from fences.index import FenceIndex
from simulator.bench.workload import T0, City

MakeStore = Callable[..., RedisStore]
# One user's fix moves the sweep here (the tests are about timers across workers, not about
# the watermark quorum: docs/architecture.md, "Clocks").
ONE = CoreConfig(watermark_quorum=1)


def _gps(user: str, ts: float, at: tuple[float, float]) -> Gps:
    return Gps(user=user, ts=ts, lon=at[0], lat=at[1], acc=8.0)


def test_a_rerun_after_a_conflict_keeps_the_timers_its_failed_attempt_consumed(
    make_store: MakeStore, tmp_path: Path
) -> None:
    city = City(3)
    fences, campaigns = city.write(tmp_path)
    index, camps = FenceIndex(load_catalog(fences)), load_campaigns(campaigns)
    a, b = make_store(worker="a"), make_store(worker="b")
    core_a, core_b = Core(index, camps, a, ONE), Core(index, camps, b, ONE)
    # Worker a: x enters store 0 (its exit timer is now in a's sweep queue); y is outside.
    first = [_gps("x", T0, city.center(0)), _gps("y", T0 + 10, city.outside(4))]
    outs, _ = commit_batch(core_a, a, first, core_a.process(first))
    assert [o.event for o in outs if isinstance(o, VisitEvent)] == ["enter"]
    # Much later, only y moves: a's sweep times x out while processing y's fix ...
    late = T0 + core_a.config.presence_timeout_s + core_a.config.sweep_lateness_s + 60
    batch = [_gps("y", late, city.outside(4))]
    attempt = core_a.process(batch)
    assert [(o.user, o.event) for o in attempt if isinstance(o, VisitEvent)] == [("x", "exit")]
    # ... but worker b changed y meanwhile (a payment), so a's commit must conflict.
    pay = [Payment(user="y", ts=T0 + 20, merchant_id="m1", amount=5.0)]
    commit_batch(core_b, b, pay, core_b.process(pay))
    committed, _ = commit_batch(core_a, a, batch, attempt)
    assert a.stats.conflicts == 1
    # The re-run came from fresh state, and x's timer (consumed by the failed attempt's sweep)
    # was re-armed: the exit is decided again and committed once.
    assert [(o.user, o.event) for o in committed if isinstance(o, VisitEvent)] == [("x", "exit")]
    check = make_store(worker="check").snapshot(["x", "y"])
    assert check["x"].visits == {}, "x's exit was committed once"
    assert check["y"].payments == {"m1": 1}, "b's change to y survived"
    assert check["y"].last_ts == late


def test_commit_batch_reruns_until_it_applies(make_store: MakeStore, tmp_path: Path) -> None:
    city = City(3)
    fences, campaigns = city.write(tmp_path)
    index, camps = FenceIndex(load_catalog(fences)), load_campaigns(campaigns)
    a, b = make_store(worker="a"), make_store(worker="b")
    core_a, core_b = Core(index, camps, a), Core(index, camps, b)
    batch = [_gps("u", T0, city.center(0))]
    outs = core_a.process(batch)  # a loaded u (empty) and decided
    other = [_gps("u", T0 - 50, city.outside(0))]
    commit_batch(core_b, b, other, core_b.process(other))  # b commits an older fix of u first
    committed, rows = commit_batch(core_a, a, batch, outs)
    assert a.stats.conflicts == 1
    assert [o.event for o in committed if isinstance(o, VisitEvent)] == ["enter"]
    assert len(rows) == len(committed)
    assert make_store(worker="c").snapshot(["u"])["u"].last_ts == T0


def test_another_worker_takes_over_the_timers_of_a_dead_one(
    make_store: MakeStore, tmp_path: Path
) -> None:
    from engine.daemon.service import WATERMARK_KEY, core_watermark, restore_core

    city = City(3)
    fences, campaigns = city.write(tmp_path)
    index, camps = FenceIndex(load_catalog(fences)), load_campaigns(campaigns)
    a = make_store(worker="a")
    core_a = Core(index, camps, a, ONE)
    first = [_gps("x", T0, city.center(0))]  # x enters store 0, then goes silent
    commit_batch(
        core_a, a, first, core_a.process(first),
        meta=lambda: {WATERMARK_KEY: repr(core_watermark(core_a))},
    )  # fmt: skip
    # Worker a dies with x's timer. Worker b starts: it re-arms every open visit in Redis.
    b = make_store(worker="b")
    core_b = Core(index, camps, b, ONE)
    assert restore_core(core_b, b) == 1
    late = T0 + core_b.config.presence_timeout_s + core_b.config.sweep_lateness_s + 60
    batch = [_gps("y", late, city.outside(4))]
    outs, _ = commit_batch(core_b, b, batch, core_b.process(batch))
    assert [(o.user, o.event) for o in outs if isinstance(o, VisitEvent)] == [("x", "exit")]
    assert make_store(worker="c").snapshot(["x"])["x"].visits == {}
