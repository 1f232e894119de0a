"""Score the engine's lift against the simulation's truth (``geopush score lift``).

``score_week(truth, run)``: per scored campaign of one simulated week (simulator/week.py), the
report's lift (``engine.report.build_report`` over the replay's outputs: pushed versus held-out
users, Newcombe 95% interval) against ``true_uplift``, whether the interval covers it (and the
week's realized ``sample_uplift``), the standardised error ``zscore``, and the
counts the attribution rules make exact, each compared with the truth: users per arm, converted
users per arm, orders attributed to pushes, redemptions (``ok`` answers) and the redemption
answers by status.

``run_seeds(seeds, work)``: for each seed, simulate the week, replay it and score it; coverage per
campaign and overall; ``render_png`` draws every interval against the truth.

``exact_coverage(n1, p1, n0, p0)``: how often the report's interval covers p1 - p0 when the two
arms' converted counts are independent binomials, Bin(n1, p1) and Bin(n0, p0), as the truth model
makes them (each decided person converts by an independent draw; docs/simulator.md): the
coverage a calibrated interval has at one seed's sizes, summed over the enumerated outcomes, not
sampled. ``score_week`` gives it per row (``expected_coverage``) and ``coverage`` adds it up over
seeds, with the probability of covering as few times as observed (``p_at_most``), so a count like
18/20 is read against what a calibrated 95% interval does at those sizes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.outputs import RedeemResult
from engine.report import Z95, build_report, load_outputs, newcombe
from simulator.week import WeekModel, load_truth, replay_week, simulate_week

EXACT = ("pushed_users", "holdout_users", "pushed_converted", "holdout_converted", "orders",
         "redemptions")


def score_week(truth_path: str | Path, run: str | Path) -> dict[str, Any]:
    """One week: per scored campaign the estimate, its interval, the truth and the exact counts."""
    truth = load_truth(truth_path)
    outs = load_outputs(run)
    rep = build_report(outs, window_s=float(truth["attribution_window_s"]))
    answers: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for o in outs:
        if type(o) is RedeemResult and o.out_id not in seen:
            seen.add(o.out_id)
            by = answers.setdefault(o.merchant_id, {})
            by[o.status] = by.get(o.status, 0) + 1
    camps = {c["campaign_id"]: c for m in rep["merchants"] for c in m["campaigns"]}
    rows = []
    for cid, t in sorted(truth["campaigns"].items()):
        c = camps.get(cid)
        lf: dict[str, Any] = c["lift"] if c else {"status": "no decisions", "pushed_users": 0, "holdout_users": 0,
                                 "pushed_converted": 0, "holdout_converted": 0}
        got = {
            "pushed_users": lf["pushed_users"],
            "holdout_users": lf["holdout_users"],
            "pushed_converted": lf["pushed_converted"],
            "holdout_converted": lf["holdout_converted"],
            "orders": c["orders"] if c else 0,
            "redemptions": c["redemptions"] if c else 0,
        }
        got_answers = answers.get(t["merchant_id"], {})
        exact = {k: got[k] == t[k] for k in EXACT}
        exact["redeem_answers"] = all(
            got_answers.get(s, 0) == n for s, n in t["redeem_answers"].items()
        ) and set(got_answers) <= set(t["redeem_answers"])
        row: dict[str, Any] = {
            "seed": truth["seed"],
            "campaign_id": cid,
            "true_uplift": t["true_uplift"],
            "sample_uplift": t.get("sample_uplift"),
            "status": lf["status"],
            "estimate": lf.get("abs_lift"),
            "ci95": lf.get("abs_lift_ci95"),
            "covered": None,
            "covered_sample": None,
            "z": None,
            "counts": got,
            "truth": {k: t[k] for k in EXACT},
            "redeem_answers": got_answers,
            "truth_redeem_answers": t["redeem_answers"],
            "exact": all(exact.values()),
            "mismatched": sorted(k for k, ok in exact.items() if not ok),
        }
        if lf["status"] == "ok":
            p0 = float(t["base_rate"])
            row["expected_coverage"] = round(exact_coverage(
                lf["pushed_users"], p0 + t["true_uplift"], lf["holdout_users"], p0), 6)
            lo, hi = lf["abs_lift_ci95"]
            row["covered"] = bool(lo <= t["true_uplift"] <= hi)
            row["z"] = zscore(lf["abs_lift"], lo, hi, t["true_uplift"])
            if t.get("sample_uplift") is not None:
                row["covered_sample"] = bool(lo <= t["sample_uplift"] <= hi)
        rows.append(row)
    return {"seed": truth["seed"], "campaigns": rows}


def binom_pmf(n: int, p: float) -> np.ndarray:
    """P(X = k) for k = 0..n, X ~ Bin(n, p) (0 < p < 1), from the ratios of successive terms."""
    k = np.arange(1, n + 1, dtype=float)
    steps = np.log((n - k + 1) / k) + math.log(p / (1.0 - p))
    logs = np.concatenate(([n * math.log1p(-p)], n * math.log1p(-p) + np.cumsum(steps)))
    out: np.ndarray = np.exp(logs)
    return out


def exact_coverage(n1: int, p1: float, n0: int, p0: float, *, tail: float = 1e-11) -> float:
    """The probability that the report's interval (``engine.report.newcombe``, called on every
    outcome) covers p1 - p0 when X1 ~ Bin(n1, p1) and X0 ~ Bin(n0, p0) are independent, summed
    over the outcomes; outcomes of an arm less likely than ``tail`` each are left out (their
    mass, at most (n + 1) x ``tail`` per arm, is counted as a miss)."""
    truth = p1 - p0
    w1, w0 = binom_pmf(n1, p1), binom_pmf(n0, p0)
    xs1, xs0 = np.flatnonzero(w1 >= tail), np.flatnonzero(w0 >= tail)
    total = 0.0
    for x1 in xs1.tolist():
        inside = 0.0
        for x0 in xs0.tolist():
            lo, hi = newcombe(x1, n1, x0, n0)
            if lo <= truth <= hi:
                inside += float(w0[x0])
        total += float(w1[x1]) * inside
    return total


def at_most(k: int, probs: Sequence[float]) -> float:
    """P(at most ``k`` successes) of independent trials with success probabilities ``probs``."""
    dist = np.zeros(len(probs) + 1)
    dist[0] = 1.0
    for q in probs:
        dist[1:] = dist[1:] * (1.0 - q) + dist[:-1] * q
        dist[0] *= 1.0 - q
    return float(min(1.0, dist[: k + 1].sum()))


def zscore(est: float, lo: float, hi: float, truth: float) -> float:
    """The standardised error (est - truth) / SE, with SE the interval's half-width on the
    truth's side over 1.96 (Newcombe's interval is not symmetric): |z| > 1.96 exactly when the
    interval misses the truth. Over many seeds a calibrated interval gives mean ~0, sd ~1."""
    half = (est - lo) if est >= truth else (hi - est)
    return round((est - truth) / (half / Z95), 4) if half > 0 else 0.0


def coverage(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per campaign and overall: seeds whose interval covers the configured uplift (``covered``)
    and the week's realized sample uplift (``covered_sample``), out of seeds scored; the
    standardised errors' mean and sd (against the configured uplift); what a calibrated interval
    gives at the seeds' sizes (``expected``: the sum of the rows' ``expected_coverage``) and the
    probability of ``covered`` or fewer (``p_at_most``; None without expected coverages)."""
    per: dict[str, list[int]] = {}
    zs: dict[str, list[float]] = {}
    exp: dict[str, list[float]] = {}
    for r in rows:
        got = per.setdefault(r["campaign_id"], [0, 0, 0])
        if r["covered"] is not None:
            got[1] += 1
            got[0] += bool(r["covered"])
            got[2] += bool(r.get("covered_sample"))
            if r.get("expected_coverage") is not None:
                exp.setdefault(r["campaign_id"], []).append(float(r["expected_coverage"]))
        if r.get("z") is not None:
            zs.setdefault(r["campaign_id"], []).append(float(r["z"]))

    def stats(z: list[float]) -> dict[str, float | None]:
        if not z:
            return {"z_mean": None, "z_sd": None}
        mean = sum(z) / len(z)
        sd = (sum((x - mean) ** 2 for x in z) / (len(z) - 1)) ** 0.5 if len(z) > 1 else None
        return {"z_mean": round(mean, 3), "z_sd": None if sd is None else round(sd, 3)}

    def calibrated(covered: int, of: int, qs: list[float]) -> dict[str, float | None]:
        if not qs or len(qs) != of:
            return {"expected": None, "p_at_most": None}
        return {"expected": round(sum(qs), 2), "p_at_most": round(at_most(covered, qs), 4)}

    every = [q for c in sorted(exp) for q in exp[c]]
    n_cov, n_of = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    return {
        "per_campaign": {
            c: {"covered": a, "of": b, "covered_sample": s, **stats(zs.get(c, [])),
                **calibrated(a, b, exp.get(c, []))}
            for c, (a, b, s) in sorted(per.items())
        },
        "covered": n_cov,
        "covered_sample": sum(v[2] for v in per.values()),
        "of": n_of,
        **calibrated(n_cov, n_of, every),
        "exact": sum(bool(r["exact"]) for r in rows),
        "rows": len(rows),
    }


def run_seeds(
    seeds: Sequence[int],
    work: str | Path,
    *,
    model: WeekModel | None = None,
    keep: bool = False,
    on_step: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Simulate, replay and score each seed in ``work``/seed-N (removed after scoring unless
    ``keep``). ``on_step(seed, phase)`` reports progress ("simulate", "replay", "score", "done")."""
    work = Path(work)
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    for seed in seeds:
        t0 = time.perf_counter()
        d = work / f"seed-{seed}"
        step = on_step or (lambda _s, _p: None)
        step(seed, "simulate")
        simulate_week(seed, d / "week", model)
        step(seed, "replay")
        replay_week(d / "week", d / "run")
        step(seed, "score")
        res = score_week(d / "week" / "truth.json", d / "run")
        (d / "score.json").write_text(json.dumps(res, indent=1) + "\n")
        rows.extend(res["campaigns"])
        if not keep:
            shutil.rmtree(d / "week", ignore_errors=True)
            shutil.rmtree(d / "run", ignore_errors=True)
        times.append(time.perf_counter() - t0)
        step(seed, "done")
    return {"seeds": list(seeds), "rows": rows, "coverage": coverage(rows),
            "seconds_per_seed": [round(t, 2) for t in times]}


def render_png(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One panel per campaign: each seed's estimate with its 95% interval, the configured truth
    as a line, the week's realized uplift as a cross; intervals that miss the configured truth
    in red; in the title, how many cover it and how many an exact 95% interval would."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    camps = sorted({r["campaign_id"] for r in rows})
    fig = Figure(figsize=(6 * max(1, len(camps)), 5))
    axes = fig.subplots(1, max(1, len(camps)), squeeze=False)[0]
    for ax, cid in zip(axes, camps, strict=False):
        rs = [r for r in rows if r["campaign_id"] == cid and r["ci95"] is not None]
        truth = rs[0]["true_uplift"] if rs else 0.0
        for k, r in enumerate(rs):
            lo, hi = r["ci95"]
            colour = "tab:blue" if r["covered"] else "tab:red"
            ax.plot([lo * 100, hi * 100], [k, k], color=colour, lw=2)
            ax.plot([r["estimate"] * 100], [k], "o", color=colour, ms=4)
            if r.get("sample_uplift") is not None:
                ax.plot([r["sample_uplift"] * 100], [k], "x", color="black", ms=4,
                        label="realized uplift (the week's people)" if k == 0 else None)
        ax.axvline(truth * 100, color="black", ls="--", lw=1, label=f"configured uplift {truth * 100:g} pp")
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_yticks(range(len(rs)), [f"seed {r['seed']}" for r in rs], fontsize=7)
        n = sum(bool(r["covered"]) for r in rs)
        qs = [r["expected_coverage"] for r in rs if r.get("expected_coverage") is not None]
        exp = f" ({sum(qs):.1f} expected)" if rs and len(qs) == len(rs) else ""
        ax.set_title(f"{cid}: {n}/{len(rs)} intervals cover the truth{exp}")
        ax.set_xlabel("absolute lift, percentage points (95% Newcombe interval)")
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100, format="png")
