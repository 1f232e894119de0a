"""One scenario per presence rule (issue 3, item 2), through the real Core and FenceIndex."""

from __future__ import annotations

from _corekit import T0, World, beacon, campaign, campaigns, circle, gps, nfc, pay, wifi

from engine.core import CoreConfig
from engine.presence import implied_speed_kmh, visit_id_for
from fences.catalog import Catalog
from fences.index import FenceIndex


def test_gps_enter_needs_fix_inside_and_good_accuracy() -> None:
    w = World([circle("A", 0, 0, 50, max_accuracy_m=30)])
    w.run([gps("u", T0, 60, 0, acc=5)])  # outside
    w.run([gps("u", T0 + 1, 0, 0, acc=40)])  # inside, accuracy too poor for this store
    assert w.trail() == []
    w.run([gps("u", T0 + 2, 0, 0, acc=30)])
    assert w.trail() == [("u", "A", "enter", T0 + 2)]
    assert w.visits()[0].signal == "gps"


def test_gps_hysteresis_then_exit_beyond_acc_plus_margin() -> None:
    w = World([circle("A", 0, 0, 50)])
    w.run([gps("u", T0, 0, 0, acc=10)])
    # 50 m radius: at 75 m the distance is 25 <= acc 10 + margin 20: nothing changes.
    w.run([gps("u", T0 + 10, 75, 0, acc=10), gps("u", T0 + 20, 55, 0, acc=10)])
    assert [v.event for v in w.visits()] == ["enter"]
    # at 85 m: 35 > 30 -> exit. The same spot with acc 20 (35 <= 40) would not exit.
    w2 = World([circle("A", 0, 0, 50)])
    w2.run([gps("u", T0, 0, 0), gps("u", T0 + 10, 85, 0, acc=20)])
    assert [v.event for v in w2.visits()] == ["enter"]
    w.run([gps("u", T0 + 30, 85, 0, acc=10)])
    assert w.trail()[-1] == ("u", "A", "exit", T0 + 30)


def test_timeout_exits_at_lapse_on_the_users_next_event() -> None:
    w = World([circle("A", 0, 0, 50), circle("B", 1000, 0, 50)])
    # inside A, then fixes in the hysteresis band (no placement) until the timeout passes
    w.run([gps("u", T0, 0, 0), gps("u", T0 + 600, 60, 0), gps("u", T0 + 1000, 60, 0)])
    assert w.trail() == [("u", "A", "enter", T0), ("u", "A", "exit", T0 + 900)]
    assert w.core.stats.exits_by_cause == {"timeout": 1}


def test_silent_user_is_exited_by_the_watermark_sweep_and_flush() -> None:
    w = World([circle("A", 0, 0, 50), circle("B", 1000, 0, 50)])
    w.run([gps("u", T0, 0, 0)])
    # other users' events push event time on; u says nothing more
    w.run([gps(v, T0 + t, 1000, 0) for t in range(0, 2000, 100) for v in ("v", "x", "y")])
    assert ("u", "A", "exit", T0 + 900) in w.trail()
    w2 = World([circle("A", 0, 0, 50)])
    w2.run([gps("u", T0, 0, 0)], flush=T0 + 10_000)
    assert w2.trail() == [("u", "A", "enter", T0), ("u", "A", "exit", T0 + 900)]


def test_placement_refreshes_the_timeout() -> None:
    w = World([circle("A", 0, 0, 50)])
    w.run([gps("u", T0 + t, 0, 0) for t in range(0, 3000, 600)], flush=T0 + 5000)
    assert w.trail() == [("u", "A", "enter", T0), ("u", "A", "exit", T0 + 2400 + 900)]


def test_wifi_registered_bssid_above_threshold_is_presence() -> None:
    w = World([circle("A", 0, 0, 30, wifi=["aa:bb:cc:00:00:01"])])
    w.run([wifi("u", T0, ("aa:bb:cc:00:00:01", -80.0), ("ff:ff:ff:00:00:09", -40.0))])
    assert w.trail() == []  # registered AP too weak, strong AP unknown
    w.run([wifi("u", T0 + 1, ("aa:bb:cc:00:00:01", -75.0))])
    assert w.trail() == [("u", "A", "enter", T0 + 1)]
    assert w.visits()[0].signal == "wifi"


def test_beacon_and_nfc_are_presence() -> None:
    w = World([circle("A", 0, 0, 30, beacon_minor=7), circle("B", 500, 0, 30, nfc=["tag-b"])])
    w.run([beacon("u", T0, 7, rssi=-81.0)])
    assert w.trail() == []
    w.run([beacon("u", T0 + 1, 7, rssi=-80.0)])
    assert w.trail() == [("u", "A", "enter", T0 + 1)]
    w.run([nfc("u", T0 + 2, "tag-b")])
    # the NFC tap claims B: the beacon visit in A is superseded
    assert w.trail()[1:] == [("u", "A", "exit", T0 + 2), ("u", "B", "enter", T0 + 2)]
    assert w.visits()[-1].signal == "nfc"


def test_mall_near_field_beats_gps_next_door() -> None:
    # Two shops whose GPS fences overlap (A spans -40..40 m, B -10..70 m).
    stores = [circle("A", 0, 0, 40, beacon_minor=1), circle("B", 30, 0, 40, beacon_minor=2)]
    w = World(stores)
    # at -30 m: inside A, B's fence 20 m away, beyond the 10 m accuracy: a GPS visit to A
    w.run([gps("u", T0, -30, 0)])
    assert w.trail() == [("u", "A", "enter", T0)]
    w.run([beacon("u", T0 + 5, 2)])
    assert w.trail()[1:] == [("u", "A", "exit", T0 + 5), ("u", "B", "enter", T0 + 5)]
    assert w.core.stats.exits_by_cause == {"superseded": 1}
    # within the claim window, GPS in the overlap does not reopen A ("never opened")
    w.run([gps("u", T0 + 30, 15, 0)])
    assert len(w.trail()) == 3
    assert w.core.stats.ignored_by_reason["gps_outvoted"] == 1
    # nor does a GPS fix clearly outside B exit the near-field visit while the claim is fresh
    w.run([gps("u", T0 + 40, -35, 0, acc=1)])
    assert len(w.trail()) == 3
    # after the window, GPS rules again (B is 25 m from the fix, beyond its 1 m accuracy)
    w.run([gps("u", T0 + 200, -35, 0, acc=1)])
    assert w.trail()[3:] == [("u", "B", "exit", T0 + 200), ("u", "A", "enter", T0 + 200)]


def test_gps_in_overlapping_fences_without_a_claim_opens_nothing() -> None:
    # A mall row: 12 m pitch, 20 m circles; every fix lies in two or three fences.
    stores = [circle(f"U{i}", 12 * i, 0, 20) for i in range(5)]
    w = World(stores)
    w.run([gps("u", T0 + t, 24, 3 * (t % 2), acc=15) for t in range(0, 600, 30)], flush=T0 + 700)
    assert w.trail() == []
    assert w.core.stats.ignored_by_reason["gps_ambiguous"] > 0
    # the same with a sharp fix: U2 holds it, U1 and U3 still come within 1 m (12 - 20 < 0)
    w.run([gps("u", T0 + 800, 24, 0, acc=1)])
    assert w.trail() == []


def test_gps_near_another_fence_within_accuracy_is_ambiguous_beyond_it_is_not() -> None:
    # Two stores whose fences do not overlap: A spans -30..30 m, B 50..110 m.
    stores = [circle("A", 0, 0, 30), circle("B", 80, 0, 30)]
    w = World(stores)
    # at 25 m: inside A, B's fence 25 m away: a 30 m accuracy circle reaches B, so no visit ...
    w.run([gps("u", T0, 25, 0, acc=30)])
    assert w.trail() == []
    # ... a 20 m one does not: A is the only store the user can be in
    w.run([gps("u", T0 + 30, 25, 0, acc=20)])
    assert w.trail() == [("u", "A", "enter", T0 + 30)]
    # once open, a fix inside A that is ambiguous keeps the visit (hysteresis), and B stays shut
    w.run([gps("u", T0 + 60 + t, 28, 0, acc=30) for t in range(0, 1200, 60)])
    assert w.trail() == [("u", "A", "enter", T0 + 30)]


def test_gps_unique_fence_opens_a_visit_umbrella_does_not_count_as_a_rival() -> None:
    mall = circle("MALL", 0, 0, 300, tags=["umbrella"])
    w = World([mall, circle("A", 0, 0, 20), circle("B", 200, 0, 20)])
    w.run([gps("u", T0, 0, 0, acc=10)])  # in A and in the mall's outline; B is 180 m away
    assert sorted(w.trail()) == [("u", "A", "enter", T0), ("u", "MALL", "enter", T0)]
    w2 = World([mall, circle("A", 0, 0, 20), circle("B", 30, 0, 20)])
    w2.run([gps("u", T0, 0, 0, acc=15)])  # A and B both within reach: only the mall opens
    assert w2.trail() == [("u", "MALL", "enter", T0)]


def test_claim_then_gps_in_overlapping_fences() -> None:
    stores = [circle(f"U{i}", 12 * i, 0, 20, wifi=[f"aa:00:00:00:00:0{i}"]) for i in range(3)]
    w = World(stores)
    # WiFi places the user in U1; GPS fixes in the overlap refresh U1 and open nothing else
    w.run([wifi("u", T0, ("aa:00:00:00:00:01", -60.0))])
    w.run([gps("u", T0 + t, 12, 0, acc=15) for t in range(10, 60, 10)])
    assert w.trail() == [("u", "U1", "enter", T0)]
    assert w.core.stats.ignored_by_reason["gps_outvoted"] > 0
    # after the claim window (WiFi off), ambiguous fixes inside U1 keep the open visit alive
    w.run([gps("u", T0 + t, 12, 0, acc=15) for t in range(120, 1800, 120)])
    assert w.trail() == [("u", "U1", "enter", T0)]
    assert list(w.store.user("u").visits) == ["U1"]


def test_mall_near_field_first_means_neighbour_never_opens() -> None:
    stores = [circle("A", 0, 0, 40, wifi=["aa:00:00:00:00:01"]), circle("B", 30, 0, 40)]
    w = World(stores)
    w.run([wifi("u", T0, ("aa:00:00:00:00:01", -60.0)), gps("u", T0 + 10, 15, 0)])
    assert w.trail() == [("u", "A", "enter", T0)]


def test_umbrella_store_is_never_superseded() -> None:
    stores = [circle("MALL", 0, 0, 300, tags=["umbrella"]), circle("A", 0, 0, 20, beacon_minor=1)]
    w = World(stores)
    w.run([gps("u", T0, 0, 0), beacon("u", T0 + 5, 1), gps("u", T0 + 10, 100, 0)])
    assert sorted(w.trail()) == [("u", "A", "enter", T0), ("u", "MALL", "enter", T0)]


def test_room_change_between_two_beacon_stores_needs_a_clearly_stronger_signal() -> None:
    w = World([circle("R1", 0, 0, 5, beacon_minor=1), circle("R2", 100, 0, 5, beacon_minor=2)])
    evs = [beacon("u", T0, 1, -60.0), beacon("u", T0 + 1, 2, -62.0), beacon("u", T0 + 2, 2, -61.0)]
    w.run(evs)
    assert w.trail() == [("u", "R1", "enter", T0)]
    # R2 turns clearly stronger: the smoothed RSSI clears the 3 dB margin on the 2nd sighting
    w.run([beacon("u", T0 + 3 + i, 2, -50.0) for i in range(5)])
    assert w.trail()[1:] == [("u", "R1", "exit", T0 + 4), ("u", "R2", "enter", T0 + 4)]


def test_out_of_order_event_never_transitions() -> None:
    w = World([circle("A", 0, 0, 50), circle("B", 500, 0, 50, nfc=["tag-b"])])
    w.run([gps("u", T0 + 100, 0, 0), gps("u", T0 + 50, 500, 0), nfc("u", T0 + 60, "tag-b")])
    assert w.trail() == [("u", "A", "enter", T0 + 100)]
    assert w.core.stats.rejected_by_reason == {"out_of_order": 2}
    # an equal timestamp is not older: accepted
    w.run([nfc("u", T0 + 100, "tag-b")])
    assert w.trail()[1:] == [("u", "A", "exit", T0 + 100), ("u", "B", "enter", T0 + 100)]


def test_speed_check_rejects_jumps_from_last_accepted_fix() -> None:
    w = World([circle("A", 0, 0, 50), circle("FAR", 20_000, 0, 50)])
    w.run([gps("u", T0, 0, 0), gps("u", T0 + 60, 20_000, 0)])  # 20 km in a minute: 1200 km/h
    assert w.trail() == [("u", "A", "enter", T0)]
    assert w.core.stats.spoofing_suspected == 1
    assert w.core.stats.rejected_by_reason == {"speed": 1}
    # 20 km in 10 minutes from the last ACCEPTED fix (T0) is 120 km/h: fine
    w.run([gps("u", T0 + 600, 20_000, 0)])
    assert w.trail()[1:] == [("u", "A", "exit", T0 + 600), ("u", "FAR", "enter", T0 + 600)]
    assert implied_speed_kmh((0.0, 0.0, 0.0), 0.0, 0.0, 0.0) == 0.0


def test_visit_ids_are_stable_and_enter_exit_alternate() -> None:
    evs = [gps("u", T0 + i * 1000, 0 if i % 2 == 0 else 400, 0) for i in range(6)]
    a = World([circle("A", 0, 0, 50)])
    b = World([circle("A", 0, 0, 50)])
    a.run(evs)
    b.run(evs, batch=2)
    assert [v.visit_id for v in a.visits()] == [v.visit_id for v in b.visits()]
    assert [v.event for v in a.visits()] == ["enter", "exit"] * 3
    ids = [v.visit_id for v in a.visits() if v.event == "enter"]
    assert len(set(ids)) == 3
    assert ids[0] == visit_id_for("u", "A", T0, 1)


def test_dwell_fires_once_per_threshold_and_not_after_exit() -> None:
    camps = campaigns(
        campaign("d5", "m-A", "dwell", dwell_s=300),
        campaign("d10", "m-A", "dwell", dwell_s=600),
        campaign("d5b", "m-A", "dwell", dwell_s=300, priority=-1),
    )
    w = World([circle("A", 0, 0, 50)], camps)
    w.run([gps("u", T0 + t, 0, 0) for t in range(0, 800, 50)])
    dwells = [(v.dwell_s, v.ts) for v in w.visits() if v.event == "dwell"]
    assert dwells == [(300, T0 + 300), (600, T0 + 600)]
    # a visit that ends before the threshold never dwells
    w2 = World([circle("A", 0, 0, 50)], camps)
    w2.run([gps("u", T0, 0, 0), gps("u", T0 + 200, 500, 0), gps("u", T0 + 700, 500, 0)])
    assert [v.event for v in w2.visits()] == ["enter", "exit"]


def test_dwell_fires_for_a_silent_user_only_while_present() -> None:
    camps = campaigns(
        campaign("d", "m-A", "dwell", dwell_s=600), campaign("e", "m-A", "dwell", dwell_s=1200)
    )
    w = World([circle("A", 0, 0, 50)], camps)
    w.run([gps("u", T0, 0, 0)], flush=T0 + 5000)
    # 600 s is within the 900 s presence; 1200 s is after the visit lapsed
    assert [(v.event, v.ts) for v in w.visits()] == [
        ("enter", T0),
        ("dwell", T0 + 600),
        ("exit", T0 + 900),
    ]


def test_payment_before_visit_makes_it_returning_and_follower() -> None:
    w = World([circle("A", 0, 0, 50)])
    w.run(
        [
            gps("u", T0, 0, 0),
            pay("u", T0 + 10, "m-A"),
            gps("u", T0 + 20, 500, 0),
            gps("u", T0 + 2000, 0, 0),
        ]
    )
    st = w.store.user("u")
    assert st.follows == ["m-A"]
    assert w.core.stats.visits_new == 1 and w.core.stats.visits_returning == 1
    assert w.core.stats.new_customer_payments == 1
    # each visit event says so: the first visit's events are new, the second's returning
    assert [(v.event, v.returning) for v in w.visits()] == [
        ("enter", False), ("exit", False), ("enter", True),
    ]  # fmt: skip


def test_reload_exits_visits_of_removed_stores_at_next_event() -> None:
    w = World([circle("A", 0, 0, 50), circle("B", 500, 0, 60)])
    w.run([gps("u", T0, 0, 0)])
    w.core.reload(index=FenceIndex(Catalog([circle("B", 500, 0, 60)])))
    w.run([gps("u", T0 + 10, 0, 0)])
    assert w.trail()[1:] == [("u", "A", "exit", T0 + 10)]
    assert w.core.stats.exits_by_cause == {"removed": 1}


def test_reload_exits_silent_users_at_timeout() -> None:
    w = World([circle("A", 0, 0, 50)])
    w.run([gps("u", T0, 0, 0)])
    w.core.reload(index=FenceIndex(Catalog([circle("B", 900, 0, 60)])))
    w.run([], flush=T0 + 5000)
    assert w.trail()[1:] == [("u", "A", "exit", T0 + 900)]


def test_config_thresholds_are_honoured() -> None:
    cfg = CoreConfig(wifi_rssi_min=-60.0, exit_margin_m=0.0)
    w = World([circle("A", 0, 0, 50, wifi=["aa:00:00:00:00:01"])], config=cfg)
    w.run([wifi("u", T0, ("aa:00:00:00:00:01", -70.0))])
    assert w.trail() == []
    w.run([gps("u", T0 + 1, 0, 0), gps("u", T0 + 200, 65, 0, acc=10)])  # 15 > 10 + 0
    assert [v.event for v in w.visits()] == ["enter", "exit"]


def test_restore_after_restart_arms_timers_of_open_visits() -> None:
    from engine.campaigns import CampaignSet
    from engine.core import Core

    w = World([circle("A", 0, 0, 50)])
    w.run([gps("u", T0, 0, 0)])
    # a new core over the same state (a restarted daemon) knows nothing of u's visit ...
    fresh = Core(w.index, CampaignSet(), w.store)
    assert fresh.flush(T0 + 5000) == []
    # ... until restored from the store's users with open visits
    again = Core(w.index, CampaignSet(), w.store)
    again.restore(list(w.store.all_users().values()), watermark=T0)
    assert again.watermark == T0
    outs = again.flush(T0 + 5000)
    assert [(o.event, o.ts) for o in outs] == [("exit", T0 + 900)]  # type: ignore[attr-defined]
