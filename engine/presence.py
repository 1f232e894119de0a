"""The presence state machine: plain functions over ``UserState`` / ``Visit``, in event time.

Nothing here does I/O or reads a clock; every function takes the event time it reasons about.
The rules (docs/architecture.md, "Presence", says why):

* **Placement.** Evidence that the user is in store S at time t: a GPS fix inside S's fence
  (signed distance <= 0) with accuracy <= ``S.max_accuracy_m``; a WiFi scan whose strongest
  registered AP (RSSI >= threshold) belongs to S; a beacon of S at RSSI >= threshold; an NFC tap
  on S's tag. Placement opens a visit (enter) or refreshes ``last_seen_ts``. GPS alone opens a
  visit only where it is unambiguous (engine.core ``_sole_store``: no other store's fence within
  the fix's accuracy; umbrella stores exempt); an ambiguous fix only refreshes visits already
  open, and WiFi/near-field claims decide between overlapping shops.
* **GPS exit.** A fix whose accuracy circle lies wholly outside S by ``exit_margin_m``
  (distance > acc + margin) exits S. Fixes in between change nothing (hysteresis).
* **Timeout.** A visit that nothing placed for more than ``presence_timeout_s`` exits at
  ``last_seen_ts + presence_timeout_s`` (the moment presence lapsed), checked on each of the
  user's events and by the core's watermark sweep.
* **Dwell.** Once per visit per dwell threshold, at ``enter_ts + dwell_s``, if the visit had not
  lapsed by then.
* **Claims (malls).** WiFi (rank 1), beacon (2) and NFC (3) sightings make a *claim*: "the user is
  in S", held for ``claim_window_s``. Taking a claim exits every other open visit (except in
  ``umbrella`` stores, e.g. the mall's own fence). While a claim is fresh, GPS neither opens visits
  in other stores nor exits the claimed store. A challenger takes the claim with a higher rank, or
  with the same rank and a signal stronger by ``switch_db`` (beacons use a smoothed RSSI), or
  once the claim has gone stale; NFC taps always take it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import NamedTuple

from engine.state import UserState, Visit

SIGNAL_RANK: dict[str, int] = {"gps": 0, "wifi": 1, "beacon": 2, "nfc": 3}
UMBRELLA_TAG = "umbrella"  # a store fence meant to contain others (a mall): never superseded

_EARTH_R = 6_371_008.8


class Transition(NamedTuple):
    """One visit event decided by the state machine (a NamedTuple: cheap to create)."""

    kind: str  # "enter" | "dwell" | "exit"
    visit: Visit  # the visit (for exit: the closed one, no longer in UserState.visits)
    ts: float
    cause: str  # enter/dwell: the signal; exit: "gps" | "timeout" | "superseded" | "removed"
    dwell_s: int | None = None


def visit_id_for(user: str, store_id: str, enter_ts: float, seq: int) -> str:
    """Stable id of a visit: sha1 over (user, store, enter time, the user's visit counter)."""
    raw = f"{user}\x1f{store_id}\x1f{enter_ts!r}\x1f{seq}".encode()
    return hashlib.sha1(raw).hexdigest()[:20]


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp * 0.5) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl * 0.5) ** 2
    return 2.0 * _EARTH_R * math.asin(min(1.0, math.sqrt(a)))


def implied_speed_kmh(last_fix: tuple[float, float, float], lon: float, lat: float, ts: float) -> float:
    """Speed implied by moving from the last accepted fix to this one (inf for a jump in zero time)."""
    lon0, lat0, ts0 = last_fix
    d = haversine_m(lon0, lat0, lon, lat)
    dt = ts - ts0
    if dt <= 0.0:
        return 0.0 if d < 1.0 else math.inf
    return d / dt * 3.6


def place(
    st: UserState,
    store_id: str,
    merchant_id: str,
    ts: float,
    signal: str,
    returning: bool,
) -> Transition | None:
    """Evidence placed the user in the store at ``ts``: refresh the open visit, or open one."""
    v = st.visits.get(store_id)
    if v is not None:
        if ts > v.last_seen_ts:
            v.last_seen_ts = ts
        if SIGNAL_RANK[signal] > SIGNAL_RANK[v.signal]:
            v.signal = signal
        return None
    st.visit_seq += 1
    v = Visit(
        visit_id=visit_id_for(st.user, store_id, ts, st.visit_seq),
        store_id=store_id,
        merchant_id=merchant_id,
        enter_ts=ts,
        last_seen_ts=ts,
        signal=signal,
        returning=returning,
    )
    st.visits[store_id] = v
    return Transition("enter", v, ts, signal)


def close(st: UserState, store_id: str, ts: float, cause: str) -> Transition | None:
    v = st.visits.pop(store_id, None)
    if v is None:
        return None
    return Transition("exit", v, ts, cause)


def advance(
    st: UserState,
    up_to: float,
    timeout_s: float,
    dwells: Callable[[str], tuple[int, ...]],
    out: list[Transition],
) -> None:
    """Fire dwells due and presence timeouts up to event time ``up_to`` (in time order per visit)."""
    if not st.visits:
        return
    for store_id in sorted(st.visits):
        v = st.visits[store_id]
        lapse = v.last_seen_ts + timeout_s
        horizon = up_to if up_to < lapse else lapse
        for d in dwells(v.merchant_id):
            due = v.enter_ts + d
            if due > horizon:
                break
            if d not in v.dwell_fired:
                v.dwell_fired.append(d)
                out.append(Transition("dwell", v, due, v.signal, d))
        if lapse < up_to:
            del st.visits[store_id]
            out.append(Transition("exit", v, lapse, "timeout"))


def next_due(v: Visit, timeout_s: float, dwells: tuple[int, ...]) -> float:
    """Earliest event time at which ``advance`` could change this visit."""
    lapse = v.last_seen_ts + timeout_s
    for d in dwells:
        if d not in v.dwell_fired:
            due = v.enter_ts + d
            return due if due < lapse else lapse
    return lapse


def claim_is_fresh(st: UserState, ts: float, window_s: float) -> bool:
    return bool(st.claim_store) and ts - st.claim_ts <= window_s


def smooth_rssi(st: UserState, store_id: str, rssi: float, ts: float, window_s: float, alpha: float) -> float:
    """Exponentially smoothed beacon RSSI of this store for this user (reset when stale)."""
    near = st.near
    if near is None:
        near = st.near = {}
    cur = near.get(store_id)
    val = rssi if cur is None or ts - cur[1] > window_s else alpha * rssi + (1.0 - alpha) * cur[0]
    near[store_id] = [val, ts]
    if len(near) > 8:  # forget stale stores so the record stays small
        for sid in [s for s, (_, t) in near.items() if ts - t > window_s]:
            del near[sid]
    return val


def try_claim(
    st: UserState,
    store_id: str,
    rank: int,
    strength: float,
    ts: float,
    window_s: float,
    switch_db: float,
) -> bool:
    """Offer a near-field/WiFi sighting as the user's claim; True when it holds the claim after."""
    holder = st.claim_store
    if not holder or ts - st.claim_ts > window_s or holder == store_id:
        take = True
    elif rank != st.claim_rank:
        take = rank > st.claim_rank
    else:
        take = rank == SIGNAL_RANK["nfc"] or strength > st.claim_rssi + switch_db
    if take:
        if holder == store_id and st.claim_rank > rank and ts - st.claim_ts <= window_s:
            # A weaker signal in the claimed store keeps the stronger claim alive, same rank.
            st.claim_ts = ts
            return True
        st.claim_store = store_id
        st.claim_rank = rank
        st.claim_ts = ts
        st.claim_rssi = strength
    elif holder == store_id:
        return True
    return take


def supersede(
    st: UserState,
    keep_store: str,
    ts: float,
    is_umbrella: Callable[[str], bool],
    out: list[Transition],
) -> None:
    """A claim for ``keep_store`` exits every other open visit but umbrella stores'."""
    if len(st.visits) <= (1 if keep_store in st.visits else 0):
        return
    for sid in sorted(st.visits):
        if sid != keep_store and not is_umbrella(sid):
            tr = close(st, sid, ts, "superseded")
            if tr is not None:
                out.append(tr)
