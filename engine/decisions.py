"""Offer decisions: which coupon, if any, to push on one visit trigger. Plain functions.

``decide`` walks the merchant's campaigns for the trigger in decision order (priority desc, coupon
value desc, id asc) and pushes the first one that the audience, schedule, caps and inventory all
allow. At most one push per (visit, trigger): the push_id is a hash of (user, campaign, visit,
trigger key), and a push_id the store has already seen means the decision was made before (a
replayed batch), so nothing more is decided for that trigger.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.campaigns import Campaign, CampaignSet, QuietHours
from engine.loop import in_holdout
from engine.outputs import Coupon, Holdout, Push
from engine.state import StateStore, UserState, Visit


def push_id_for(user: str, campaign_id: str, visit_id: str, trigger_key: str) -> str:
    raw = f"{user}\x1f{campaign_id}\x1f{visit_id}\x1f{trigger_key}".encode()
    return hashlib.sha1(raw).hexdigest()[:24]


@lru_cache(maxsize=1024)
def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")  # the catalog validates tz; a bad one falls back to UTC


_LOCAL: dict[tuple[str, int], tuple[int, int]] = {}


def local_time(ts: float, tz: str) -> tuple[int, int]:
    """(weekday 0=Monday, minute of the day) of instant ``ts`` in zone ``tz``.

    Cached per (zone, UTC minute): every zone's offset is a whole number of minutes, and
    decisions arrive roughly in time order, so most look-ups hit."""
    key = (tz, int(ts // 60.0))
    hit = _LOCAL.get(key)
    if hit is None:
        dt = datetime.fromtimestamp(ts, _zone(tz))
        hit = (dt.weekday(), dt.hour * 60 + dt.minute)
        if len(_LOCAL) >= 8192:
            _LOCAL.clear()
        _LOCAL[key] = hit
    return hit


def in_window(minute: int, start: int, end: int) -> bool:
    """Half-open [start, end) in minutes of the day; end < start wraps past midnight."""
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


_DAYS: dict[int, str] = {}


def utc_day(ts: float) -> str:
    """``YYYY-MM-DD`` of ``ts`` in UTC (cached per day number)."""
    n = int(ts // 86400.0)
    day = _DAYS.get(n)
    if day is None:
        day = _DAYS[n] = time.strftime("%Y-%m-%d", time.gmtime(n * 86400.0))
    return day


def audience_ok(c: Campaign, tags: Iterable[str], visit: Visit, st: UserState) -> bool:
    seg = c.segment
    if seg == "new" and visit.returning:
        return False
    if seg == "returning" and not visit.returning:
        return False
    if seg == "followers" and (st.follows is None or c.merchant_id not in st.follows):
        return False
    if c.tags_any or c.exclude_tags:
        tagset = tags if isinstance(tags, frozenset | set) else frozenset(tags)
        if c.tags_any and c.tags_any.isdisjoint(tagset):
            return False
        if c.exclude_tags and not c.exclude_tags.isdisjoint(tagset):
            return False
    return True


def schedule_ok(c: Campaign, ts: float, weekday: int, minute: int) -> bool:
    if c.valid_from is not None and ts < c.valid_from:
        return False
    if c.valid_until is not None and ts >= c.valid_until:
        return False
    if weekday not in c.days:
        return False
    return in_window(minute, c.start_min, c.end_min)


def caps_ok(c: Campaign, st: UserState, ts: float) -> bool:
    times = st.push_times.get(c.id) if st.push_times is not None else None
    if not times:
        return True
    if c.cooldown_s > 0.0 and ts - max(times) < c.cooldown_s:
        return False
    if c.per_user is not None and c.period_s is not None:
        recent = sum(1 for t in times if t > ts - c.period_s)
        if recent >= c.per_user:
            return False
    return True


def quiet(q: QuietHours | None, minute: int) -> bool:
    return q is not None and in_window(minute, q.start_min, q.end_min)


def record_push(c: Campaign, st: UserState, ts: float, day: str) -> None:
    """Remember the push for caps: per-campaign times (pruned) and the per-day count.
    Uncapped campaigns keep no times (nothing would ever read them)."""
    if not c.uncapped:
        keep = max(c.period_s or 0.0, c.cooldown_s)
        pt = st.push_times
        if pt is None:
            pt = st.push_times = {}
        times = [t for t in pt.get(c.id, ()) if t > ts - keep]
        times.append(ts)
        pt[c.id] = times
    dp = st.day_pushes
    if dp is None:
        dp = st.day_pushes = {}
    elif day not in dp:
        for old in [d for d in dp if d < day]:
            del dp[old]
    dp[day] = dp.get(day, 0) + 1


def decide(
    *,
    campaigns: CampaignSet,
    store: StateStore,
    st: UserState,
    tags: Iterable[str],
    opt_out: bool,
    visit: Visit,
    store_tz: str,
    trigger: str,
    dwell_s: int | None,
    ts: float,
    skipped: dict[str, int] | None = None,
    candidates: tuple[Campaign, ...] | None = None,
) -> Push | Holdout | None:
    """The push for this (visit, trigger), or None. Takes inventory and records caps on a push.
    A user in the winning campaign's holdout (``engine.loop.in_holdout``) gets a ``Holdout``
    instead: same push_id, no caps recorded, no inventory taken, no other campaign tried.
    ``candidates``: the merchant's campaigns for this trigger when the caller has looked them up."""
    key = f"dwell:{dwell_s}" if trigger == "dwell" else trigger
    cands = campaigns.lookup((visit.merchant_id, key)) if candidates is None else candidates
    if not cands:
        return None

    sk: dict[str, int] = {} if skipped is None else skipped
    if opt_out:
        sk["opt_out"] = sk.get("opt_out", 0) + 1
        return None
    weekday = minute = -1
    if campaigns.quiet_hours is not None:
        weekday, minute = local_time(ts, store_tz)
        if quiet(campaigns.quiet_hours, minute):
            sk["quiet_hours"] = sk.get("quiet_hours", 0) + 1
            return None
    day = utc_day(ts)
    limit = campaigns.max_pushes_per_user_per_day
    if limit is not None and st.day_pushes is not None and st.day_pushes.get(day, 0) >= limit:
        sk["daily_limit"] = sk.get("daily_limit", 0) + 1
        return None
    for c in cands:
        if c.stores is not None and visit.store_id not in c.stores:
            continue
        if not c.any_time:
            if minute < 0:
                weekday, minute = local_time(ts, store_tz)
            if not schedule_ok(c, ts, weekday, minute):
                sk["schedule"] = sk.get("schedule", 0) + 1
                continue
        if not c.anyone and not audience_ok(c, tags, visit, st):
            sk["audience"] = sk.get("audience", 0) + 1
            continue
        if not c.uncapped and not caps_ok(c, st, ts):
            sk["caps"] = sk.get("caps", 0) + 1
            continue
        pid = push_id_for(st.user, c.id, visit.visit_id, key)
        if store.seen_push(pid):
            sk["already_decided"] = sk.get("already_decided", 0) + 1
            return None
        if c.holdout_pct and in_holdout(st.user, c.id, c.holdout_pct):
            left = store.inventory_left(c.id, c.inventory)
            if left is not None and left <= 0:
                sk["inventory"] = sk.get("inventory", 0) + 1
                continue  # exhausted: no push either way, so not a holdout decision
            return Holdout(
                push_id=pid,
                user=st.user,
                campaign_id=c.id,
                store_id=visit.store_id,
                merchant_id=visit.merchant_id,
                visit_id=visit.visit_id,
                trigger=trigger,
                ts=ts,
            )
        if not store.take_coupon(c.id, c.inventory):
            sk["inventory"] = sk.get("inventory", 0) + 1
            continue
        record_push(c, st, ts, day)
        cp = c.coupon
        return Push(
            push_id=pid,
            user=st.user,
            campaign_id=c.id,
            store_id=visit.store_id,
            merchant_id=visit.merchant_id,
            visit_id=visit.visit_id,
            trigger=trigger,
            ts=ts,
            coupon=Coupon(cp.title, cp.value, cp.currency, cp.expires_in_s),
        )
    return None
