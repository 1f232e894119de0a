"""People and their days: homes, workplaces, favourite stores and malls, as per-person arrays.

A day is a fixed template of slots, each filled (or skipped) for every person at once with numpy:

    home -> [coffee] -> work -> [lunch] -> work -> [shopping: 0-2 stores, or 2-4 units of a mall]
    -> home                                              (65% of people work)
    home -> [errand] -> home -> [errand] -> [shopping ...] -> home          (the others)

Stores come from each person's favourites (near home, near work, one mall), so the same people
come back day after day: returning customers, follows after payments. Between stays people walk
(1.1-1.5 m/s) or, beyond 1.5 km, ride (7-11 m/s door to door) along streets (layout.path_point).
The result is a flat, per-person time-ordered list of stays; travel is implied between
consecutive stays of one person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.layout import BLOCK_M, Layout, path_length

DAY_S = 86400.0
ANCHOR = -1  # st_store value for a stay at home or work


@dataclass
class People:
    n: int
    t0: float  # simulation start (epoch s)
    t_end: float
    home_x: np.ndarray
    home_y: np.ndarray
    works: np.ndarray
    tag_mask: np.ndarray  # bit j set = TAGS[j]
    opt_out: np.ndarray
    gps_period: np.ndarray  # seconds between fixes
    gps_phase: np.ndarray
    wifi_on: np.ndarray
    wifi_period: np.ndarray
    wifi_phase: np.ndarray
    ble_on: np.ndarray
    ble_period: np.ndarray
    ble_phase: np.ndarray
    spoofer: np.ndarray  # bool: deliberately fakes positions far away for a while
    spoof_from: float
    spoof_until: float
    # Stays, sorted by (user, start).
    st_user: np.ndarray
    st_start: np.ndarray
    st_end: np.ndarray
    st_x: np.ndarray
    st_y: np.ndarray
    st_store: np.ndarray  # store index or ANCHOR
    st_ap: np.ndarray  # anchor AP id for home/work stays, -1 for stores
    st_buy: np.ndarray  # bool: pays at the end of this stay
    # Point events (NFC taps and payments), sorted by time.
    pt_kind: np.ndarray  # emit.NFC or emit.PAY
    pt_user: np.ndarray
    pt_ts: np.ndarray
    pt_store: np.ndarray
    pt_amount_cents: np.ndarray
    pt_stay: np.ndarray


def _near(lay: Layout, cells: np.ndarray, reach: int, tries: int, rng: np.random.Generator,
          want_mall: bool) -> np.ndarray:
    """For each block in ``cells``, a store (or a mall) in a block within ``reach`` blocks, or -1."""
    n = len(cells)
    out = np.full(n, -1, np.int64)
    ci = cells % lay.nx
    cj = cells // lay.nx
    for _ in range(tries):
        todo = out < 0
        ii = np.clip(ci + rng.integers(-reach, reach + 1, n), 0, lay.nx - 1)
        jj = np.clip(cj + rng.integers(-reach, reach + 1, n), 0, lay.ny - 1)
        cand = jj * lay.nx + ii
        kind = lay.cell_kind[cand]
        ref = lay.cell_ref[cand].astype(np.int64)
        if want_mall:
            pick = np.where(kind == 2, ref, -1)
        else:
            # A mall block yields one of its units at random.
            m = np.where(kind == 2, ref, 0)
            unit = lay.mall_start[m] + (rng.random(n) * lay.mall_count[m]).astype(np.int64) \
                if len(lay.mall_start) else np.zeros(n, np.int64)
            pick = np.where(kind == 1, ref, np.where(kind == 2, unit, -1))
        out = np.where(todo, pick, out)
    return out


def _store_point(lay: Layout, store: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Where a person stands in a store: near its middle (well inside the fence)."""
    s = np.maximum(store, 0)
    in_mall = lay.mall[s] >= 0
    r = np.where(in_mall, 3.0, 0.3 * lay.radius[s]) * np.sqrt(rng.random(len(s)))
    a = rng.uniform(0, 2 * np.pi, len(s))
    return lay.cx[s] + r * np.cos(a), lay.cy[s] + r * np.sin(a)


TAGS = ("student", "family", "commuter", "foodie", "fashion", "tech", "sports", "senior", "vip")


def build_people(lay: Layout, n_users: int, hours: float, seed: int, t0: float,
                 start_hour: float = 6.0) -> People:
    """People and their stays from ``t0`` (which is ``start_hour`` o'clock on day 0) for ``hours``."""
    if n_users < 1:
        raise ValueError("a city needs at least one person (--users >= 1)")
    if hours <= 0:
        raise ValueError("--hours must be > 0")
    rng = np.random.default_rng([seed, 2])
    m = n_users
    res = np.flatnonzero(lay.cell_kind == 0)
    home_cell = res[rng.integers(0, len(res), m)]
    work_cell = res[rng.integers(0, len(res), m)]
    hx, hy = lay.cell_centre(home_cell)
    hx = hx + rng.uniform(-40, 40, m)
    hy = hy + rng.uniform(-40, 40, m)
    wx, wy = lay.cell_centre(work_cell)
    wx = wx + rng.uniform(-40, 40, m)
    wy = wy + rng.uniform(-40, 40, m)
    works = rng.random(m) < 0.65
    fav_home = np.stack([_near(lay, home_cell, 4, 8, rng, False) for _ in range(4)], axis=1)
    fav_work = np.stack([_near(lay, work_cell, 3, 8, rng, False) for _ in range(3)], axis=1)
    fav_mall = _near(lay, home_cell, 10, 16, rng, True) if len(lay.mall_start) else np.full(m, -1)
    walk_v = rng.uniform(1.1, 1.5, m)
    ride_v = rng.uniform(7.0, 11.0, m)

    if not 0 <= start_hour < 24:
        raise ValueError(f"start hour must be in [0, 24), got {start_hour}")
    day0 = t0 - start_hour * 3600.0  # midnight of day 0
    t_end = t0 + hours * 3600.0
    n_days = int(np.ceil((t_end - day0) / DAY_S))
    recs: list[tuple[np.ndarray, ...]] = []
    t = np.full(m, day0)
    px, py = hx.copy(), hy.copy()
    prev_store = np.full(m, -1, np.int64)
    users = np.arange(m)

    def pick(fav: np.ndarray) -> np.ndarray:
        return fav[users, rng.integers(0, fav.shape[1], m)]

    for d in range(n_days):
        base = day0 + d * DAY_S
        slots: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

        def anchor(active: np.ndarray, end_h: np.ndarray, x: np.ndarray, y: np.ndarray,
                   ap: np.ndarray, _slots: list = slots, _base: float = base) -> None:  # type: ignore[type-arg]
            _slots.append((active, np.full(m, ANCHOR), _base + end_h * 3600.0, ap, np.stack([x, y])))

        def store(active: np.ndarray, st: np.ndarray, dur_min: np.ndarray,
                  _slots: list = slots) -> None:  # type: ignore[type-arg]
            ok = active & (st >= 0)
            sx, sy = _store_point(lay, st, rng)
            _slots.append((ok, st, dur_min * 60.0, np.full(m, -1), np.stack([sx, sy])))

        home_ap = users
        work_ap = m + work_cell
        leave = np.where(works, rng.normal(8.0, 0.4, m).clip(6.5, 9.5),
                         rng.normal(10.0, 1.0, m).clip(8.0, 12.0))
        anchor(np.ones(m, bool), leave, hx, hy, home_ap)
        store(works & (rng.random(m) < 0.25), pick(fav_work), rng.uniform(4, 12, m))
        anchor(works, rng.normal(12.0, 0.25, m), wx, wy, work_ap)
        store(~works & (rng.random(m) < 0.6), pick(fav_home), rng.lognormal(np.log(12), 0.5, m).clip(3, 60))
        anchor(~works, rng.normal(13.5, 0.5, m), hx, hy, home_ap)
        store(rng.random(m) < np.where(works, 0.65, 0.3), np.where(works, pick(fav_work), pick(fav_home)),
              rng.uniform(20, 45, m))
        anchor(works, rng.normal(17.25, 0.5, m), wx, wy, work_ap)
        anchor(~works, rng.normal(15.5, 0.7, m), hx, hy, home_ap)
        # Evening: a mall trip (2-4 units), or 0-2 stores near home.
        to_mall = (fav_mall >= 0) & (rng.random(m) < 0.3)
        n_units = rng.integers(2, 5, m)
        n_shops = rng.choice(3, m, p=[0.3, 0.4, 0.3])
        mf = np.maximum(fav_mall, 0)
        for k in range(4):
            if len(lay.mall_start):
                unit = lay.mall_start[mf] + (rng.random(m) * lay.mall_count[mf]).astype(np.int64)
            else:
                unit = np.full(m, -1)
            st = np.where(to_mall, unit, pick(fav_home))
            active = np.where(to_mall, k < n_units, k < n_shops)
            dur = np.where(to_mall, rng.uniform(5, 25, m), rng.lognormal(np.log(12), 0.5, m).clip(3, 40))
            store(active, st, dur)
        anchor(np.ones(m, bool), np.full(m, 24.0), hx, hy, home_ap)

        for active, st, target, ap, xy in slots:
            # Never the same store twice in a row: two stays back to back in one store are one
            # stay (and the truth would split what no engine could).
            active = active & ~((st >= 0) & (st == prev_store))
            x, y = xy
            dist = path_length(px, py, x, y)
            speed = np.where(dist < 1500.0, walk_v, ride_v)
            start = t + dist / speed
            is_anchor = st == ANCHOR
            end = np.where(is_anchor, np.maximum(target, start + 300.0), start + target)
            buy_p = np.where(is_anchor, 0.0, 0.45)
            buy = rng.random(m) < buy_p
            a = np.flatnonzero(active)
            recs.append((a, start[a], end[a], x[a], y[a], st[a], ap[a], buy[a]))
            t = np.where(active, end, t)
            px = np.where(active, x, px)
            py = np.where(active, y, py)
            prev_store = np.where(active, st, prev_store)

    cat = [np.concatenate(c) for c in zip(*recs, strict=True)]
    st_user, st_start, st_end, st_x, st_y, st_store, st_ap, st_buy = cat
    order = np.lexsort((st_start, st_user))
    st_user = st_user[order].astype(np.int64)
    st_start, st_end = st_start[order], st_end[order]
    st_x, st_y = st_x[order], st_y[order]
    st_store = st_store[order].astype(np.int64)
    st_ap = st_ap[order].astype(np.int64)
    st_buy = st_buy[order]

    pts = _checkouts(lay, rng, st_user, st_start, st_end, st_store, st_buy, t0, t_end)
    tags, opt_out = _profiles(m, rng)
    spoofer = np.zeros(m, bool)
    n_spoof = m // 1000
    if n_spoof:
        spoofer[rng.choice(m, n_spoof, replace=False)] = True
    return People(
        n=m, t0=t0, t_end=t_end, home_x=hx, home_y=hy, works=works, tag_mask=tags, opt_out=opt_out,
        gps_period=rng.uniform(20, 60, m), gps_phase=rng.uniform(0, 60, m),
        wifi_on=rng.random(m) < 0.85, wifi_period=rng.uniform(30, 90, m),
        wifi_phase=rng.uniform(0, 90, m),
        ble_on=rng.random(m) < 0.6, ble_period=rng.uniform(10, 30, m), ble_phase=rng.uniform(0, 30, m),
        spoofer=spoofer, spoof_from=t0 + 0.3 * hours * 3600, spoof_until=t0 + 0.6 * hours * 3600,
        st_user=st_user, st_start=st_start, st_end=st_end, st_x=st_x, st_y=st_y,
        st_store=st_store, st_ap=st_ap, st_buy=st_buy, **pts,
    )


def _checkouts(lay: Layout, rng: np.random.Generator, user: np.ndarray, start: np.ndarray,
               end: np.ndarray, store: np.ndarray, buy: np.ndarray, t0: float,
               t_end: float) -> dict[str, np.ndarray]:
    """An NFC tap at the counter (stores with a tag, 80% of payers) and a payment, shortly
    before leaving."""
    from simulator.emit import NFC, PAY

    idx = np.flatnonzero(buy & (store >= 0))
    s = store[idx]
    pay_ts = np.maximum(end[idx] - rng.uniform(20, 90, len(idx)), start[idx] + 5.0)
    tap = lay.has_nfc[s] & (rng.random(len(idx)) < 0.8)
    tap_ts = pay_ts - rng.uniform(2, 8, len(idx))
    tap_ts = np.maximum(tap_ts, start[idx] + 1.0)
    pay_ts = np.maximum(pay_ts, tap_ts + 0.5)
    amount = np.round(rng.lognormal(np.log(1500), 0.8, len(idx))).astype(np.int64) + 100
    kind = np.concatenate([np.full(int(tap.sum()), NFC), np.full(len(idx), PAY)])
    ts = np.concatenate([tap_ts[tap], pay_ts])
    users = np.concatenate([user[idx][tap], user[idx]])
    stores = np.concatenate([s[tap], s])
    amounts = np.concatenate([np.zeros(int(tap.sum()), np.int64), amount])
    stays = np.concatenate([idx[tap], idx])
    keep = (ts >= t0) & (ts < t_end)
    order = np.lexsort((kind[keep], users[keep], ts[keep]))
    return {
        "pt_kind": kind[keep][order].astype(np.int64),
        "pt_user": users[keep][order],
        "pt_ts": ts[keep][order],
        "pt_store": stores[keep][order],
        "pt_amount_cents": amounts[keep][order],
        "pt_stay": stays[keep][order],
    }


def _profiles(m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """0-3 tags each (as a bit mask over TAGS) and a 2% opt-out."""
    n_tags = rng.integers(0, 4, m)
    draws = rng.integers(0, len(TAGS), (m, 3))
    bits = np.where(np.arange(3)[None, :] < n_tags[:, None], np.left_shift(1, draws), 0)
    mask = np.bitwise_or.reduce(bits, axis=1).astype(np.int64)
    opt_out = rng.random(m) < 0.02
    return mask, opt_out


def tags_of(mask: int) -> list[str]:
    """The tags in a mask, sorted."""
    return sorted(t for j, t in enumerate(TAGS) if mask >> j & 1)


__all__ = ["ANCHOR", "BLOCK_M", "People", "build_people"]
