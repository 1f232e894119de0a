"""A simulated week that closes the loop: visits, the engine's decisions, people's responses.

``simulate_week(seed, out)`` writes one seed's inputs and the truth (docs/simulator.md, "Closing
the loop"):

1. **Visits.** A compact population, no GPS tracks: stores on a 200 m grid, homes between them.
   Each person frequents some merchants (``patrons``) and visits them Poisson(``visits_per_week``)
   times in the week, 07:00-21:00 local, 4-40 minutes. A visit is a few location reports only:
   the arrival (a GPS fix inside the fence, a WiFi scan of the store's AP or a beacon sighting,
   by the person's phone), the same every ~5 minutes while inside, and a GPS fix at home when
   leaving.
2. **Decisions.** The engine itself replays those visits (``engine.replay.replay``, pass 1): its
   pushes and holdout decisions say who was pushed and who was held out (the holdout draw is
   the engine's ``engine.loop.in_holdout``; nothing is recomputed here).
3. **Responses (the truth model).** Per scored campaign and per person it decided on, from the
   first decision: the person converts (pays at the merchant within the attribution window) with
   probability ``p0_i`` when held out and ``p0_i + true_uplift`` when pushed, where ``p0_i =
   base_rate * (0.5 + loyalty_i)`` with loyalty uniform in [0, 1) (so the base rate varies by
   person, the uplift does not: the true lift is ``true_uplift`` exactly). 30% pay during the
   visit (90 s to 15 min after the decision), the others later: exponential delay (mean 1 day)
   cut to the window (or to the coupon's expiry for redeemers); a pushed person who converts redeems the code with
   probability ``redeem_rate``, before the coupon expires: half of them at the till (``redeem``
   event, then the payment a minute later), half by paying with the code. 5% of redeemers first
   type a code with one wrong character (``invalid_code``), 5% scan it again afterwards
   (``already_redeemed``). People never decided on pay at the merchant at the base rate too (no
   order may be attributed to those payments). One draw decides both potential outcomes of a
   person (converts if pushed / if held out), so the truth also has the week's realized uplift
   (``sample_uplift``, the mean individual effect over the decided people). Decided people pay
   again after their window at the base rate (a repeat purchase 1 h to 7 days after it closed,
   its own random stream): a held-out person's later holdout decision attracts some of those
   payments, which the report's lift must not count as conversions.
4. **The full trace** (visits, payments, redemptions) is what ``geopush replay`` then replays
   (pass 2). Payments and redemptions change no decision here (scored campaigns have segment
   ``all``, no merchant with a payment has a segment campaign, no daily limit); ``run_week``
   checks that pass 2 made exactly pass 1's decisions.

``truth.json`` holds the model and the true counts: users per arm, converted users per arm,
orders, and redemption answers by status, which the engine's attribution must reproduce exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import GeopushError
from engine.events import Ap, Beacon, Event, Gps, Payment, Redeem, Wifi
from engine.loop import ALPHABET, ATTRIBUTION_WINDOW_S, display_code
from engine.outputs import Holdout, Push, decode_output

WEEK_T0 = 1772402400.0  # Monday 2026-03-02 00:00 Europe/Helsinki (UTC+2)
WEEK_S = 7 * 86400.0
TZ = "Europe/Helsinki"
ORIGIN = (24.9384, 60.1699)
PITCH_M = 200.0
EARTH_R = 6_371_008.8
BEACON_UUID = "F7826DA6-4FA2-4E98-8024-BC5B71E0893E"
MEAN_DELAY_S = 86400.0
AT_ONCE_SHARE = 0.3  # converters who pay during the visit (90 s to 15 min after the decision)
TYPO_RATE = 0.05
DOUBLE_SCAN_RATE = 0.05


class WeekError(GeopushError):
    """A bad truth model, or the two passes disagreed (the message says what and why)."""


@dataclass(frozen=True)
class Merchant:
    """A merchant of the simulated city; ``scored`` merchants have a holdout campaign whose
    lift is scored against the truth model's ``true_uplift``."""

    id: str
    campaign: str
    stores: int
    patrons: float  # share of people who frequent it
    visits_per_week: float  # a patron's mean visits in the week
    trigger: str = "enter"  # "enter" or "dwell"
    dwell_s: int | None = None
    holdout_pct: float = 0.0
    base_rate: float = 0.0  # mean conversion within the window without a push (p0)
    true_uplift: float = 0.0  # p1 - p0, the same for every person
    redeem_rate: float = 0.0  # share of pushed converters who redeem the code
    expires_in_s: int = 3 * 86400

    @property
    def scored(self) -> bool:
        return self.holdout_pct > 0.0


DEFAULT_MERCHANTS: tuple[Merchant, ...] = (
    Merchant("m-cafe", "cafe-welcome", stores=4, patrons=0.5, visits_per_week=2.0,
             holdout_pct=10.0, base_rate=0.10, true_uplift=0.05, redeem_rate=0.6),
    Merchant("m-grocer", "grocer-stay", stores=3, patrons=0.45, visits_per_week=1.5,
             trigger="dwell", dwell_s=600, holdout_pct=15.0, base_rate=0.20, true_uplift=0.03,
             redeem_rate=0.5),
    *(Merchant(f"m-shop{k}", f"shop{k}-hello", stores=2, patrons=0.25, visits_per_week=1.0)
      for k in range(1, 7)),
)


@dataclass
class WeekModel:
    users: int = 8000
    merchants: tuple[Merchant, ...] = DEFAULT_MERCHANTS
    window_s: float = ATTRIBUTION_WINDOW_S

    def check(self) -> None:
        problems = []
        if self.users < 10:
            problems.append(f"users {self.users}: give at least 10")
        for m in self.merchants:
            if not m.scored:
                continue
            lo, hi = 0.5 * m.base_rate + m.true_uplift, 1.5 * m.base_rate + m.true_uplift
            if m.base_rate < 0.0 or lo < 0.0 or hi > 1.0:
                problems.append(
                    f"{m.campaign}: base_rate {m.base_rate} and true_uplift {m.true_uplift} give "
                    "conversion probabilities outside [0, 1] (p0 ranges from 0.5 to 1.5 x "
                    "base_rate: keep 1.5 x base_rate + true_uplift <= 1 and 0.5 x base_rate + "
                    "true_uplift >= 0)"
                )
            if not 0.0 <= m.redeem_rate <= 1.0:
                problems.append(f"{m.campaign}: redeem_rate {m.redeem_rate} must be in [0, 1]")
            if m.expires_in_s < 600:
                problems.append(f"{m.campaign}: expires_in_s {m.expires_in_s} must be >= 600")
        if problems:
            raise WeekError("bad truth model: " + "; ".join(problems))


# --- the city -------------------------------------------------------------------------------------


@dataclass
class City:
    store_ids: list[str]
    store_merchant: np.ndarray  # merchant index per store
    sx: np.ndarray  # store centre (m)
    sy: np.ndarray
    hx: np.ndarray  # home (m) per person
    hy: np.ndarray
    phone: np.ndarray  # 0 gps, 1 wifi, 2 beacon


def _lonlat(x: float, y: float) -> tuple[float, float]:
    lat0 = math.radians(ORIGIN[1])
    return (
        round(ORIGIN[0] + math.degrees(x / (EARTH_R * math.cos(lat0))), 7),
        round(ORIGIN[1] + math.degrees(y / EARTH_R), 7),
    )


def _bssid(store: int) -> str:
    v = (0x02 << 40) | (store + 1)
    return ":".join(f"{(v >> s) & 255:02x}" for s in range(40, -8, -8))


def build_city(model: WeekModel, rng: np.random.Generator) -> City:
    ms = model.merchants
    merchant_of = np.concatenate([np.full(m.stores, k) for k, m in enumerate(ms)])
    n = len(merchant_of)
    side = max(3, math.ceil(math.sqrt(n * 1.5)))
    cells = rng.choice(side * side, n, replace=False)
    sx = (cells % side) * PITCH_M
    sy = (cells // side) * PITCH_M
    ids = []
    count: dict[int, int] = {}
    for k in merchant_of:
        count[int(k)] = count.get(int(k), 0) + 1
        ids.append(f"{ms[int(k)].id.removeprefix('m-')}-{count[int(k)]}")
    # homes at block corners: >= 141 m from every store centre (fences are 30 m)
    u = model.users
    hx = (rng.integers(0, side - 1, u) + 0.5) * PITCH_M
    hy = (rng.integers(0, side - 1, u) + 0.5) * PITCH_M
    phone = rng.choice(3, u, p=[0.4, 0.4, 0.2])
    return City(ids, merchant_of, sx.astype(float), sy.astype(float), hx, hy, phone)


def catalog_doc(city: City, model: WeekModel) -> dict[str, Any]:
    feats = []
    for s, sid in enumerate(city.store_ids):
        lon, lat = _lonlat(city.sx[s], city.sy[s])
        feats.append({
            "type": "Feature",
            "properties": {
                "store_id": sid,
                "merchant_id": model.merchants[int(city.store_merchant[s])].id,
                "radius_m": 30,
                "tz": TZ,
                "wifi": [_bssid(s)],
                "beacons": [f"{BEACON_UUID}:1:{s + 1}"],
            },
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
        })
    return {"type": "FeatureCollection", "features": feats}


def campaign_doc(model: WeekModel) -> dict[str, Any]:
    camps = []
    for m in model.merchants:
        c: dict[str, Any] = {
            "id": m.campaign,
            "merchant_id": m.id,
            "trigger": m.trigger,
            "caps": {"per_user": 1, "period_s": int(2 * WEEK_S)},
            "coupon": {"title": f"{m.campaign} offer", "value": 2.0, "currency": "EUR",
                       "expires_in_s": m.expires_in_s},
        }
        if m.dwell_s is not None:
            c["dwell_s"] = m.dwell_s
        if m.holdout_pct:
            c["holdout_pct"] = m.holdout_pct
        camps.append(c)
    return {"quiet_hours": {"start": "22:00", "end": "08:00"}, "campaigns": camps}


# --- visits ---------------------------------------------------------------------------------------


def visit_events(city: City, model: WeekModel, rng: np.random.Generator) -> tuple[list[Event], int]:
    """The location reports of a week of visits, and the number of visits."""
    ms = model.merchants
    users = model.users
    stores_of = [np.flatnonzero(city.store_merchant == k) for k in range(len(ms))]
    rows = []  # (user, start, end, store)
    for k, m in enumerate(ms):
        patron = rng.random(users) < m.patrons
        n = np.where(patron, rng.poisson(m.visits_per_week, users), 0)
        fav = rng.choice(stores_of[k], users)
        who = np.repeat(np.arange(users), n)
        nv = len(who)
        day = rng.integers(0, 7, nv)
        start = WEEK_T0 + day * 86400.0 + rng.uniform(7 * 3600, 21 * 3600, nv)
        dur = rng.uniform(240, 2400, nv)
        store = np.where(rng.random(nv) < 0.7, fav[who], rng.choice(stores_of[k], nv))
        rows.append((who, start, start + dur, store))
    who = np.concatenate([r[0] for r in rows])
    start = np.concatenate([r[1] for r in rows])
    end = np.concatenate([r[2] for r in rows])
    store = np.concatenate([r[3] for r in rows])
    order = np.lexsort((start, who))
    evs: list[Event] = []
    last_user = -1
    free_at = 0.0
    visits = 0
    for i in order.tolist():
        u = int(who[i])
        t0 = float(start[i])
        if u == last_user and t0 < free_at:
            continue  # overlaps the previous visit (plus travel): dropped
        last_user = u
        t1 = float(end[i])
        free_at = t1 + 900.0
        visits += 1
        s = int(store[i])
        name = f"u{u:06d}"
        kind = int(city.phone[u])
        t = t0
        while t < t1 - 60.0:
            ts = round(t, 3)
            if kind == 0:
                lon, lat = _lonlat(city.sx[s] + rng.uniform(-5, 5), city.sy[s] + rng.uniform(-5, 5))
                evs.append(Gps(user=name, ts=ts, lon=lon, lat=lat, acc=10.0))
            elif kind == 1:
                evs.append(Wifi(user=name, ts=ts, aps=[Ap(bssid=_bssid(s), rssi=-58.0)]))
            else:
                evs.append(Beacon(user=name, ts=ts, uuid=BEACON_UUID, major=1, minor=s + 1,
                                  rssi=-62.0))
            t += rng.uniform(240, 330)
        lon, lat = _lonlat(city.hx[u], city.hy[u])
        evs.append(Gps(user=name, ts=round(t1, 3), lon=lon, lat=lat, acc=15.0))
    return evs, visits


# --- decisions and responses -------------------------------------------------------------------


@dataclass
class Decisions:
    """The engine's decisions per scored campaign: user -> (first decision, pushed?) and all ids."""

    first: dict[str, dict[str, Push | Holdout]] = field(default_factory=dict)
    ids: set[tuple[str, str]] = field(default_factory=set)  # (kind, push_id), every campaign
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # every decision's ts


def read_decisions(run: Path) -> Decisions:
    d = Decisions()
    for name in ("pushes.jsonl", "holdouts.jsonl"):
        with open(run / name, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                o = decode_output(line)
                assert isinstance(o, Push | Holdout)
                d.ids.add((type(o).__name__, o.push_id))
                d.times.setdefault(o.campaign_id, {}).setdefault(o.user, []).append(o.ts)
                per = d.first.setdefault(o.campaign_id, {})
                prev = per.get(o.user)
                if prev is None or (o.ts, o.push_id) < (prev.ts, prev.push_id):
                    per[o.user] = o
    return d


def _typo(code: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(0, len(code) - 1))
    wrong = ALPHABET[(ALPHABET.index(code[i]) + 1 + int(rng.integers(0, 31))) % 32]
    return display_code(code[:i] + wrong + code[i + 1:])


def _delay(rng: np.random.Generator, limit: float) -> float:
    """Exponential (mean 1 day) cut to [120 s, limit - 120 s] (inverse CDF of the cut law)."""
    lo, hi = 120.0, limit - 120.0
    a, b = math.exp(-lo / MEAN_DELAY_S), math.exp(-hi / MEAN_DELAY_S)
    return -MEAN_DELAY_S * math.log(a - rng.random() * (a - b))


def responses(
    model: WeekModel, dec: Decisions, rng: np.random.Generator,
    later: np.random.Generator | None = None,
) -> tuple[list[Event], dict[str, dict[str, Any]]]:
    """Payments and redemptions drawn from the truth model, and the true counts per campaign.
    ``later`` draws the repeat payments after the window (its own stream, so that adding them
    changed no other draw)."""
    later = later or np.random.default_rng(0)
    evs: list[Event] = []
    truth: dict[str, dict[str, Any]] = {}
    till = 0
    for m in model.merchants:
        if not m.scored:
            continue
        t: dict[str, Any] = {
            "merchant_id": m.id, "trigger": m.trigger, "holdout_pct": m.holdout_pct,
            "base_rate": m.base_rate, "true_uplift": m.true_uplift, "redeem_rate": m.redeem_rate,
            "pushed_users": 0, "holdout_users": 0, "pushed_converted": 0, "holdout_converted": 0,
            "orders": 0, "held_out_orders": 0, "redemptions": 0,
            "redeem_answers": {"ok": 0, "invalid_code": 0, "already_redeemed": 0},
            "background_payments": 0,
            # potential outcomes of the decided users (the same draw decides both): converted
            # if pushed, converted if held out; the realized (sample) lift is their difference
            "decided_users": 0, "converted_if_pushed": 0, "converted_if_held_out": 0,
            "later_payments": 0, "later_held_out_orders": 0,
        }
        truth[m.campaign] = t
        first = dec.first.get(m.campaign, {})
        for user in sorted(first):
            o = first[user]
            pushed = type(o) is Push
            t["pushed_users" if pushed else "holdout_users"] += 1
            p0 = m.base_rate * (0.5 + rng.random())
            draw = rng.random()  # converts if draw < p: with a push p = p0 + uplift, else p0
            t["decided_users"] += 1
            t["converted_if_pushed"] += draw < p0 + m.true_uplift
            t["converted_if_held_out"] += draw < p0
            if draw >= p0 + (m.true_uplift if pushed else 0.0):
                continue
            t["pushed_converted" if pushed else "holdout_converted"] += 1
            t["orders" if pushed else "held_out_orders"] += 1
            redeems = pushed and rng.random() < m.redeem_rate
            limit = min(model.window_s, float(m.expires_in_s)) if redeems else model.window_s
            if rng.random() < AT_ONCE_SHARE:  # pays during the visit, at the till
                pay = round(o.ts + rng.uniform(90.0, 900.0), 3)
            else:
                pay = round(o.ts + _delay(rng, limit), 3)
            amount = round(float(rng.lognormal(2.0, 0.5)), 2)
            if not redeems:
                evs.append(Payment(user=user, ts=pay, merchant_id=m.id, amount=amount))
                continue
            assert isinstance(o, Push)
            till += 1
            t["redemptions"] += 1
            t["redeem_answers"]["ok"] += 1
            if rng.random() < TYPO_RATE:
                evs.append(Redeem(user=user, ts=pay - 90.0, merchant_id=m.id,
                                  code=_typo(o.code, rng), request_id=f"till:{till}:typo"))
                t["redeem_answers"]["invalid_code"] += 1
            if rng.random() < 0.5:
                evs.append(Redeem(user=user, ts=pay - 60.0, merchant_id=m.id,
                                  code=display_code(o.code), request_id=f"till:{till}"))
                evs.append(Payment(user=user, ts=pay, merchant_id=m.id, amount=amount))
            else:
                evs.append(Payment(user=user, ts=pay, merchant_id=m.id, amount=amount,
                                   code=o.code.lower()))
            if rng.random() < DOUBLE_SCAN_RATE:
                evs.append(Redeem(user=user, ts=pay + 30.0, merchant_id=m.id, code=o.code,
                                  request_id=f"till:{till}:again"))
                t["redeem_answers"]["already_redeemed"] += 1
        t["sample_uplift"] = round(
            (t["converted_if_pushed"] - t["converted_if_held_out"]) / max(1, t["decided_users"]),
            9,
        )
        # decided people come back after their window too (a repeat purchase 1 hour to 7 days
        # after it closed, at the base rate, in either arm): not a conversion. A held-out
        # person's later holdout decision (holdouts spend no cap) can attract it as a held-out
        # order; the report must not count it (its window starts at the first decision)
        for user in sorted(first):
            if later.random() >= m.base_rate:
                continue
            o = first[user]
            pay = round(o.ts + model.window_s + later.uniform(3600.0, 7 * 86400.0), 3)
            evs.append(Payment(user=user, ts=pay, merchant_id=m.id,
                               amount=round(float(later.lognormal(2.0, 0.5)), 2)))
            t["later_payments"] += 1
            ts = dec.times.get(m.campaign, {}).get(user, [])
            if type(o) is Holdout and any(d <= pay <= d + model.window_s for d in ts):
                t["later_held_out_orders"] += 1
        # people the campaign never decided on pay too, at the base rate: no order may follow
        for u in range(model.users):
            name = f"u{u:06d}"
            if name in first or rng.random() >= m.base_rate:
                continue
            ts = round(WEEK_T0 + rng.uniform(8 * 3600, WEEK_S), 3)
            evs.append(Payment(user=name, ts=ts, merchant_id=m.id,
                               amount=round(float(rng.lognormal(2.0, 0.5)), 2)))
            t["background_payments"] += 1
    return evs, truth


# --- one seed -----------------------------------------------------------------------------------


def _replay(trace: Path, out: Path, dirpath: Path, window_s: float) -> dict[str, Any]:
    from engine.core import CoreConfig
    from engine.replay import replay

    return replay(trace, dirpath / "stores.geojson", dirpath / "campaigns.json", out_dir=out,
                  progress=False, config=CoreConfig(attribution_window_s=window_s))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def simulate_week(seed: int, out: str | Path, model: WeekModel | None = None) -> dict[str, Any]:
    """Write one seed's week into ``out``: stores.geojson, campaigns.json, trace.jsonl (visits,
    payments, redemptions) and truth.json. Runs the engine once over the visits (pass 1) to learn
    its decisions. Returns the truth (also in truth.json)."""
    from engine.traces import write_trace

    model = model or WeekModel()
    model.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    city = build_city(model, rng)
    _write_json(out / "stores.geojson", catalog_doc(city, model))
    _write_json(out / "campaigns.json", campaign_doc(model))
    visits, n_visits = visit_events(city, model, rng)
    tmp = Path(tempfile.mkdtemp(prefix="pass1-", dir=out))
    try:
        write_trace(visits, tmp / "visits.jsonl")
        _replay(tmp / "visits.jsonl", tmp / "run", out, model.window_s)
        dec = read_decisions(tmp / "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    resp, camps = responses(model, dec, np.random.default_rng([seed, 11]),
                            np.random.default_rng([seed, 13]))
    n = write_trace([*visits, *resp], out / "trace.jsonl")
    truth = {
        "seed": seed,
        "users": model.users,
        "visits": n_visits,
        "events": n,
        "attribution_window_s": model.window_s,
        "decisions": sorted(f"{k}:{p}" for k, p in dec.ids),
        "campaigns": camps,
        "model": [asdict(m) for m in model.merchants],
    }
    _write_json(out / "truth.json", truth)
    return truth


def replay_week(week: str | Path, run: str | Path) -> dict[str, Any]:
    """Pass 2: replay the week's full trace into ``run``, and check that the engine made exactly
    the decisions of pass 1 (the responses must not have changed any)."""
    week = Path(week)
    truth = load_truth(week / "truth.json")
    summary = _replay(week / "trace.jsonl", Path(run), week, float(truth["attribution_window_s"]))
    got = sorted(f"{k}:{p}" for k, p in read_decisions(Path(run)).ids)
    if got != truth["decisions"]:
        extra = len(set(got) - set(truth["decisions"]))
        missing = len(set(truth["decisions"]) - set(got))
        raise WeekError(
            f"{week}: the replay of the full trace made other decisions than the visits alone "
            f"({extra} new, {missing} missing): a payment or redemption changed a decision, so "
            "the truth model's arms are not the engine's; use segment 'all' for scored campaigns"
        )
    return summary


def load_truth(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise WeekError(f"{p}: cannot read the truth ({exc}); give the truth.json that "
                        "`geopush simulate week` wrote") from exc
    if not isinstance(obj, dict) or "campaigns" not in obj or "decisions" not in obj:
        raise WeekError(f"{p}: not a week's truth.json (no campaigns/decisions); give the "
                        "truth.json that `geopush simulate week` wrote")
    return obj


def merchants_from(obj: Iterable[dict[str, Any]]) -> tuple[Merchant, ...]:
    try:
        return tuple(Merchant(**d) for d in obj)
    except TypeError as exc:
        raise WeekError(f"bad merchant in the model: {exc}") from exc
