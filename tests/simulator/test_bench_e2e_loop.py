"""`geopush bench e2e --loop`: the loop workload redeems real codes and pays at their merchants,
with the same messages, visits and pushes as the plain one."""

from __future__ import annotations

import collections
import json
from typing import Any

from engine.campaigns import load_campaigns
from engine.core import Core, CoreConfig
from engine.events import decode
from engine.outputs import Order, Push, RedeemResult, VisitEvent
from engine.state import MemoryStore
from fences.catalog import load_catalog
from fences.index import FenceIndex
from simulator.bench.e2e import CITY_SIDE, LOOP_SECRET, _messages, batch_path, loop_ratios, redeemed
from simulator.bench.workload import City


def _run(tmp_path, msgs):  # type: ignore[no-untyped-def]
    fences, camps = City(CITY_SIDE).write(tmp_path)
    core = Core(FenceIndex(load_catalog(fences)), load_campaigns(camps), MemoryStore(),
                CoreConfig(coupon_secret=LOOP_SECRET))  # fmt: skip
    outs = []
    for _, payload in msgs:
        outs += core.process(decode(payload))
    return outs


def test_the_loop_workload_redeems_and_pays_without_changing_visits_or_pushes(tmp_path):
    for kind in ("single", "batch"):
        plain, keys_p = _messages(kind, "t", 20, 600, "geopush/events")
        loop, keys_l = _messages(kind, "t", 20, 600, "geopush/events", loop=True)
        assert len(plain) == len(loop) and keys_p == keys_l
        events = collections.Counter(json.loads(p).get("type") for _, p in loop)
        outs_p, outs_l = _run(tmp_path, plain), _run(tmp_path, loop)
        pushes = [o.push_id for o in outs_p if type(o) is Push]
        assert pushes and [o.push_id for o in outs_l if type(o) is Push] == pushes
        enters = lambda outs: [o.out_id for o in outs if type(o) is VisitEvent]  # noqa: E731
        assert enters(outs_l) == enters(outs_p)
        answers = [o for o in outs_l if type(o) is RedeemResult]
        orders = [o for o in outs_l if type(o) is Order]
        assert answers and all(a.status == "ok" for a in answers), collections.Counter(a.status for a in answers)
        # (a redemption in a user's last published message may lack its payment)
        assert len(answers) - 20 <= len(orders) <= len(answers)
        assert all(o.via == "redeemed" for o in orders)
        assert {o.push_ref for o in orders} <= {a.push_ref for a in answers}
        assert not [o for o in outs_p if type(o) in (RedeemResult, Order)]
        if kind == "single":
            assert (events["redeem"], events["payment"]) == (len(answers), len(orders))


def _phase(seconds: float, events: int, fixed: float, per_event: float) -> dict[str, float]:
    return {"seconds": seconds, "events": events, "engine_cpu_s": fixed * seconds + per_event * events,
            "cpu_us_per_event": {"engine": (fixed * seconds + per_event * events) / events * 1e6}}  # type: ignore[dict-item]  # fmt: skip


def test_the_loop_ratios_are_medians_over_rounds_at_the_same_load() -> None:
    """Per load, the loop's engine CPU per event over plain's in each round, and the median."""
    def rnd(plain_us: list[float], loop_us: list[float]) -> dict[str, Any]:
        return {w: {"single": {"max_msgs_per_s": 30_000, "loads": [_phase(2.0, 10_000, 0.0, us * 1e-6) for us in xs]}}
                for w, xs in (("plain", plain_us), ("loop", loop_us))}  # fmt: skip

    rounds = [rnd([40, 30, 20], [44, 33, 22]), rnd([40, 30, 20], [48, 36, 24]), rnd([40, 30, 20], [40, 30, 20])]
    r = loop_ratios(rounds, ["single"], ["fast"])["single"]
    assert [x["engine_cpu_per_event_ratio"] for x in r["loads"].values()] == [1.1, 1.1, 1.1]
    assert r["loads"]["90%"]["per_round"] == [1.1, 1.2, 1.0] and r["max_ratio"] == 1.0


def test_the_in_process_batch_path_measures_both_workloads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    msgs = {w: _messages("single", "t", 20, 400, "geopush/events", loop=w == "loop")[0] for w in ("plain", "loop")}
    res = batch_path(msgs, 16, 2, tmp_path)
    assert len(res["rounds"]) == 2 and res["ratio_median"] > 0
    for rnd in res["rounds"]:
        # the loop's answers and orders: more outputs per event, from the same events
        assert rnd["loop"]["outputs_per_event"] > rnd["plain"]["outputs_per_event"] > 0
        assert rnd["ratio"] == round(rnd["loop"]["total"] / rnd["plain"]["total"], 3)


def test_a_loop_share_redeems_that_fraction_of_the_pushes_the_same_ones_every_time(tmp_path):
    """``--loop-share``: a fraction of the pushes redeemed and paid for (by a hash of the push
    id), the rest of the workload the plain one; share 0 is the plain workload."""
    plain, keys_p = _messages("batch", "t", 40, 800, "geopush/events")
    some, keys_s = _messages("batch", "t", 40, 800, "geopush/events", loop=True, share=0.2)
    assert keys_s == keys_p and len(some) == len(plain)
    assert _messages("batch", "t", 40, 800, "geopush/events", loop=True, share=0.2)[0] == some
    assert _messages("batch", "t", 40, 800, "geopush/events", loop=True, share=0.0)[0] == plain
    outs_p, outs_s = _run(tmp_path, plain), _run(tmp_path, some)
    pushes = [o for o in outs_p if type(o) is Push]
    assert [o.push_id for o in outs_s if type(o) is Push] == [o.push_id for o in pushes]
    answers = [o for o in outs_s if type(o) is RedeemResult]
    assert answers and all(a.status == "ok" for a in answers)
    chosen = {p.push_id for p in pushes if redeemed(p.push_id, 0.2)}
    assert {a.push_ref for a in answers} <= chosen  # only the chosen pushes' codes
    # (a push near the end of a user's walk has no fixes left after it to replace)
    assert len(chosen) - 40 <= len(answers) <= len(chosen)
    assert 0.1 < len(chosen) / len(pushes) < 0.3
