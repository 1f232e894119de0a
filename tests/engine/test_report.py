"""geopush report: lift statistics, the report over a replay with holdouts, redemptions and
attributed payments (byte-identical reruns), table / JSON / PNG, the CLI, the daemon's outbox."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from _corekit import T0, World, campaign, campaigns, circle, gps, pay
from PIL import Image

from engine import loop
from engine.cli import main
from engine.daemon.pipeline import Renderer, Topics
from engine.events import Payment, Redeem, encode_event
from engine.outputs import Holdout, Order, Push, RedeemResult, decode_output, encode_output
from engine.replay import OUTPUT_FILES, replay
from engine.report import (
    NOT_ENOUGH,
    ReportError,
    build_report,
    format_table,
    lift,
    load_delivered,
    load_outputs,
    newcombe,
    push_records,
    render_png,
    wilson,
)
from fences.catalog import dump_catalog

# --- statistics ------------------------------------------------------------------------------------


def test_wilson_and_newcombe_known_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17, table II, example (a): 56/70 vs 48/80.
    lo, hi = newcombe(56, 70, 48, 80)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = newcombe(9, 10, 3, 10)  # example (e) of the same table: 0.1705 to 0.8090
    assert (round(lo, 4), round(hi, 4)) == (0.1705, 0.809)


def test_lift_needs_enough_data() -> None:
    small = lift(29, 10, 100, 3)
    assert small["status"] == NOT_ENOUGH and "abs_lift" not in small
    assert lift(100, 2, 100, 2)["status"] == NOT_ENOUGH  # 4 conversions in all
    ok = lift(100, 30, 50, 5, orders1=40, orders0=5, revenue1=400.0, revenue0=50.0)
    assert ok["status"] == "ok"
    assert ok["abs_lift"] == 0.2
    lo, hi = ok["abs_lift_ci95"]
    assert lo < 0.2 < hi and lo > 0  # clearly positive
    assert ok["rel_lift"] == 2.0  # 0.3 / 0.1 - 1
    assert ok["rel_lift_ci95"][0] < 2.0 < ok["rel_lift_ci95"][1]
    assert ok["incremental_orders"] == 30.0  # (0.4 - 0.1) * 100
    assert ok["incremental_revenue"] == 300.0
    none_held = lift(100, 30, 50, 0)
    assert none_held["status"] == "ok" and none_held["rel_lift"] is None


# --- a replay with a holdout ---------------------------------------------------------------------

STORES = [circle("A", 0, 0, 50, merchant_id="m-A"), circle("B", 2000, 0, 50, merchant_id="m-B")]
N_USERS = 300


def _trace(tmp_path: Path, holdout_pct: float = 30.0) -> tuple[Path, Path, Path]:
    fences = tmp_path / "stores.geojson"
    dump_catalog(STORES, fences)
    camps = tmp_path / "campaigns.json"
    camps.write_text(
        json.dumps(
            {"campaigns": [campaign("a", "m-A", holdout_pct=holdout_pct), campaign("b", "m-B")]}
        )
    )
    lines: list[bytes] = []
    for i in range(N_USERS):
        u = f"u{i:03d}"
        t = T0 + i
        lines.append(encode_event(gps(u, t, 0, 0)))  # enters A: pushed or held out
        held = loop.in_holdout(u, "a", holdout_pct)
        # pushed users pay at A one time in two, held-out users one time in five
        if (i % 2 == 0) if not held else (i % 5 == 0):
            lines.append(encode_event(pay(u, t + 600, "m-A", 10.0 + i % 3)))
    lines.append(encode_event(gps("w", T0 + 1000, 2000, 0)))  # one push at B
    lines.sort(key=lambda b: json.loads(b)["ts"])
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    return trace, fences, camps


def _code_of(out: Path, user: str) -> str:
    for line in (out / "pushes.jsonl").read_bytes().splitlines():
        p = decode_output(line)
        if p.user == user:
            return p.code  # type: ignore[union-attr]
    raise AssertionError(user)


def test_replay_report_lift_and_determinism(tmp_path: Path) -> None:
    trace, fences, camps = _trace(tmp_path)
    s1 = replay(trace, fences, camps, out_dir=tmp_path / "r1", progress=False)
    replay(trace, fences, camps, out_dir=tmp_path / "r2", progress=False)
    for name in [*OUTPUT_FILES.values(), "summary.json"]:
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes(), name
    held = [u for u in (f"u{i:03d}" for i in range(N_USERS)) if loop.in_holdout(u, "a", 30.0)]
    assert s1["held_out"] == len(held) and s1["held_out_by_campaign"] == {"a": len(held)}
    assert s1["pushes_by_campaign"] == {"a": N_USERS - len(held), "b": 1}
    assert (tmp_path / "r1" / "holdouts.jsonl").read_bytes().count(b"\n") == len(held)

    rep = build_report(load_outputs(tmp_path / "r1"))
    (ma,) = [m for m in rep["merchants"] if m["merchant_id"] == "m-A"]
    (ca,) = ma["campaigns"]
    assert ca["campaign_id"] == "a" and ca["pushes"] == N_USERS - len(held)
    assert ca["held_out"] == len(held)
    lf = ca["lift"]
    assert lf["status"] == "ok"
    pushed = [i for i in range(N_USERS) if f"u{i:03d}" not in held]
    conv1 = sum(1 for i in pushed if i % 2 == 0)
    conv0 = sum(1 for i in range(N_USERS) if f"u{i:03d}" in held and i % 5 == 0)
    assert (lf["pushed_users"], lf["pushed_converted"]) == (len(pushed), conv1)
    assert (lf["holdout_users"], lf["holdout_converted"]) == (len(held), conv0)
    assert math.isclose(lf["abs_lift"], conv1 / len(pushed) - conv0 / len(held), abs_tol=1e-6)
    assert lf["abs_lift_ci95"][0] > 0
    assert ma["orders"] == conv1 and ma["new_customers"] == conv1 and ma["new_followers"] == conv1
    assert ma["revenue"] == sum(10.0 + i % 3 for i in pushed if i % 2 == 0)
    assert ma["visits"] == {"new": N_USERS, "returning": 0}
    assert ma["lift"]["status"] == "ok"  # the merchant pools its campaigns
    (mb,) = [m for m in rep["merchants"] if m["merchant_id"] == "m-B"]
    assert mb["lift"]["status"] == NOT_ENOUGH and mb["pushes"] == 1
    # the same report whatever the order of the outputs, duplicates merged
    outs = load_outputs(tmp_path / "r1")
    assert build_report(list(reversed(outs)) + outs[:50]) == rep
    table = format_table(rep)
    assert NOT_ENOUGH in table and "m-A" in table and "  a " in table


def test_redemptions_in_the_report_and_the_coupon_secret(tmp_path: Path) -> None:
    trace, fences, camps = _trace(tmp_path, holdout_pct=0.0)
    replay(trace, fences, camps, out_dir=tmp_path / "r0", progress=False)
    code = _code_of(tmp_path / "r0", "u001")
    extra = [
        Redeem(user="u001", ts=T0 + 50, merchant_id="m-A", code=code),
        Redeem(user="u001", ts=T0 + 60, merchant_id="m-A", code=code),
        Payment(user="u003", ts=T0 + 70, merchant_id="m-A", amount=3.0, code=_code_of(tmp_path / "r0", "u003")),
    ]
    lines = trace.read_bytes().splitlines() + [encode_event(e) for e in extra]
    lines.sort(key=lambda b: json.loads(b)["ts"])
    trace.write_bytes(b"\n".join(lines) + b"\n")
    replay(trace, fences, camps, out_dir=tmp_path / "r1", progress=False)
    res = [decode_output(x) for x in (tmp_path / "r1" / "redemptions.jsonl").read_bytes().splitlines()]
    assert [r.status for r in res] == ["ok", "already_redeemed", "ok"]  # type: ignore[union-attr]
    rep = build_report(load_outputs(tmp_path / "r1"))
    (ma,) = [m for m in rep["merchants"] if m["merchant_id"] == "m-A"]
    assert ma["redemptions"] == 2 and ma["campaigns"][0]["redemptions"] == 2
    orders = [decode_output(x) for x in (tmp_path / "r1" / "orders.jsonl").read_bytes().splitlines()]
    assert any(o.user == "u003" and o.via == "code" for o in orders)  # type: ignore[union-attr]
    recs = {r["user"]: r for r in push_records(load_outputs(tmp_path / "r1")) if r["merchant_id"] == "m-A"}
    assert recs["u001"]["redeemed_ts"] == T0 + 50 and recs["u001"]["delivered"] is None
    assert (recs["u003"]["redeemed_ts"], recs["u003"]["first_order_ts"]) == (T0 + 70, T0 + 70)
    assert recs["u003"]["first_order_value"] == 3.0

    # another secret, other codes: the old code is not found
    from engine.core import CoreConfig

    replay(trace, fences, camps, out_dir=tmp_path / "r2", progress=False,
           config=CoreConfig(coupon_secret="another"))  # fmt: skip
    assert _code_of(tmp_path / "r2", "u001") != code
    res2 = [decode_output(x) for x in (tmp_path / "r2" / "redemptions.jsonl").read_bytes().splitlines()]
    assert [r.status for r in res2] == ["not_found", "not_found", "not_found"]  # type: ignore[union-attr]


def test_cli_report_table_json_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, fences, camps = _trace(tmp_path)
    out = tmp_path / "out"
    assert main(["replay", str(trace), "--fences", str(fences), "--campaigns", str(camps),
                 "--out", str(out), "--no-progress", "--coupon-secret", "k"]) == 0  # fmt: skip
    capsys.readouterr()
    pushes = [decode_output(x) for x in (out / "pushes.jsonl").read_bytes().splitlines()]
    assert pushes and all(p.code == loop.coupon_code(b"k", p.push_id) for p in pushes)  # type: ignore[union-attr]
    png = tmp_path / "chart.png"
    per_push = tmp_path / "pushes.jsonl"
    assert main(["report", str(out), "--json", "--png", str(png), "--pushes", str(per_push)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(per_push.read_text().splitlines()) == rep["total"]["pushes"]
    assert rep == json.loads(json.dumps(build_report(load_outputs(out)), sort_keys=True))
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600
    assert main(["report", str(out), "--min-users", "1000"]) == 0
    assert NOT_ENOUGH in capsys.readouterr().out
    # the payments come 600 s after the decisions: outside a 60 s lift window
    assert main(["report", str(out), "--json", "--attribution-window-s", "60"]) == 0
    r60 = json.loads(capsys.readouterr().out)
    assert rep["lift_window_s"] == 7 * 86400.0 and r60["lift_window_s"] == 60.0
    (a60,) = [c for m in r60["merchants"] for c in m["campaigns"] if c["campaign_id"] == "a"]
    assert a60["lift"]["pushed_converted"] == a60["lift"]["holdout_converted"] == 0
    assert a60["orders"] == rep["total"]["orders"] > 0  # attribution credit is not lift
    assert main(["report", str(out), "--attribution-window-s", "-1"]) == 1
    assert "--attribution-window-s" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "no such folder or file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 1
    assert "run `geopush replay --out DIR` first" in capsys.readouterr().err


def test_report_over_a_daemon_outbox(tmp_path: Path) -> None:
    """The daemon's state file: outputs as the Renderer put them in the outbox."""
    from engine.stores.sqlite_store import SQLiteStore

    trace, fences, camps = _trace(tmp_path)
    replay(trace, fences, camps, out_dir=tmp_path / "r", progress=False)
    outs = load_outputs(tmp_path / "r")
    db = tmp_path / "state.db"
    store = SQLiteStore(db, render=Renderer(Topics()))
    pushes = [o for o in outs if isinstance(o, Push)]
    try:
        store.commit(outs)
        store.mark_sent([p.push_id for p in pushes[:10]])  # the broker acknowledged ten
    finally:
        store.close()
    assert build_report(load_outputs(db)) == build_report(outs)
    assert load_delivered(tmp_path / "r") is None
    delivered = load_delivered(db)
    rep = build_report(load_outputs(db), delivered=delivered)
    assert rep["total"]["delivered"] == 10 and build_report(outs)["total"]["delivered"] is None
    recs = push_records(load_outputs(db), delivered)
    assert len(recs) == len(pushes) and sum(r["delivered"] for r in recs) == 10
    paid = [r for r in recs if r["first_order_ts"] is not None]
    assert paid and all(r["first_order_value"] >= 10.0 for r in paid)
    bad = tmp_path / "not.db"
    bad.write_text("hello")
    with pytest.raises(ReportError, match="not a geopush state file"):
        load_outputs(bad)


def test_renderer_topics_for_the_new_outputs() -> None:
    render = Renderer(Topics())
    r = RedeemResult(request_id="x", user="u1", merchant_id="m1", code="C", ts=T0, status="ok")
    o = Order(user="u1", merchant_id="m1", ts=T0, amount=1.0, push_ref="p", campaign_id="c",
              held_out=False, via="window", first=True, new_customer=True, new_follower=False)  # fmt: skip
    h = Holdout(push_id="p", user="u1", campaign_id="c", store_id="s", merchant_id="m1",
                visit_id="v", trigger="enter", ts=T0)  # fmt: skip
    assert render(r).topic == "geopush/redemptions/m1/u1"
    assert render(o).topic == "geopush/outcomes/m1"
    assert render(h).topic == "geopush/outcomes/m1"
    for x in (r, o, h):
        assert decode_output(render(x).payload) == x
        assert decode_output(encode_output(x)) == x


def test_png_without_holdouts(tmp_path: Path) -> None:
    render_png(build_report([]), tmp_path / "empty.png")
    with Image.open(tmp_path / "empty.png") as im:
        assert im.format == "PNG"


# --- what lift counts: the window after each user's first decision, whoever got the order -------

DAY = 86400.0


def _world_outputs(camps: list[dict[str, Any]], events: list[Any]) -> list[Any]:
    w = World([circle("A", 0, 0, 50, merchant_id="m-A")], campaigns(*camps))
    w.run(sorted(events, key=lambda e: e.ts))
    return w.outs


def test_lift_window_starts_at_the_first_decision_in_both_arms() -> None:
    """A held-out user gets a holdout decision at every visit (holdouts spend no cap), a pushed
    user one push (per_user 1): a payment 8 days after the first visit is attributed to the
    held-out user's second decision (3 days later) but to nothing for the pushed user. Counting
    it made the held-out arm look converted: lift is measured in the window after each user's
    first decision, the same for both arms."""
    cap = {"per_user": 1, "period_s": int(14 * DAY)}
    evs: list[Any] = []
    users = [f"u{i:03d}" for i in range(200)]
    for i, u in enumerate(users):
        for t in (T0, T0 + 3 * DAY):  # two visits
            evs += [gps(u, t, 0, 0), gps(u, t + 600, 3000, 0)]
        evs.append(pay(u, T0 + 8 * DAY, "m-A"))  # after the first window, in the second
        if i % 4 == 0:
            evs.append(pay(u, T0 + DAY, "m-A"))  # a conversion in either arm
    outs = _world_outputs([campaign("a", "m-A", holdout_pct=30.0, caps=cap)], evs)
    held = {u for u in users if loop.in_holdout(u, "a", 30.0)}
    assert sum(type(o) is Holdout for o in outs) == 2 * len(held)  # every visit decided
    assert sum(type(o) is Push for o in outs) == len(users) - len(held)
    late = [o for o in outs if type(o) is Order and o.ts == T0 + 8 * DAY]
    assert late and all(o.held_out for o in late)  # only held-out users' late payments attach
    lf = build_report(outs)["merchants"][0]["campaigns"][0]["lift"]
    conv = {u for i, u in enumerate(users) if i % 4 == 0}
    assert (lf["pushed_users"], lf["pushed_converted"]) == (len(users) - len(held), len(conv - held))
    assert (lf["holdout_users"], lf["holdout_converted"]) == (len(held), len(conv & held))
    # a window longer than the engine's would count the late payment for held-out users only
    # (pushed users' got no order): the report's window must be the engine's
    lf9 = build_report(outs, window_s=9 * DAY)["merchants"][0]["campaigns"][0]["lift"]
    assert lf9["holdout_converted"] == len(held) and lf9["pushed_converted"] == len(conv - held)


def test_lift_counts_orders_another_campaign_of_the_merchant_took() -> None:
    """Campaign b (exit) pushes everyone after campaign a (enter, 30% held out) decided: the
    payment an hour later is attributed to b's push, the latest offer. It is still a payment at
    the merchant within a's window, in both of a's arms: a's lift counts it (an intention-to-treat
    comparison of a's arms), where counting only orders attributed to a left a with none."""
    evs: list[Any] = []
    users = [f"u{i:03d}" for i in range(200)]
    for i, u in enumerate(users):
        evs += [gps(u, T0 + i, 0, 0), gps(u, T0 + i + 600, 3000, 0)]
        if i % 3 == 0:
            evs.append(pay(u, T0 + i + 3600, "m-A"))
    outs = _world_outputs(
        [campaign("a", "m-A", holdout_pct=30.0), campaign("b", "m-A", trigger="exit")], evs
    )
    assert all(o.campaign_id == "b" for o in outs if type(o) is Order)
    held = {u for u in users if loop.in_holdout(u, "a", 30.0)}
    conv = {u for i, u in enumerate(users) if i % 3 == 0}
    (m,) = build_report(outs)["merchants"]
    (a,) = [c for c in m["campaigns"] if c["campaign_id"] == "a"]
    lf = a["lift"]
    assert lf["status"] == "ok"
    assert (lf["pushed_users"], lf["pushed_converted"]) == (len(users) - len(held), len(conv - held))
    assert (lf["holdout_users"], lf["holdout_converted"]) == (len(held), len(conv & held))
    assert a["orders"] == 0  # attribution credit stays with b
