"""Hypothesis property tests of the core's invariants over random mixed-signal event streams."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from _corekit import T0, World, beacon, campaign, campaigns, circle, gps, nfc, pay, profile, wifi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Event, Payment, ProfileEvent
from engine.outputs import Push, VisitEvent
from engine.profiles import Profile, ProfileBook
from engine.state import Output

STORES = [
    circle("A", 0, 0, 40, wifi=["aa:00:00:00:00:01"]),
    circle("B", 30, 0, 40, beacon_minor=2),  # overlaps A (a mall)
    circle("C", 800, 0, 60, nfc=["tag-c"]),
    circle("MALL", 0, 0, 200, tags=["umbrella"], merchant_id="m-mall"),
]
POINTS = [(0, 0), (15, 0), (-30, 0), (800, 0), (860, 0), (400, 0), (150, 0), (30_000, 0)]
CAMPS = campaigns(
    campaign("a-enter", "m-A", priority=2, inventory=3, caps={"per_user": 1, "period_s": 3600}),
    campaign("a-enter-2", "m-A", priority=1, caps={"cooldown_s": 1800}),
    campaign("a-dwell", "m-A", "dwell", dwell_s=120, audience={"segment": "followers"}),
    campaign("b-enter", "m-B", audience={"tags_any": ["x"]}),
    campaign("b-exit", "m-B", "exit", audience={"segment": "new"}, inventory=2),
    campaign("c-dwell", "m-C", "dwell", dwell_s=600, caps={"per_user": 2, "period_s": 86400}),
    campaign("c-exit", "m-C", "exit", audience={"segment": "returning", "exclude_tags": ["y"]}),
    campaign("mall", "m-mall", "enter"),
    max_pushes_per_user_per_day=4,
)
USERS = ["u0", "u1", "u2", "opt"]
BOOK = ProfileBook({"opt": Profile(frozenset({"x"}), True), "u1": Profile(frozenset({"x"}), False)})
LOCATION = ("gps", "wifi", "beacon", "nfc")


@st.composite
def streams(draw: Any, far: bool = True) -> list[Event]:
    n = draw(st.integers(1, 60))
    clock = T0
    out: list[Event] = []
    for _ in range(n):
        clock += draw(st.sampled_from([0, 5, 30, 60, 200, 700, 1000]))
        ts = clock - draw(st.sampled_from([0, 0, 0, 0, 50, 600])) if out else clock
        user = draw(st.sampled_from(USERS))
        kind = draw(st.sampled_from(["gps", "gps", "gps", "wifi", "beacon", "nfc", "pay", "profile"]))
        if kind == "gps":
            x, y = draw(st.sampled_from(POINTS if far else POINTS[:-1]))
            out.append(gps(user, ts, x, y, acc=draw(st.sampled_from([3.0, 15.0, 60.0, 150.0]))))
        elif kind == "wifi":
            out.append(wifi(user, ts, ("aa:00:00:00:00:01", draw(st.sampled_from([-50.0, -74.0, -90.0])))))
        elif kind == "beacon":
            out.append(beacon(user, ts, 2, draw(st.sampled_from([-55.0, -79.0, -85.0]))))
        elif kind == "nfc":
            out.append(nfc(user, ts, "tag-c"))
        elif kind == "pay":
            out.append(pay(user, ts, draw(st.sampled_from(["m-A", "m-C"]))))
        elif user != "opt":
            out.append(profile(user, ts, draw(st.sampled_from([[], ["x"], ["y"], ["x", "y"]]))))
    return out


def run(events: list[Event], batch: int, flush: bool = True) -> tuple[World, list[Output]]:
    w = World(STORES, CAMPS, profiles=BOOK)
    w.run(events, batch=batch, flush=max(e.ts for e in events) + 5000 if flush else None)
    return w, w.outs


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(streams(), st.sampled_from([1, 3, 1024]))
def test_invariants(events: list[Event], batch: int) -> None:
    w, outs = run(events, batch)
    open_visits: dict[str, tuple[str, str]] = {}  # visit_id -> (user, store)
    state: dict[tuple[str, str], str] = {}  # (user, store) -> last enter/exit
    enter_ts: dict[str, float] = {}
    pids: set[str] = set()
    vids: set[str] = set()
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    per_campaign: dict[str, int] = defaultdict(int)
    per_day: dict[tuple[str, str], int] = defaultdict(int)
    per_trigger: set[tuple[str, str]] = set()
    for o in outs:
        if isinstance(o, VisitEvent):
            assert o.out_id not in vids, "duplicate visit event"
            vids.add(o.out_id)
            key = (o.user, o.store_id)
            if o.event == "enter":
                assert state.get(key, "exit") == "exit", "two enters in a row"
                state[key] = "enter"
                open_visits[o.visit_id] = key
                enter_ts[o.visit_id] = o.ts
            elif o.event == "exit":
                assert state.get(key) == "enter", "exit without enter"
                state[key] = "exit"
                assert o.visit_id in open_visits
                assert o.ts >= enter_ts[o.visit_id]
                del open_visits[o.visit_id]
            else:
                assert o.visit_id in open_visits, "dwell outside an open visit"
        elif isinstance(o, Push):  # orders (attributed payments) are checked in test_loop.py
            # pushes follow their visit event immediately: enter/dwell in an open visit, exit just closed
            assert o.visit_id in open_visits or o.trigger == "exit", "push outside an open visit"
            assert o.push_id not in pids, "duplicate push_id"
            pids.add(o.push_id)
            trig = (o.visit_id, o.trigger + str(o.ts))
            assert trig not in per_trigger, "two pushes for one (visit, trigger)"
            per_trigger.add(trig)
            assert o.user != "opt", "opted-out user pushed"
            per[(o.user, o.campaign_id)].append(o.ts)
            per_campaign[o.campaign_id] += 1
            per_day[(o.user, str(int(o.ts // 86400)))] += 1
    for c in CAMPS.campaigns:
        if c.inventory is not None:
            assert per_campaign[c.id] <= c.inventory
        for (_, cid), times in per.items():
            if cid != c.id:
                continue
            times.sort()
            if c.per_user is not None and c.period_s is not None:
                for i, t in enumerate(times):
                    assert sum(1 for u in times[i:] if u < t + c.period_s) <= c.per_user
            for a, b in zip(times, times[1:], strict=False):
                assert b - a >= c.cooldown_s
    assert all(n <= 4 for n in per_day.values())
    # after the final flush every visit is closed
    assert not open_visits
    assert all(not s.visits for s in w.store.all_users().values())


@SETTINGS
@given(streams(far=False))
def test_out_of_order_events_change_nothing(events: list[Event]) -> None:
    """Dropping every location event older than its user's previous event gives the same outputs.

    (No teleporting fixes here: a fix rejected for speed does not advance the user's event time,
    by design, so it would make this oracle's notion of "late" differ from the core's.)"""
    latest: dict[str, float] = {}
    kept: list[Event] = []
    for ev in events:
        late = ev.ts < latest.get(ev.user, float("-inf"))
        if not (late and not isinstance(ev, Payment | ProfileEvent)):
            kept.append(ev)
        latest[ev.user] = max(latest.get(ev.user, ev.ts), ev.ts)
    w1, a = run(events, 1, flush=False)
    w2, b = run(kept, 1, flush=False)
    assert a == b
    assert w1.core.stats.rejected_by_reason.get("out_of_order", 0) >= len(events) - len(kept)
