"""One scenario per offer rule (issue 3, items 3-4)."""

from __future__ import annotations

from typing import Any

from _corekit import T0, World, campaign, campaigns, circle, gps, pay, profile

from engine.decisions import decide, in_window, push_id_for
from engine.profiles import Profile, ProfileBook
from engine.state import MemoryStore, UserState, Visit

A = circle("A", 0, 0, 50)
B = circle("B", 2000, 0, 50, merchant_id="m-A")  # a second store of the same merchant


def visit_events(user: str, n: int, start: float = T0, gap: float = 3600.0, x: float = 0.0) -> list[Any]:
    """n separate visits to the store at x (in, then out 400 m away)."""
    evs = []
    for i in range(n):
        t = start + i * gap
        evs += [gps(user, t, x, 0), gps(user, t + 60, x + 400, 0)]
    return evs


def pushed(w: World) -> list[tuple[str, str, str]]:
    return [(p.user, p.campaign_id, p.trigger) for p in w.pushes()]


def test_highest_priority_then_value_then_id_and_one_push_per_trigger() -> None:
    cs = campaigns(
        campaign("low", "m-A", priority=1, coupon={"title": "x", "value": 50, "currency": "EUR", "expires_in_s": 60}),
        campaign("hi-cheap", "m-A", priority=5),
        campaign("hi-rich", "m-A", priority=5, coupon={"title": "y", "value": 9, "currency": "EUR", "expires_in_s": 60}),
        campaign("bye", "m-A", "exit"),
    )
    w = World([A], cs)
    w.run(visit_events("u", 1))
    assert pushed(w) == [("u", "hi-rich", "enter"), ("u", "bye", "exit")]
    p = w.pushes()[0]
    assert p.push_id == push_id_for("u", "hi-rich", p.visit_id, "enter")
    assert p.coupon.value == 9.0 and p.store_id == "A" and p.merchant_id == "m-A"


def test_stores_subset() -> None:
    w = World([A, B], campaigns(campaign("onlyB", "m-A", stores=["B"])))
    w.run(visit_events("u", 1) + visit_events("u", 1, start=T0 + 10_000, x=2000))
    assert [(p.store_id, p.campaign_id) for p in w.pushes()] == [("B", "onlyB")]


def test_segments_new_returning_followers() -> None:
    cs = campaigns(
        campaign("new", "m-A", audience={"segment": "new"}),
        campaign("ret", "m-A", "exit", audience={"segment": "returning"}),
        campaign("fol", "m-A", "dwell", dwell_s=30, audience={"segment": "followers"}),
    )
    w = World([A], cs)
    # visit 1: new, not a follower; pays during the visit -> follower, but visit 1 stays "new"
    w.run([gps("u", T0, 0, 0), gps("u", T0 + 10, 0, 0), pay("u", T0 + 20, "m-A"), gps("u", T0 + 40, 0, 0),
           gps("u", T0 + 100, 400, 0)])
    assert pushed(w) == [("u", "new", "enter"), ("u", "fol", "dwell")]
    # visit 2: returning (paid before it began), still a follower; not "new" any more
    w.run(visit_events("u", 1, start=T0 + 5000))
    assert pushed(w)[2:] == [("u", "fol", "dwell"), ("u", "ret", "exit")]


def test_tags_any_and_exclude_from_file_then_profile_event_overrides() -> None:
    cs = campaigns(campaign("students", "m-A", audience={"tags_any": ["student"], "exclude_tags": ["staff"]}))
    book = ProfileBook({"s": Profile(frozenset({"student"}), False),
                        "st": Profile(frozenset({"student", "staff"}), False)})
    w = World([A], cs, profiles=book)
    w.run(visit_events("s", 1) + visit_events("st", 1) + visit_events("nobody", 1))
    assert pushed(w) == [("s", "students", "enter")]
    w.run([profile("st", T0 + 4000, ["student"])] + visit_events("st", 1, start=T0 + 5000))
    assert pushed(w)[1:] == [("st", "students", "enter")]


def test_opted_out_users_get_nothing() -> None:
    cs = campaigns(campaign("c", "m-A"))
    book = ProfileBook({"o": Profile(frozenset(), True)})
    w = World([A], cs, profiles=book)
    w.run(visit_events("o", 1) + [profile("p", T0, opt_out=True)] + visit_events("p", 1, start=T0 + 10))
    assert pushed(w) == []
    assert w.core.stats.decisions_skipped["opt_out"] == 2
    # opting back in with a newer profile event
    w.run([profile("p", T0 + 9000, opt_out=False)] + visit_events("p", 1, start=T0 + 10_000))
    assert pushed(w) == [("p", "c", "enter")]


def test_schedule_days_hours_in_store_tz_and_validity() -> None:
    sh = circle("SH", 0, 0, 50, tz="Asia/Shanghai")  # T0 is Fri 04:26 in Shanghai, Thu 20:26 UTC
    utc = circle("U", 5000, 0, 50)
    cs = campaigns(
        campaign("fri-early", "m-SH", schedule={"days": ["fri"], "start": "04:00", "end": "05:00"}),
        campaign("thu-evening", "m-U", schedule={"days": ["thu"], "start": "20:00", "end": "21:00"}),
        campaign("thu-morning", "m-U", priority=9, schedule={"days": ["thu"], "start": "08:00", "end": "09:00"}),
        campaign("expired", "m-U", priority=10, schedule={"valid_until": T0 - 1}),
        campaign("future", "m-U", priority=10, schedule={"valid_from": T0 + 1}),
    )
    w = World([sh, utc], cs)
    w.run(visit_events("a", 1) + visit_events("b", 1, x=5000))
    assert pushed(w) == [("a", "fri-early", "enter"), ("b", "thu-evening", "enter")]
    assert in_window(23 * 60, 22 * 60, 6 * 60) and in_window(60, 22 * 60, 6 * 60)
    assert not in_window(12 * 60, 22 * 60, 6 * 60)


def test_caps_per_user_per_period_and_cooldown() -> None:
    cs = campaigns(campaign("c", "m-A", caps={"per_user": 2, "period_s": 86400}))
    w = World([A], cs)
    w.run(visit_events("u", 4, gap=3600) + visit_events("u", 1, start=T0 + 86400 + 10))
    assert [p.ts for p in w.pushes()] == [T0, T0 + 3600, T0 + 86400 + 10]
    cs = campaigns(campaign("c", "m-A", caps={"cooldown_s": 7200}))
    w = World([A], cs)
    w.run(visit_events("u", 5, gap=3600))
    assert [p.ts for p in w.pushes()] == [T0, T0 + 7200, T0 + 14400]


def test_inventory_never_below_zero_then_next_campaign() -> None:
    cs = campaigns(campaign("scarce", "m-A", priority=5, inventory=2), campaign("fallback", "m-A"))
    w = World([A], cs)
    w.run([e for u in ("u1", "u2", "u3") for e in visit_events(u, 1)])
    assert pushed(w) == [("u1", "scarce", "enter"), ("u2", "scarce", "enter"), ("u3", "fallback", "enter")]
    assert w.store.inventory()["scarce"] == 0
    assert w.core.stats.decisions_skipped["inventory"] == 1


def test_global_daily_limit_and_quiet_hours() -> None:
    cs = campaigns(campaign("c", "m-A"), campaign("d", "m-B"), max_pushes_per_user_per_day=1)
    w = World([A, circle("B", 3000, 0, 50)], cs)
    w.run(visit_events("u", 1) + visit_events("u", 1, start=T0 + 1000, x=3000))
    assert pushed(w) == [("u", "c", "enter")]
    assert w.core.stats.decisions_skipped["daily_limit"] == 1
    cs = campaigns(campaign("c", "m-A"), quiet_hours={"start": "20:00", "end": "07:00"})
    w = World([A], cs)
    w.run(visit_events("u", 1) + visit_events("u", 1, start=T0 + 12 * 3600))  # 20:26 / 08:26
    assert [p.ts for p in w.pushes()] == [T0 + 12 * 3600]


def test_already_decided_push_is_not_decided_again_and_takes_no_inventory() -> None:
    cs = campaigns(campaign("c", "m-A", inventory=5))
    store = MemoryStore()
    st = UserState(user="u")
    v = Visit(visit_id="v1", store_id="A", merchant_id="m-A", enter_ts=T0, last_seen_ts=T0, signal="gps")
    kw: dict[str, Any] = dict(campaigns=cs, store=store, st=st, tags=(), opt_out=False, visit=v,
                              store_tz="UTC", trigger="enter", dwell_s=None, ts=T0)
    p = decide(**kw)
    assert p is not None and p.push_id == push_id_for("u", "c", "v1", "enter")
    store.commit([p])
    assert decide(**kw) is None
    assert store.inventory() == {"c": 4}
