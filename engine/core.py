"""The core: events in, visit events and pushes out. Deterministic, event time, no I/O.

Both the daemon and ``geopush replay`` drive it the same way::

    outs = core.process(micro_batch)      # mutates user records through the StateStore
    store.commit(outs)                    # the caller commits, atomically, per micro-batch

``process`` handles the batch's events in order, then sweeps visits whose dwell or presence
timeout fell due by the watermark (minus ``sweep_lateness_s``), so users who go silent are still
exited. The watermark is the newest event time that ``watermark_quorum`` distinct users reached
within ``max_skew_s`` of each other, never one device's clock alone: a phone set to the year 2100
times out only its own visits (docs/architecture.md, "Clocks"). ``flush(now_ts)`` sweeps up to
``now_ts`` (end of a replay).
After a restart, or a batch attempt thrown away, ``restore(users, watermark=...)`` re-arms the
timers of the users' open visits: it is the public way in; the sweep queue (``_timers``,
``_open``) is private and may change.

Presence rules live in engine/presence.py, offer rules in engine/decisions.py; this module wires
them to the fence index, the campaigns, the profiles and the state store, and counts everything.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from engine import loop, presence
from engine.campaigns import CampaignSet
from engine.decisions import decide
from engine.events import Beacon, Event, Gps, Nfc, Payment, ProfileEvent, Redeem, Wifi
from engine.outputs import Holdout, Push, VisitEvent
from engine.presence import UMBRELLA_TAG, Transition
from engine.profiles import ProfileBook
from engine.state import Output, StateStore, UserState
from engine.timers import TimerQueue
from fences.catalog import Catalog
from fences.store import Store

_RANK_WIFI = presence.SIGNAL_RANK["wifi"]
_RANK_BEACON = presence.SIGNAL_RANK["beacon"]
_RANK_NFC = presence.SIGNAL_RANK["nfc"]
_NEG_INF = float("-inf")


class FenceIndexLike(Protocol):
    """What the core needs of ``fences.index.FenceIndex``."""

    @property
    def catalog(self) -> Catalog: ...

    def query(
        self, lon: float, lat: float, acc_m: float = 0.0, margin_m: float = 0.0
    ) -> list[tuple[int, float]]: ...

    def query_many(
        self, lons: Any, lats: Any, accs: Any = None, margin_m: float = 0.0
    ) -> tuple[Any, Any, Any]: ...

    def store(self, slot: int) -> Store: ...


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Presence tuning. The daemon maps its flags / GEOPUSH_* variables onto these fields."""

    exit_margin_m: float = 20.0  # GPS exit: distance > acc + exit_margin_m
    presence_timeout_s: float = 900.0  # exit when nothing placed the user for this long
    wifi_rssi_min: float = -75.0  # dBm: weaker APs are not presence
    beacon_rssi_min: float = -80.0  # dBm: weaker beacon sightings are not presence
    max_speed_kmh: float = 250.0  # faster implied movement = rejected fix, suspected spoofing
    claim_window_s: float = 60.0  # how long a WiFi/near-field claim outranks GPS and weaker signals
    switch_db: float = 3.0  # same-rank challenger must be this much stronger to take a claim
    rssi_alpha: float = 0.3  # beacon RSSI smoothing (weight of the newest sighting)
    sweep_lateness_s: float = 30.0  # sweep up to the watermark - this (cross-user disorder)
    # The watermark (how far the sweep may time out silent users) moves only to an event time
    # reached by ``watermark_quorum`` distinct users whose latest times lie within ``max_skew_s``
    # of each other: one device's clock (an hour ahead, the year 2100) moves nobody else's visits.
    watermark_quorum: int = 3
    max_skew_s: float = 300.0
    # Closing the loop (engine/loop.py): payments at a merchant within this long after its push
    # (or holdout decision) are attributed to it; the MAC key of coupon codes.
    attribution_window_s: float = loop.ATTRIBUTION_WINDOW_S
    coupon_secret: str = loop.DEFAULT_REPLAY_SECRET


@dataclass
class CoreStats:
    """Counters since the core started; ``to_dict`` is JSON-able (sorted keys at dump time)."""

    events_by_type: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    ignored_by_reason: dict[str, int] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=lambda: {"enter": 0, "dwell": 0, "exit": 0})
    exits_by_cause: dict[str, int] = field(default_factory=dict)
    visits_new: int = 0
    visits_returning: int = 0
    pushes: int = 0
    pushes_by_campaign: dict[str, int] = field(default_factory=dict)
    decisions_skipped: dict[str, int] = field(default_factory=dict)
    spoofing_suspected: int = 0
    payments: int = 0
    new_customer_payments: int = 0  # first payment of this user at this merchant
    held_out: int = 0  # decisions a campaign holdout kept back (not pushed)
    held_out_by_campaign: dict[str, int] = field(default_factory=dict)
    redemptions_by_status: dict[str, int] = field(default_factory=dict)
    attributed_orders: int = 0  # payments attributed to a push (not to a holdout)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        enters = self.visits["enter"]
        d["new_visit_rate"] = round(self.visits_new / enters, 6) if enters else None
        d["new_customer_rate"] = (
            round(self.new_customer_payments / self.payments, 6) if self.payments else None
        )
        return d


def _bump(d: dict[str, int], key: str) -> None:
    d[key] = d.get(key, 0) + 1


class Core:
    def __init__(
        self,
        index: FenceIndexLike,
        campaigns: CampaignSet,
        store: StateStore,
        config: CoreConfig = CoreConfig(),  # noqa: B008 - frozen, safe to share
        profiles: ProfileBook | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.profiles = profiles
        self.stats = CoreStats()
        self.timing = False  # when True, accumulate seconds spent in match and decisions
        self.time_match = 0.0
        self.time_decide = 0.0
        self._timers = TimerQueue()  # (due, user, store_id, visit_id) of open visits
        # Visit ids in the timer queue still open (the sweep skips stale entries), each with the user's
        # record when the store keeps records in memory for good (``store.in_memory``), so the
        # sweep does not look the user up again; None: ask the store (it tracks what it loads).
        self._open: dict[str, UserState | None] = {}
        self._watermark = _NEG_INF
        # The events the last ``process`` call rejected, with the reason (rare: the daemon
        # samples them to its dead-letter topic).
        self.rejected: list[tuple[str, Event]] = []
        # Users' latest accepted event times above the watermark: the candidates it may move to.
        self._ahead: dict[str, float] = {}
        self._removed: set[str] = set()
        self._trs: list[Transition] = []
        # Per-type handlers of the non-GPS location signals (payments and profiles are facts).
        self._signals: dict[type, Callable[[Any, UserState, list[Transition]], None]] = {
            Wifi: self._wifi,
            Beacon: self._beacon,
            Nfc: self._nfc,
        }
        # A store that holds every record in memory needs no loading hints, and its records can
        # be kept by reference; others load per batch and are asked again.
        self._keep_records = store.in_memory
        self._secret = loop.secret_bytes(config.coupon_secret)
        self.index = index
        self.campaigns = campaigns
        self._set_index(index)

    # --- configuration -------------------------------------------------------------------------

    def _set_index(self, index: FenceIndexLike) -> None:
        self.index = index
        self.catalog = index.catalog
        self._query_many = index.query_many
        # Slots come from the index's matches or the catalog's identifier maps, which hold live
        # stores only: a plain list index is enough (FenceIndex.store re-checks liveness).
        self._stores = index.catalog.stores

    def reload(self, *, index: FenceIndexLike | None = None, campaigns: CampaignSet | None = None) -> None:
        """Swap the fence index and/or the campaigns between batches.

        Open visits in stores the new index no longer holds are exited (cause ``removed``) at the
        user's next event time, or by the sweep at their presence timeout if the user is silent;
        no dwell fires for them after the reload. A store added back cancels that.
        """
        if index is not None:
            old = self.catalog
            new = index.catalog
            gone = {sid for sid, _ in old.owners() if not _holds(new, sid)}
            self._removed = {sid for sid in self._removed | gone if not _holds(new, sid)}
            self._set_index(index)
        if campaigns is not None:
            self.campaigns = campaigns

    def stores_removed(self, store_ids: Iterable[str]) -> None:
        """Tell the core that stores were removed from the live index in place (same catalog):
        their open visits are exited as after ``reload``."""
        self._removed.update(store_ids)

    # --- processing ----------------------------------------------------------------------------

    def process(self, events: Sequence[Event]) -> list[Output]:
        """Apply a micro-batch in order; return visit events and pushes (caller commits)."""
        outs: list[Output] = []
        if self.rejected:
            self.rejected = []
        if not events:
            self._sweep(self._watermark - self.config.sweep_lateness_s, outs)
            return outs
        store = self.store
        if not self._keep_records:
            store.users({ev.user for ev in events})
        ebt = self.stats.events_by_type
        for typ, n in Counter(map(type, events)).items():
            name = _TYPE_NAME[typ]
            ebt[name] = ebt.get(name, 0) + n
        hitmap = self._match(events)
        get_user = store.user
        trs = self._trs
        wm = self._watermark
        ahead = self._ahead
        cfg = self.config
        timeout = cfg.presence_timeout_s
        dwells = self.campaigns.dwells_of
        advance = presence.advance
        rejected = self.stats.rejected_by_reason
        signals = self._signals
        vmax = cfg.max_speed_kmh / 3.6  # m/s
        vlim = 0.9 * vmax  # the speed pre-check below
        m_per_deg = _M_PER_DEG
        no_hits = _NO_HITS
        k = -1  # position among the batch's GPS fixes (keys of hitmap)
        for ev in events:
            t = type(ev)
            st = get_user(ev.user)
            ts = ev.ts
            if t is Gps:
                # The common case (most fixes: a known user, no open visit, near no fence) costs
                # the checks and two stores, nothing more.
                k += 1
                if ts < st.last_ts:
                    rejected["out_of_order"] = rejected.get("out_of_order", 0) + 1
                    self.rejected.append(("out_of_order", ev))
                    continue
                lon = ev.lon  # type: ignore[union-attr]
                lat = ev.lat  # type: ignore[union-attr]
                lf = st.last_fix
                # (|dlat| + |dlon|) degrees bounds the distance from above: most fixes stop here
                if (
                    lf is not None
                    and (abs(lat - lf[1]) + abs(lon - lf[0])) * m_per_deg >= vlim * (ts - lf[2])
                    and _too_fast(lf, lon, lat, ts, vmax)
                ):
                    rejected["speed"] = rejected.get("speed", 0) + 1
                    self.stats.spoofing_suspected += 1
                    self.rejected.append(("speed", ev))
                    continue
                st.last_fix = (lon, lat, ts)
                st.last_ts = ts
                if ts > wm and ts > ahead.get(st.user, wm):
                    ahead[st.user] = ts
                hits = hitmap.get(k)
                if hits is None and not st.visits:
                    continue
                if st.visits:
                    if self._removed:
                        self._drop_removed(st, ts, trs)
                    advance(st, ts, timeout, dwells, trs)
                if hits is not None or st.visits:
                    self._gps(ev, st, hits or no_hits, trs)  # type: ignore[arg-type]
            else:
                handler = signals.get(t)
                if handler is None:  # a payment or a profile: facts, applied even when late
                    if st.visits and ts > st.last_ts:
                        # dwells and timeouts due before the fact first: a dwell push due a
                        # minute before a redemption at the till exists when the code is read
                        advance(st, ts, timeout, dwells, trs)
                        if trs:
                            self._emit(st, trs, outs)
                    self._fact(ev, st, outs)
                    if ts <= st.last_ts:
                        continue
                elif ts < st.last_ts:
                    rejected["out_of_order"] = rejected.get("out_of_order", 0) + 1
                    self.rejected.append(("out_of_order", ev))
                    continue
                st.last_ts = ts
                if ts > wm and ts > ahead.get(st.user, wm):
                    ahead[st.user] = ts
                if st.visits:
                    if self._removed:
                        self._drop_removed(st, ts, trs)
                    advance(st, ts, timeout, dwells, trs)
                if handler is not None:
                    handler(ev, st, trs)
            if trs:
                self._emit(st, trs, outs)
        self._advance_watermark()
        self._sweep(self._watermark - cfg.sweep_lateness_s, outs)
        return outs

    def _advance_watermark(self) -> None:
        """Move the watermark to the newest event time that ``watermark_quorum`` distinct users
        reached together: the lowest of the newest group of that many users' latest times lying
        within ``max_skew_s`` of each other. A device whose clock runs ahead stands alone up
        there (or with other wrong clocks, each wrong its own way) and moves nothing; while
        fewer users than the quorum are active, the watermark waits (their own events still
        time out their own visits; the daemon's --idle-flush uses the wall clock)."""
        ahead = self._ahead
        k = max(1, int(self.config.watermark_quorum))
        if len(ahead) < k:
            return
        skew = self.config.max_skew_s
        times = heapq.nlargest(k, ahead.values())  # the common case: the newest k agree
        if times[0] - times[-1] > skew:
            times = sorted(ahead.values(), reverse=True)
        for i in range(len(times) - k + 1):
            low = times[i + k - 1]
            if times[i] - low <= skew:
                if low > self._watermark:  # (flush may have moved it further already)
                    self._watermark = low
                wm = self._watermark
                self._ahead = {u: t for u, t in ahead.items() if t > wm}
                return

    def _match(self, events: Sequence[Event]) -> dict[int, list[tuple[int, float]]]:
        """Match the batch's GPS fixes in one vectorised FenceIndex.query_many call.

        Returns {k: [(slot, signed distance), ...]} for the k-th fix of the batch, nearest first,
        only for fixes near some fence (most have none). Every fix is matched, including ones
        the speed check will reject: matching is pure and batching it is ~5x cheaper per fix."""
        fixes = [ev for ev in events if type(ev) is Gps]
        if not fixes:
            return {}
        t0 = time.perf_counter() if self.timing else 0.0
        lons = np.fromiter([f.lon for f in fixes], np.float64, len(fixes))
        lats = np.fromiter([f.lat for f in fixes], np.float64, len(fixes))
        accs = np.fromiter([f.acc for f in fixes], np.float64, len(fixes))
        fix_i, slot, dist = self._query_many(lons, lats, accs, self.config.exit_margin_m)
        hitmap: dict[int, list[tuple[int, float]]] = {}
        for i, sl, d in zip(fix_i.tolist(), slot.tolist(), dist.tolist(), strict=True):
            lst = hitmap.get(i)
            if lst is None:
                hitmap[i] = [(sl, d)]
            else:
                lst.append((sl, d))
        if self.timing:
            self.time_match += time.perf_counter() - t0
        return hitmap

    def restore(self, users: Iterable[UserState], *, watermark: float | None = None) -> None:
        """After a restart (or a failed batch attempt): queue the dwell/timeout timers of the open
        visits of ``users`` for the sweep, and raise the watermark to ``watermark`` if given.
        Re-queuing a visit already queued is harmless (the sweep checks each entry)."""
        timeout = self.config.presence_timeout_s
        dwells = self.campaigns.dwells_of
        for st in users:
            for sid, v in st.visits.items():
                due = presence.next_due(v, timeout, dwells(v.merchant_id))
                self._timers.push((due, st.user, sid, v.visit_id))
                self._open[v.visit_id] = None
        if watermark is not None and watermark > self._watermark:
            self._watermark = watermark

    @property
    def watermark(self) -> float:
        """The event time the sweep has reached (see ``_advance_watermark``; -inf before the
        first quorum of users)."""
        return self._watermark

    def flush(self, now_ts: float) -> list[Output]:
        """Fire every dwell and timeout due by event time ``now_ts`` (e.g. at the end of a trace)."""
        outs: list[Output] = []
        if now_ts > self._watermark:
            self._watermark = now_ts
        self._sweep(now_ts, outs)
        return outs

    # --- facts: payments and profiles ----------------------------------------------------------

    def _fact(self, ev: Event, st: UserState, outs: list[Output]) -> None:
        if isinstance(ev, Payment):
            m = ev.merchant_id
            payments = st.payments
            if payments is None:
                payments = st.payments = {}
            n = payments.get(m, 0)
            payments[m] = n + 1
            self.stats.payments += 1
            if n == 0:
                self.stats.new_customer_payments += 1
            new_follower = st.follows is None or m not in st.follows
            if st.follows is None:
                st.follows = [m]  # pay and follow
            elif m not in st.follows:
                st.follows.append(m)
            if st.offers is not None or ev.code is not None:
                self._attribute(ev, st, n == 0, new_follower, outs)
        elif isinstance(ev, Redeem):
            r = loop.redeem(st, ev.merchant_id, ev.code, ev.ts, ev.request_id)
            _bump(self.stats.redemptions_by_status, r.status)
            outs.append(r)
        elif isinstance(ev, ProfileEvent) and ev.ts >= st.profile_ts:
            st.profile_ts = ev.ts
            st.tags = sorted(set(ev.tags))
            st.opt_out = ev.opt_out

    def _attribute(
        self, ev: Payment, st: UserState, new_customer: bool, new_follower: bool, outs: list[Output]
    ) -> None:
        code = None
        if ev.code is not None:  # the till took a code with the payment: redeem it first
            r = loop.redeem(st, ev.merchant_id, ev.code, ev.ts, f"pay:{ev.code}@{ev.ts!r}")
            _bump(self.stats.redemptions_by_status, r.status)
            outs.append(r)
            code = r.code
        order = loop.attribute(
            st, ev.merchant_id, ev.ts, ev.amount, code, self.config.attribution_window_s,
            new_customer, new_follower,
        )  # fmt: skip
        if order is not None:
            outs.append(order)
            if not order.held_out:
                self.stats.attributed_orders += 1

    def _profile(self, st: UserState) -> tuple[frozenset[str] | Sequence[str], bool]:
        if st.profile_ts == _NEG_INF and self.profiles is not None:
            p = self.profiles.get(st.user)
            if p is not None:
                return p.tags, p.opt_out
        return st.tags or (), st.opt_out

    # --- location signals ----------------------------------------------------------------------

    def _gps(
        self, ev: Gps, st: UserState, hits: Sequence[tuple[int, float]], trs: list[Transition]
    ) -> None:
        cfg = self.config
        acc = ev.acc
        visits = st.visits
        ts = ev.ts
        fresh = presence.claim_is_fresh(st, ts, cfg.claim_window_s)
        if visits:
            near = {slot: d for slot, d in hits}
            limit = acc + cfg.exit_margin_m
            slot_of = self.catalog.slot_of
            for sid in sorted(visits):
                if fresh and sid == st.claim_store:
                    continue  # near-field/WiFi beats GPS while the claim is fresh
                slot = slot_of(sid)
                d = near.get(slot) if slot is not None else None
                if d is None or d > limit:
                    tr = presence.close(st, sid, ts, "gps")
                    if tr is not None:
                        trs.append(tr)
        stores = self._stores
        sole = -1 if fresh else _sole_store(stores, self.catalog.tagged, hits, acc)
        for slot, d in hits:
            if d > 0.0:
                continue
            s = stores[slot]
            if acc > s.max_accuracy_m:
                continue
            sid = s.store_id
            if UMBRELLA_TAG in s.tags:
                pass  # a mall's own outline: GPS alone may place the user in it
            elif fresh:
                if sid != st.claim_store:
                    _bump(self.stats.ignored_by_reason, "gps_outvoted")
                    continue
            elif slot != sole and sid not in visits:
                # Another store's fence lies within the fix's accuracy: GPS cannot tell which
                # one the user is in (a mall); WiFi or near-field evidence will.
                ign = self.stats.ignored_by_reason
                ign["gps_ambiguous"] = ign.get("gps_ambiguous", 0) + 1
                continue
            tr = presence.place(st, sid, s.merchant_id, ts, "gps", _returning(st, s))
            if tr is not None:
                trs.append(tr)

    def _wifi(self, ev: Wifi, st: UserState, trs: list[Transition]) -> None:
        floor = self.config.wifi_rssi_min
        best_slot: int | None = None
        best = _NEG_INF
        by_bssid = self.catalog.by_bssid
        for ap in ev.aps:
            r = ap.rssi
            if r >= floor and r > best:
                slot = by_bssid(ap.bssid)
                if slot is not None:
                    best_slot, best = slot, r
        if best_slot is None:
            ign = self.stats.ignored_by_reason
            ign["wifi_no_store"] = ign.get("wifi_no_store", 0) + 1
            return
        self._sighting(st, self._stores[best_slot], _RANK_WIFI, best, ev.ts, "wifi", trs)

    def _beacon(self, ev: Beacon, st: UserState, trs: list[Transition]) -> None:
        cfg = self.config
        if ev.rssi < cfg.beacon_rssi_min:
            _bump(self.stats.ignored_by_reason, "weak_signal")
            return
        slot = self.catalog.by_beacon(ev.uuid, ev.major, ev.minor)
        if slot is None:
            _bump(self.stats.ignored_by_reason, "unknown_beacon")
            return
        s = self._stores[slot]
        strength = presence.smooth_rssi(
            st, s.store_id, ev.rssi, ev.ts, cfg.claim_window_s, cfg.rssi_alpha
        )
        self._sighting(st, s, _RANK_BEACON, strength, ev.ts, "beacon", trs)

    def _nfc(self, ev: Nfc, st: UserState, trs: list[Transition]) -> None:
        slot = self.catalog.by_nfc(ev.tag)
        if slot is None:
            _bump(self.stats.ignored_by_reason, "unknown_nfc")
            return
        self._sighting(st, self._stores[slot], _RANK_NFC, 0.0, ev.ts, "nfc", trs)

    def _sighting(
        self,
        st: UserState,
        s: Store,
        rank: int,
        strength: float,
        ts: float,
        signal: str,
        trs: list[Transition],
    ) -> None:
        cfg = self.config
        if not presence.try_claim(st, s.store_id, rank, strength, ts, cfg.claim_window_s, cfg.switch_db):
            _bump(self.stats.ignored_by_reason, f"{signal}_outvoted")
            return
        if UMBRELLA_TAG not in s.tags:
            presence.supersede(st, s.store_id, ts, self._is_umbrella, trs)
        tr = presence.place(st, s.store_id, s.merchant_id, ts, signal, _returning(st, s))
        if tr is not None:
            trs.append(tr)

    def _is_umbrella(self, store_id: str) -> bool:
        if not _holds(self.catalog, store_id):
            return False
        return UMBRELLA_TAG in self.catalog.get(store_id).tags

    # --- outputs and decisions -----------------------------------------------------------------

    def _emit(self, st: UserState, trs: list[Transition], outs: list[Output]) -> None:
        stats = self.stats
        for tr in trs:
            v = tr.visit
            kind = tr.kind
            stats.visits[kind] += 1
            outs.append(
                VisitEvent(
                    visit_id=v.visit_id,
                    user=st.user,
                    store_id=v.store_id,
                    merchant_id=v.merchant_id,
                    event=kind,  # type: ignore[arg-type]
                    ts=tr.ts,
                    signal=v.signal,
                    dwell_s=tr.dwell_s,
                    returning=v.returning,
                )
            )
            if kind == "enter":
                if v.returning:
                    stats.visits_returning += 1
                else:
                    stats.visits_new += 1
                due = presence.next_due(
                    v, self.config.presence_timeout_s, self.campaigns.dwells_of(v.merchant_id)
                )
                self._timers.push((due, st.user, v.store_id, v.visit_id))
                self._open[v.visit_id] = st if self._keep_records else None
            elif kind == "exit":
                self._open.pop(v.visit_id, None)
                _bump(stats.exits_by_cause, tr.cause)
            if tr.cause == "removed":
                continue  # the store is gone: no offer
            push = self._decide(st, tr)
            if push is not None:
                self._offer(st, push)
                outs.append(push)
                if type(push) is Holdout:
                    stats.held_out += 1
                    _bump(stats.held_out_by_campaign, push.campaign_id)
                else:
                    stats.pushes += 1
                    _bump(stats.pushes_by_campaign, push.campaign_id)
        trs.clear()

    def _offer(self, st: UserState, out: Push | Holdout) -> None:
        """Give a push its coupon code and remember it (or a holdout decision) for redemption
        and attribution (engine/loop.py)."""
        expires = 0.0  # a holdout decision has no coupon to redeem
        if type(out) is Push:
            out.code = loop.coupon_code(self._secret, out.push_id)
            expires = float(out.coupon.expires_in_s)
        loop.record_offer(st, out, expires, self.config.attribution_window_s)

    def _decide(self, st: UserState, tr: Transition) -> Any:
        v = tr.visit
        cands = self.campaigns.lookup((v.merchant_id, _key(tr)))
        if not cands:
            return None
        t0 = time.perf_counter() if self.timing else 0.0
        tags, opt_out = self._profile(st)
        slot = self.catalog.slot_of(v.store_id)
        tz = self.catalog.stores[slot].tz if slot is not None else "UTC"
        push = decide(
            campaigns=self.campaigns,
            store=self.store,
            st=st,
            tags=tags,
            opt_out=opt_out,
            visit=v,
            store_tz=tz,
            trigger=tr.kind,
            dwell_s=tr.dwell_s,
            ts=tr.ts,
            skipped=self.stats.decisions_skipped,
            candidates=cands,
        )
        if self.timing:
            self.time_decide += time.perf_counter() - t0
        return push

    # --- sweeping silent users -----------------------------------------------------------------

    def _drop_removed(self, st: UserState, ts: float, trs: list[Transition]) -> None:
        for sid in sorted(st.visits):
            if sid in self._removed and not _holds(self.catalog, sid):
                tr = presence.close(st, sid, ts, "removed")
                if tr is not None:
                    trs.append(tr)

    def _sweep(self, up_to: float, outs: list[Output]) -> None:
        timers = self._timers
        if not timers:
            return
        push = timers.push
        timeout = self.config.presence_timeout_s
        dwells = self.campaigns.dwells_of
        trs = self._trs
        is_open = self._open
        # Every timer re-queued below is due at or after ``up_to`` (advance fired all before),
        # so taking the due ones in one go sees the same entries, in the same order, as popping
        # them one by one.
        for entry in timers.pop_due(up_to):
            _, user, sid, vid = entry
            if vid not in is_open:
                continue  # exited meanwhile: no need to load the user
            st = is_open[vid] or self.store.user(user)
            v = st.visits.get(sid)
            if v is None or v.visit_id != vid:
                continue  # closed meanwhile
            if sid in self._removed and not _holds(self.catalog, sid):
                lapse = v.last_seen_ts + timeout
                if lapse >= up_to:
                    push((lapse, user, sid, vid))
                    continue
                tr = presence.close(st, sid, lapse, "removed")
                if tr is not None:
                    trs.append(tr)
            else:
                due = presence.next_due(v, timeout, dwells(v.merchant_id))
                if due >= up_to:  # refreshed since it was queued: not due yet
                    push((due, user, sid, vid))
                    continue
                presence.advance(st, up_to, timeout, dwells, trs)
            if trs:
                newest = max(tr.ts for tr in trs)
                if newest > st.last_ts:
                    st.last_ts = newest  # the sweep has "processed" this user up to there
                self._emit(st, trs, outs)
            v2 = st.visits.get(sid)
            if v2 is not None and v2.visit_id == vid:
                push((presence.next_due(v2, timeout, dwells(v2.merchant_id)), user, sid, vid))


_NO_HITS: tuple[tuple[int, float], ...] = ()


def _sole_store(
    stores: Sequence[Store], tagged: set[int], hits: Sequence[tuple[int, float]], acc: float
) -> int:
    """The slot of the one non-umbrella store a GPS fix can open by itself, else -1.

    A fix places the user somewhere within about ``acc`` metres of it. It is unambiguous for
    store S when it lies inside S and no other store's fence comes within ``acc`` of it (signed
    distance <= acc): then S is the only store the user can be in. Umbrella stores (a mall's
    outline) contain others by design and do not count. ``hits`` holds every store within
    acc + exit margin, so every rival is in it."""
    sole = -1
    for slot, d in hits:
        if d > acc:
            continue
        if slot in tagged and UMBRELLA_TAG in stores[slot].tags:
            continue
        if sole != -1 or d > 0.0:
            return -1  # a second store within reach, or a near one that does not hold the fix
        sole = slot
    return sole


_M_PER_DEG = 111_195.0


def _too_fast(last: tuple[float, float, float], lon: float, lat: float, ts: float, vmax: float) -> bool:
    """Would moving from the last accepted fix to this one exceed ``vmax`` m/s?

    A flat-earth estimate settles the clear cases without trigonometry per fix; within 10% of
    the limit (or across the antimeridian, or near a pole) the haversine distance decides."""
    lon0, lat0, ts0 = last
    dt = ts - ts0
    dlat = (lat - lat0) * _M_PER_DEG
    dlon = lon - lon0
    if -180.0 < dlon < 180.0 and -80.0 < lat < 80.0:
        dx = dlon * _M_PER_DEG * _cos_deg(0.5 * (lat + lat0))
        d2 = dx * dx + dlat * dlat
        lim = vmax * dt if dt > 0.0 else 1.0  # same-instant fixes may differ by a metre
        lim2 = lim * lim
        if d2 < 0.81 * lim2:
            return False
        if d2 > 1.21 * lim2:
            return True
    return presence.implied_speed_kmh(last, lon, lat, ts) > vmax * 3.6


def _cos_deg(x: float) -> float:
    return math.cos(x * 0.017453292519943295)


def _key(tr: Transition) -> str:
    return f"dwell:{tr.dwell_s}" if tr.kind == "dwell" else tr.kind


def _returning(st: UserState, s: Store) -> bool:
    p = st.payments
    return p is not None and p.get(s.merchant_id, 0) > 0


def _holds(cat: Catalog, store_id: str) -> bool:
    return cat.slot_of(store_id) is not None


_TYPE_NAME: dict[type, str] = {
    Gps: "gps",
    Wifi: "wifi",
    Beacon: "beacon",
    Nfc: "nfc",
    Payment: "payment",
    ProfileEvent: "profile",
    Redeem: "redeem",
}
