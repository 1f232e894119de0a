"""``geopush report``: what the pushes did, per merchant and campaign. A pure function over outputs.

``build_report(outputs)`` takes the core's outputs (visit events, pushes, holdout decisions,
redemption answers, attributed orders; engine/outputs.py) in any order, duplicates allowed (they
are merged by ``out_id``), and returns plain JSON-able data; nothing here reads a clock or a file,
so the API can call it on whatever it loaded. ``load_outputs(source)`` reads a replay's output
folder or a daemon's SQLite state file (its outbox, which keeps the newest ``prune_sent`` rows);
``format_table`` and ``render_png`` present a report.

Figures (docs/architecture.md, "Closing the loop"):

* visits: ``enter`` events, new or returning (paid at the merchant before the visit began);
* pushes, held out (decisions a holdout kept back), redemptions (pushes whose code was redeemed);
* orders and revenue: payments attributed to a push; new customers / new followers: those
  orders that were the user's first payment at the merchant / made the user a follower;
* lift: pushed versus held-out users, see ``lift``. A user converted when they paid at the
  merchant (any attributed order there, whichever offer got it) within ``window_s`` (the engine's
  attribution window) after their first decision of the campaign, push or holdout: both arms are
  measured from the same moment over the same span (docs/campaigns.md, "Lift").
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from engine.errors import DecodeError, ReportError
from engine.loop import ATTRIBUTION_WINDOW_S
from engine.outputs import AnyOutput, Holdout, Order, Push, RedeemResult, VisitEvent, decode_output

Z95: Final = 1.959963984540054
MIN_ARM_USERS: Final = 30  # users in each arm (pushed, held out) before a lift is estimated
MIN_CONVERSIONS: Final = 5  # converted users, both arms together
NOT_ENOUGH: Final = "not enough data"
REPLAY_FILES: Final = (
    "visits.jsonl",
    "pushes.jsonl",
    "holdouts.jsonl",
    "redemptions.jsonl",
    "orders.jsonl",
)


# --- statistics -----------------------------------------------------------------------------------


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion x/n (n > 0)."""
    p = x / n
    z2 = z * z
    den = 1.0 + z2 / n
    mid = (p + z2 / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def newcombe(x1: int, n1: int, x0: int, n0: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) of p1 - p0, from the two Wilson
    intervals. Good coverage at small counts and rates near 0, where the Wald interval
    collapses."""
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson(x1, n1, z)
    l0, u0 = wilson(x0, n0, z)
    d = p1 - p0
    return d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def _r(x: float) -> float:
    return round(x, 6)


def lift(
    n1: int,
    x1: int,
    n0: int,
    x0: int,
    orders1: int = 0,
    orders0: int = 0,
    revenue1: float = 0.0,
    revenue0: float = 0.0,
    *,
    min_users: int = MIN_ARM_USERS,
    min_conversions: int = MIN_CONVERSIONS,
) -> dict[str, Any]:
    """Lift of pushed (n1 users, x1 converted) over held-out users (n0, x0).

    ``status`` is ``"ok"`` or ``"not enough data"`` (fewer than ``min_users`` in an arm, or fewer
    than ``min_conversions`` converted users in all): then no estimate is given, only counts.
    Absolute lift p1 - p0 with Newcombe's hybrid score 95% interval; relative lift p1 / p0 - 1
    with the Katz log risk-ratio interval (None when an arm has no conversion); incremental
    orders and revenue: (per pushed user - per held-out user) x pushed users."""
    out: dict[str, Any] = {
        "pushed_users": n1,
        "pushed_converted": x1,
        "holdout_users": n0,
        "holdout_converted": x0,
    }
    if n1 < min_users or n0 < min_users or x1 + x0 < min_conversions:
        out["status"] = NOT_ENOUGH
        out["why"] = (
            f"needs >= {min_users} users in each arm and >= {min_conversions} conversions in all"
        )
        return out
    p1, p0 = x1 / n1, x0 / n0
    lo, hi = newcombe(x1, n1, x0, n0)
    rel = rel_ci = None
    if x1 > 0 and x0 > 0:
        rr = p1 / p0
        se = math.sqrt(1 / x1 - 1 / n1 + 1 / x0 - 1 / n0)
        rel = _r(rr - 1)
        rel_ci = [_r(rr * math.exp(-Z95 * se) - 1), _r(rr * math.exp(Z95 * se) - 1)]
    out.update(
        status="ok",
        pushed_rate=_r(p1),
        holdout_rate=_r(p0),
        abs_lift=_r(p1 - p0),
        abs_lift_ci95=[_r(lo), _r(hi)],
        rel_lift=rel,
        rel_lift_ci95=rel_ci,
        incremental_orders=_r((orders1 / n1 - orders0 / n0) * n1),
        incremental_revenue=_r((revenue1 / n1 - revenue0 / n0) * n1),
    )
    return out


# --- the report ---------------------------------------------------------------------------------


@dataclass
class _Unit:
    """Counts of one merchant or one campaign."""

    visits_new: int = 0
    visits_returning: int = 0
    pushes: int = 0
    delivered: int | None = 0  # None: the source does not know (a replay)
    held_out: int = 0
    redeemed: set[str] = field(default_factory=set)  # push ids
    orders: int = 0
    revenue: float = 0.0
    new_customers: int = 0
    new_followers: int = 0
    pushed_users: set[str] = field(default_factory=set)
    holdout_users: set[str] = field(default_factory=set)
    # user -> merchant -> time of the user's first decision (push or holdout) of this unit there:
    # where the user's lift window starts, in either arm
    first: dict[str, dict[str, float]] = field(default_factory=dict)

    def decided(self, user: str, merchant_id: str, ts: float) -> None:
        at = self.first.setdefault(user, {})
        if ts < at.get(merchant_id, math.inf):
            at[merchant_id] = ts

    def figures(
        self,
        with_visits: bool,
        orders: dict[str, list[tuple[str, float, float]]],
        window_s: float,
        min_users: int,
        min_conversions: int,
    ) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if with_visits:
            d["visits"] = {"new": self.visits_new, "returning": self.visits_returning}
        d.update(
            pushes=self.pushes,
            delivered=self.delivered,
            held_out=self.held_out,
            redemptions=len(self.redeemed),
            orders=self.orders,
            revenue=_r(self.revenue),
            new_customers=self.new_customers,
            new_followers=self.new_followers,
        )
        pushed = self.pushed_users
        held = self.holdout_users - pushed  # a user pushed by any campaign counts as pushed
        arms = []
        for users in (pushed, held):
            n_orders = 0
            revenue = 0.0
            converted = 0
            for u in users:
                starts = self.first[u]
                got = [
                    (m, ts, amount)
                    for m, ts, amount in orders.get(u, ())
                    if m in starts and starts[m] <= ts <= starts[m] + window_s
                ]
                if got:
                    converted += 1
                    n_orders += len(got)
                    revenue += sum(g[2] for g in got)
            arms.append((len(users), converted, n_orders, revenue))
        (n1, x1, o1, r1), (n0, x0, o0, r0) = arms
        d["lift"] = lift(
            n1, x1, n0, x0, o1, o0, r1, r0, min_users=min_users, min_conversions=min_conversions
        )
        return d


def build_report(
    outputs: Iterable[AnyOutput],
    *,
    delivered: Collection[str] | None = None,
    min_users: int = MIN_ARM_USERS,
    min_conversions: int = MIN_CONVERSIONS,
    window_s: float = ATTRIBUTION_WINDOW_S,
) -> dict[str, Any]:
    """The report over ``outputs``: ``{"merchants": [{"merchant_id", figures..., "campaigns":
    [{"campaign_id", figures...}]}], "total": {figures...}}``, sorted by id. Pure and
    deterministic (the same outputs in any order give the same report). ``delivered``: the
    out_ids the broker acknowledged (``load_delivered``); None: unknown, figure ``null``.
    ``window_s``: the lift window, which must be the engine's attribution window (a user
    converted when they paid at the merchant within it after their first decision)."""
    seen: set[str] = set()
    orders: dict[str, list[tuple[str, float, float]]] = {}  # user -> (merchant, ts, amount)
    merchants: dict[str, _Unit] = {}
    campaigns: dict[tuple[str, str], _Unit] = {}
    known = delivered is not None
    total = _Unit(delivered=0 if known else None)

    def units(m: str, c: str | None) -> list[_Unit]:
        us = [total, merchants.setdefault(m, _Unit(delivered=0 if known else None))]
        if c is not None:
            us.append(campaigns.setdefault((m, c), _Unit(delivered=0 if known else None)))
        return us

    for o in outputs:
        oid = o.out_id
        if oid in seen:
            continue
        seen.add(oid)
        t = type(o)
        if t is VisitEvent:
            if o.event == "enter":  # type: ignore[union-attr]
                for u in units(o.merchant_id, None):
                    if o.returning:  # type: ignore[union-attr]
                        u.visits_returning += 1
                    else:
                        u.visits_new += 1
        elif t is Push or t is Holdout:
            for u in units(o.merchant_id, o.campaign_id):  # type: ignore[union-attr]
                u.decided(o.user, o.merchant_id, o.ts)
                if t is Push:
                    u.pushes += 1
                    u.pushed_users.add(o.user)
                    if delivered is not None and oid in delivered:
                        u.delivered += 1  # type: ignore[operator]
                else:
                    u.held_out += 1
                    u.holdout_users.add(o.user)
        elif t is RedeemResult:
            r: RedeemResult = o  # type: ignore[assignment]
            if r.status == "ok" and r.push_ref is not None and r.campaign_id is not None:
                for u in units(r.merchant_id, r.campaign_id):
                    u.redeemed.add(r.push_ref)
        elif t is Order:
            od: Order = o  # type: ignore[assignment]
            orders.setdefault(od.user, []).append((od.merchant_id, od.ts, od.amount))
            for u in units(od.merchant_id, od.campaign_id):
                if not od.held_out:
                    u.orders += 1
                    u.revenue += od.amount
                    u.new_customers += od.new_customer
                    u.new_followers += od.new_follower
    kw: dict[str, Any] = {
        "orders": orders,
        "window_s": window_s,
        "min_users": min_users,
        "min_conversions": min_conversions,
    }
    rows = []
    for m in sorted(merchants):
        row = {"merchant_id": m, **merchants[m].figures(True, **kw)}
        row["campaigns"] = [
            {"campaign_id": c, **campaigns[(mm, c)].figures(False, **kw)}
            for mm, c in sorted(campaigns)
            if mm == m
        ]
        rows.append(row)
    return {
        "merchants": rows,
        "total": total.figures(True, **kw),
        "lift_method": (
            "difference of conversion proportions, pushed vs held-out users (converted: paid at "
            "the merchant within the window after the user's first decision); Newcombe hybrid "
            "score 95% interval (absolute), Katz log risk ratio (relative)"
        ),
        "lift_window_s": window_s,
        "min_users_per_arm": min_users,
        "min_conversions": min_conversions,
    }


# --- sources ------------------------------------------------------------------------------------


def load_outputs(source: str | Path) -> list[AnyOutput]:
    """The outputs of a replay folder (``geopush replay --out DIR``) or of a daemon's SQLite
    state file (its outbox). Lines/rows that are not outputs (dead letters) are skipped."""
    p = Path(source)
    if p.is_dir():
        found = [p / n for n in REPLAY_FILES if (p / n).is_file()]
        if not found:
            raise ReportError(
                f"{p}: no replay outputs here (expected {', '.join(REPLAY_FILES)}); "
                "run `geopush replay --out DIR` first or give the daemon's state file"
            )
        out: list[AnyOutput] = []
        for f in found:
            with open(f, "rb") as fh:
                for no, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            out.append(decode_output(line))
                        except DecodeError as exc:
                            raise ReportError(f"{f}:{no}: not a geopush output ({exc})") from exc
        return out
    if p.is_file():
        return _load_sqlite(p)
    raise ReportError(f"{p}: no such folder or file; give a replay output folder or a state file")


def load_delivered(source: str | Path) -> set[str] | None:
    """The out_ids a daemon's broker acknowledged (outbox rows marked sent), or None for a
    replay folder (no broker: delivery unknown)."""
    p = Path(source)
    if p.is_dir():
        return None
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            return {str(r[0]) for r in con.execute("SELECT out_id FROM outbox WHERE sent = 1")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ReportError(f"{p}: not a geopush state file ({exc})") from exc


def push_records(
    outputs: Iterable[AnyOutput], delivered: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """One record per push, by (ts, push_id): delivered (None: unknown), when its code was
    redeemed, its first attributed order and that order's value (None: none yet)."""
    pushes: dict[str, Push] = {}
    redeemed: dict[str, float] = {}
    first: dict[str, tuple[float, float]] = {}
    for o in outputs:
        t = type(o)
        if t is Push:
            pushes[o.push_id] = o  # type: ignore[union-attr,assignment]
        elif t is RedeemResult:
            r: RedeemResult = o  # type: ignore[assignment]
            if r.status == "ok" and r.push_ref is not None:
                redeemed[r.push_ref] = min(r.ts, redeemed.get(r.push_ref, r.ts))
        elif t is Order:
            od: Order = o  # type: ignore[assignment]
            if not od.held_out and (od.push_ref not in first or od.ts < first[od.push_ref][0]):
                first[od.push_ref] = (od.ts, od.amount)
    out = []
    for pid, p in sorted(pushes.items(), key=lambda kv: (kv[1].ts, kv[0])):
        f = first.get(pid)
        out.append(
            {
                "push_id": pid,
                "user": p.user,
                "merchant_id": p.merchant_id,
                "campaign_id": p.campaign_id,
                "ts": p.ts,
                "code": p.code,
                "delivered": None if delivered is None else pid in delivered,
                "redeemed_ts": redeemed.get(pid),
                "first_order_ts": f[0] if f else None,
                "first_order_value": f[1] if f else None,
            }
        )
    return out


def _load_sqlite(p: Path) -> list[AnyOutput]:
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ReportError(
            f"{p}: not a geopush state file ({exc}); give a replay output folder or the daemon's "
            "--state file"
        ) from exc
    out: list[AnyOutput] = []
    for (payload,) in rows:
        try:
            out.append(decode_output(payload))
        except DecodeError:
            continue  # a dead letter
    return out


# --- presentation ---------------------------------------------------------------------------------


def _lift_text(lf: dict[str, Any]) -> str:
    if lf["status"] != "ok":
        return NOT_ENOUGH
    lo, hi = lf["abs_lift_ci95"]
    return f"{lf['abs_lift'] * 100:+.1f} pp [{lo * 100:+.1f}, {hi * 100:+.1f}]"


_COLS: Final = (
    ("merchant / campaign", 24),
    ("visits new", 10),
    ("returning", 9),
    ("pushes", 7),
    ("held out", 8),
    ("redeemed", 8),
    ("orders", 7),
    ("revenue", 11),
    ("new cust", 8),
    ("new foll", 8),
    ("lift (95% CI)", 28),
)


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: one row per merchant, its campaigns indented below."""

    def line(name: str, d: dict[str, Any]) -> str:
        v = d.get("visits")
        cells = [
            name,
            str(v["new"]) if v else "",
            str(v["returning"]) if v else "",
            str(d["pushes"]),
            str(d["held_out"]),
            str(d["redemptions"]),
            str(d["orders"]),
            f"{d['revenue']:.2f}",
            str(d["new_customers"]),
            str(d["new_followers"]),
            _lift_text(d["lift"]),
        ]
        parts = [cells[0][: _COLS[0][1]].ljust(_COLS[0][1])]
        parts += [c.rjust(w) for c, (_, w) in zip(cells[1:-1], _COLS[1:-1], strict=True)]
        parts.append("  " + cells[-1])
        return " ".join(parts).rstrip()

    head = " ".join(
        [_COLS[0][0].ljust(_COLS[0][1]), *(h.rjust(w) for h, w in _COLS[1:-1]), "  " + _COLS[-1][0]]
    )
    out = [head, "-" * len(head)]
    for m in report["merchants"]:
        out.append(line(m["merchant_id"], m))
        for c in m["campaigns"]:
            out.append(line("  " + c["campaign_id"], c))
    out.append("-" * len(head))
    out.append(line("total", report["total"]))
    out.append(
        f"lift: {report['lift_method']}; '{NOT_ENOUGH}' below {report['min_users_per_arm']} "
        f"users per arm or {report['min_conversions']} conversions"
    )
    return "\n".join(out)


def render_png(report: dict[str, Any], path: str | Path, *, top: int = 15) -> None:
    """A PNG chart: per merchant (the ``top`` most pushed) pushes, redemptions and attributed
    orders; per campaign with a holdout, the conversion of pushed and held-out users with their
    95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ms = sorted(report["merchants"], key=lambda m: (-m["pushes"], m["merchant_id"]))[:top]
    camps = [
        (c["campaign_id"], c["lift"])
        for m in report["merchants"]
        for c in m["campaigns"]
        if c["lift"]["holdout_users"] > 0
    ][:top]
    fig = Figure(figsize=(12, 5))
    ax1, ax2 = fig.subplots(1, 2)
    names = [m["merchant_id"] for m in ms]
    xs = list(range(len(ms)))
    for k, (key, label) in enumerate(
        (("pushes", "pushes"), ("redemptions", "redeemed"), ("orders", "attributed orders"))
    ):
        ax1.bar([x + (k - 1) * 0.27 for x in xs], [m[key] for m in ms], width=0.27, label=label)
    ax1.set_xticks(xs, names, rotation=45, ha="right", fontsize=8)
    ax1.set_title("per merchant")
    ax1.legend(fontsize=8)
    if camps:
        for k, (arm, label) in enumerate((("pushed", "pushed"), ("holdout", "held out"))):
            rates: list[float] = []
            errs: list[list[float]] = [[], []]
            for _, lf in camps:
                n, x = lf[f"{arm}_users"], lf[f"{arm}_converted"]
                p = x / n if n else 0.0
                lo, hi = wilson(x, n) if n else (0.0, 0.0)
                rates.append(p * 100)
                errs[0].append((p - lo) * 100)
                errs[1].append((hi - p) * 100)
            pos = [i + (k - 0.5) * 0.4 for i in range(len(camps))]
            ax2.bar(pos, rates, width=0.4, yerr=errs, capsize=3, label=label)
        ax2.set_xticks(
            range(len(camps)),
            [f"{c}{'' if lf['status'] == 'ok' else ' *'}" for c, lf in camps],
            rotation=45,
            ha="right",
            fontsize=8,
        )
        ax2.set_ylabel("converted users (%)")
        ax2.set_title("conversion, pushed vs held out (95% CI; * not enough data)")
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no campaign has a holdout", ha="center", va="center")
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(str(path), dpi=100, format="png")
