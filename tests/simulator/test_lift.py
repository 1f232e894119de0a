"""The simulated week closes the loop: the engine's lift against the truth model, and the counts
attribution must get exactly (simulator/week.py, simulator/lift.py)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.loop import in_holdout
from engine.outputs import Holdout, Push, decode_output
from engine.report import Z95, newcombe
from simulator import cli
from simulator.lift import at_most, coverage, exact_coverage, render_png, run_seeds
from simulator.week import (
    DEFAULT_MERCHANTS,
    Merchant,
    WeekError,
    WeekModel,
    read_decisions,
    replay_week,
    responses,
    simulate_week,
)

SMALL = WeekModel(users=1500)


def _main(argv: list[str]) -> int:
    """The simulator's commands as `geopush` registers them (engine.cli loads them by entry
    point; built here so that the test runs the worktree's code)."""
    p = argparse.ArgumentParser(prog="geopush")
    cli.register(p.add_subparsers())
    a = p.parse_args(argv)
    return int(a.func(a))


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("lift")
    return {**run_seeds([1, 2, 3], work, model=SMALL, keep=True), "work": work}


def test_counts_attribution_makes_exact_equal_the_truth(three: dict[str, Any]) -> None:
    rows = three["rows"]
    assert len(rows) == 6  # two scored campaigns x three seeds
    for r in rows:
        assert r["exact"], (r["seed"], r["campaign_id"], r["mismatched"], r["counts"], r["truth"])
        assert r["counts"]["redemptions"] == r["truth"]["redemptions"] > 0
        assert r["redeem_answers"] == {k: v for k, v in r["truth_redeem_answers"].items() if v}
        assert r["counts"]["holdout_users"] > 0 and r["counts"]["pushed_users"] > 0


def test_the_interval_is_the_reports_and_coverage_counts_it(three: dict[str, Any]) -> None:
    for r in three["rows"]:
        c = r["counts"]
        n1, x1, n0, x0 = (c["pushed_users"], c["pushed_converted"], c["holdout_users"],
                          c["holdout_converted"])
        assert r["status"] == "ok"
        assert math.isclose(r["estimate"], x1 / n1 - x0 / n0, abs_tol=1e-6)
        lo, hi = newcombe(x1, n1, x0, n0)
        assert r["ci95"] == pytest.approx([lo, hi], abs=1e-6)
        assert r["covered"] == (r["ci95"][0] <= r["true_uplift"] <= r["ci95"][1])
        assert r["covered_sample"] == (r["ci95"][0] <= r["sample_uplift"] <= r["ci95"][1])
        assert (abs(r["z"]) <= Z95 + 1e-3) == r["covered"]  # |z| > 1.96 exactly on a miss
        assert abs(r["sample_uplift"] - r["true_uplift"]) < 0.1
        base = {m.campaign: m for m in DEFAULT_MERCHANTS}[r["campaign_id"]].base_rate
        assert r["expected_coverage"] == pytest.approx(
            exact_coverage(n1, base + r["true_uplift"], n0, base), abs=1e-6)
        assert 0.93 < r["expected_coverage"] < 0.97
    cov = coverage(three["rows"])
    assert cov["of"] == 6 and cov["covered"] == sum(bool(r["covered"]) for r in three["rows"])
    assert set(cov["per_campaign"]) == {"cafe-welcome", "grocer-stay"}
    for cid, v in cov["per_campaign"].items():
        qs = [r["expected_coverage"] for r in three["rows"] if r["campaign_id"] == cid]
        assert v["expected"] == pytest.approx(sum(qs), abs=0.01)
        assert v["p_at_most"] == pytest.approx(at_most(v["covered"], qs), abs=1e-4)
    assert cov["expected"] == pytest.approx(
        sum(r["expected_coverage"] for r in three["rows"]), abs=0.01)


def test_the_truth_model_draws_independent_binomial_arms(three: dict[str, Any]) -> None:
    """Why the interval's coverage is computable (``exact_coverage``): given the engine's arms,
    each decided person converts by an independent draw, with probability base_rate held out and
    base_rate + true_uplift pushed, so the counts are binomial. The responses of 300 weeks are
    drawn on one seed's real arms: per campaign and arm the mean rate is the model's and the
    spread across weeks the binomial one, and the arms (and campaigns) are uncorrelated. A shared
    shock per week (a merchant's good or bad week), people converting together (households) or
    who converts depending on the arm's make-up would widen the spread or correlate the arms."""
    dec = read_decisions(Path(three["work"]) / "seed-1" / "run")
    weeks = 300
    counts: dict[tuple[str, str], list[int]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for w in range(weeks):
        _, truth = responses(SMALL, dec, np.random.default_rng([1000 + w, 11]),
                             np.random.default_rng([1000 + w, 13]))
        for cid, t in truth.items():
            for arm in ("pushed", "holdout"):
                counts.setdefault((cid, arm), []).append(t[f"{arm}_converted"])
                sizes[(cid, arm)] = t[f"{arm}_users"]
    assert len(counts) == 4
    resid = {}
    for (cid, arm), xs in counts.items():
        m = {m.campaign: m for m in DEFAULT_MERCHANTS}[cid]
        p = m.base_rate + (m.true_uplift if arm == "pushed" else 0.0)
        n = sizes[(cid, arm)]
        assert n >= 40, (cid, arm, n)
        x = np.array(xs, dtype=float)
        sd = math.sqrt(n * p * (1 - p))
        # the mean within 4 standard errors, the variance within [0.7, 1.35] of the binomial's
        # (its standard error with 300 weeks is 0.08)
        assert abs(x.mean() - n * p) <= 4 * sd / math.sqrt(weeks), (cid, arm, x.mean(), n * p)
        ratio = x.var(ddof=1) / sd**2
        assert 0.7 <= ratio <= 1.35, (cid, arm, ratio)
        resid[(cid, arm)] = (x - n * p) / sd
    keys = sorted(resid)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            r = float(np.corrcoef(resid[a], resid[b])[0, 1])
            assert abs(r) <= 0.25, (a, b, r)  # standard error 0.06


def test_exact_coverage_sums_the_reports_interval_over_the_binomials() -> None:
    # by brute force at small sizes: every outcome, the report's own interval, math.comb
    n1, p1, n0, p0 = 40, 0.3, 30, 0.1
    brute = sum(
        math.comb(n1, x1) * p1**x1 * (1 - p1) ** (n1 - x1)
        * math.comb(n0, x0) * p0**x0 * (1 - p0) ** (n0 - x0)
        for x1 in range(n1 + 1)
        for x0 in range(n0 + 1)
        if newcombe(x1, n1, x0, n0)[0] <= p1 - p0 <= newcombe(x1, n1, x0, n0)[1]
    )
    assert exact_coverage(n1, p1, n0, p0) == pytest.approx(brute, abs=1e-9)
    # the simulated week's sizes (docs/simulator.md): Newcombe is calibrated there; these values
    # were computed independently (a vectorised Newcombe over the full grid of outcomes)
    assert exact_coverage(3000, 0.15, 340, 0.10) == pytest.approx(0.9503, abs=5e-5)
    assert exact_coverage(2100, 0.23, 370, 0.20) == pytest.approx(0.9500, abs=5e-5)
    # at most k of independent trials; equal probabilities give the binomial tail
    assert at_most(18, [0.95] * 20) == pytest.approx(1 - 0.95**20 - 20 * 0.05 * 0.95**19)
    assert at_most(20, [0.95] * 20) == pytest.approx(1.0)
    assert at_most(0, [0.5, 0.25]) == pytest.approx(0.375)


def test_arms_are_the_engines_holdout_draw(tmp_path: Path) -> None:
    """The simulator reads who was held out from the engine's decisions: every held-out user is
    in the engine's holdout draw, every pushed user outside it."""
    simulate_week(4, tmp_path, SMALL)
    truth = json.loads((tmp_path / "truth.json").read_text())
    kinds = {d.split(":", 1)[0] for d in truth["decisions"]}
    assert kinds == {"Holdout", "Push"}
    camps = {m.campaign: m for m in DEFAULT_MERCHANTS}
    run = tmp_path / "run"
    replay_week(tmp_path, run)
    for name in ("pushes.jsonl", "holdouts.jsonl"):
        for line in (run / name).read_bytes().splitlines():
            o = decode_output(line)
            assert isinstance(o, Push | Holdout)
            held = in_holdout(o.user, o.campaign_id, camps[o.campaign_id].holdout_pct)
            assert held == (name == "holdouts.jsonl")


def test_the_same_seed_gives_the_same_week(tmp_path: Path) -> None:
    simulate_week(5, tmp_path / "a", WeekModel(users=300))
    simulate_week(5, tmp_path / "b", WeekModel(users=300))
    for name in ("trace.jsonl", "truth.json", "stores.geojson", "campaigns.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_bad_truth_model_is_refused(tmp_path: Path) -> None:
    bad = Merchant("m-x", "x", stores=1, patrons=0.5, visits_per_week=1.0, holdout_pct=10.0,
                   base_rate=0.6, true_uplift=0.2)
    with pytest.raises(WeekError, match="1.5 x base_rate"):
        simulate_week(1, tmp_path, WeekModel(users=100, merchants=(bad,)))


def test_cli_week_then_score_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    week = tmp_path / "week"
    assert _main(["simulate", "week", "--seed", "2", "--users", "1200", "--out", str(week)]) == 0
    assert "next: geopush score lift --week" in capsys.readouterr().out
    png = tmp_path / "lift.png"
    assert _main(["score", "lift", "--week", str(week), "--png", str(png), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["campaign_id"] for r in res["campaigns"]} == {"cafe-welcome", "grocer-stay"}
    assert all(r["exact"] for r in res["campaigns"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second scoring of the same replay (--run) gives the same figures
    assert _main(["score", "lift", "--week", str(week), "--run", str(week / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["campaigns"] == res["campaigns"]
    # the table says what an exact 95% interval gives at these sizes beside each coverage count
    assert _main(["score", "lift", "--week", str(week), "--run", str(week / "run")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "an exact 95% interval at these sizes" in text and "P(<=" in text
    with pytest.raises(SystemExit):
        _main(["score", "lift"])  # --week or --seeds
    assert "one of the arguments --week --seeds is required" in capsys.readouterr().err


def test_render_png_marks_misses(tmp_path: Path) -> None:
    rows = [
        {"seed": 1, "campaign_id": "c", "true_uplift": 0.05, "estimate": 0.04, "ci95": [0.01, 0.07],
         "covered": True},
        {"seed": 2, "campaign_id": "c", "true_uplift": 0.05, "estimate": 0.09, "ci95": [0.06, 0.12],
         "covered": False},
    ]
    render_png(rows, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000


@pytest.mark.slow
def test_twenty_seeds_cover_the_true_lift(tmp_path: Path) -> None:
    """20 seeds of a simulated week (8000 people; thousands pushed and hundreds held out per
    scored campaign): every attribution count equals the truth, and the 95% intervals cover the
    true lift as often as a 95% interval should. The issue's target, >= 19 of 20 per campaign,
    happens with probability 0.74 even for an exact 95% interval, so it is not asserted (seeds
    1-20 give 18/20 and 19/20, docs/simulator.md); asserted: >= 17/20 per campaign and >= 35/40
    in all, which an exact 95% interval misses with probability 1.6% and 1.4%; and per campaign
    the standardised errors (estimate - truth) / SE centred (|mean| <= 0.7, 3.1 standard errors
    of a mean of 20) and of unit spread (sd in [0.5, 1.5]): a biased estimate (the lift counted by
    attribution, whose held-out users had a longer window, gave -1.22 and -1.62 on these seeds,
    about -1.4 over 100 others) or a too narrow interval fails. The realized (sample) uplift is reported beside
    the configured one."""
    res = run_seeds(range(1, 21), tmp_path)
    cov = res["coverage"]
    assert cov["exact"] == cov["rows"] == 40
    for cid, v in cov["per_campaign"].items():
        assert v["of"] == 20, cid
        assert v["covered"] >= 17, (cid, v)
        assert abs(v["z_mean"]) <= 0.7 and 0.5 <= v["z_sd"] <= 1.5, (cid, v)
    assert cov["covered"] >= 35, cov
    for r in res["rows"]:
        assert r["counts"]["pushed_users"] >= 1000 and r["counts"]["holdout_users"] >= 200, r
