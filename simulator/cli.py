"""`geopush simulate ...`, `geopush import ...` and `geopush score`.

Heavy imports (numpy, numba, the importers, the publisher) happen inside the handlers so that
``geopush --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from engine.cli import help_and_fail, positive
from engine.errors import GeopushError
from simulator.start import START_FORMS_ABSOLUTE, Start, start_arg

_POS_INT = positive(int)
_POS_FLOAT = positive(float)

_CITY_EPILOG = """\
Files written into OUT: stores.geojson (catalog), campaigns.json, profiles.jsonl, trace.jsonl
(events sorted by ts, the wire JSON), truth.jsonl (which store each person was really in, when,
and which signals their phone produced there) and city.json (parameters, counts, spoofers).
Same arguments and seed give byte-identical files. Next:
  geopush replay OUT/trace.jsonl --fences OUT/stores.geojson --campaigns OUT/campaigns.json \\
      --profiles OUT/profiles.jsonl --out RUN
  geopush score --truth OUT/truth.jsonl --visits RUN/visits.jsonl
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `simulate`, `import` and `score`."""
    fmt = argparse.RawDescriptionHelpFormatter
    sim = sub.add_parser(
        "simulate",
        help="generate a city with people and their phones' signals; publish a trace over MQTT",
        description="Simulation: `simulate city` generates, `simulate publish` replays over MQTT.",
    )
    sim_sub = sim.add_subparsers(title="what", metavar="WHAT")
    sim.set_defaults(func=lambda _a: help_and_fail(sim))

    city = sim_sub.add_parser(
        "city",
        help="a seeded city: stores, campaigns, profiles, a trace and its ground truth",
        description="Generate a city of stores (circles, polygons, malls of small overlapping "
        "fences; WiFi APs, beacons, NFC tags) and people with daily routines whose phones emit "
        "GPS fixes, WiFi scans, beacon sightings, NFC taps and payments.",
        epilog=_CITY_EPILOG,
        formatter_class=fmt,
    )
    city.add_argument("--stores", type=_POS_INT, default=2000, help="number of stores (default 2000)")
    city.add_argument("--users", type=_POS_INT, default=1000, help="number of people (default 1000)")
    city.add_argument("--hours", type=_POS_FLOAT, default=12.0,
                      help="simulated hours from the start (default 12)")
    city.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    city.add_argument("--start", type=start_arg(absolute=True), default=None, metavar="WHEN",
                      help=f"when the simulation starts: {START_FORMS_ABSOLUTE}. A time of day "
                      "is that hour of Monday 2026-03-02 (default 6, i.e. 06:00); an instant "
                      "also sets the people's time of day (its UTC hour)")
    city.add_argument("--start-hour", type=float, default=None, metavar="H",
                      help="older spelling of --start H (with an epoch --start: the people's "
                      "time of day, default the instant's UTC hour)")
    city.add_argument("--out", required=True, help="output directory (created if missing)")
    city.add_argument("--quiet", action="store_true", help="no progress bar")
    city.add_argument("--json", action="store_true", help="print the report as one JSON object")
    city.set_defaults(func=_cmd_city)

    pub = sim_sub.add_parser(
        "publish",
        help="publish a trace over MQTT in real time, accelerated or flat out",
        description="Publish TRACE (one event per line) to the broker, each event on its user's "
        "topic, with a progress bar and the rate achieved.",
    )
    pub.add_argument("trace", help="trace .jsonl (e.g. from `geopush simulate city`)")
    pub.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                     help="broker URL (default mqtt://127.0.0.1:1883)")
    speed = pub.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=_POS_FLOAT, default=None,
                       help="events per second, ignoring the trace's timing")
    speed.add_argument("--speed", type=_POS_FLOAT, default=None,
                       help="time acceleration: 1 = real time, 60 = a minute per second; "
                       "without --rate or --speed: as fast as possible")
    pub.add_argument("--prefix", default="geopush",
                     help="topic prefix: events go to PREFIX/events/USER (default geopush)")
    pub.add_argument("--quiet", action="store_true", help="no progress bar")
    pub.set_defaults(func=_cmd_publish)

    imp = sub.add_parser(
        "import",
        help="convert real traces (GeoLife, OwnTracks, CSV, the mall survey, beacon rooms)",
        description="Importers: real location data to geopush's trace format (and, for the "
        "mall survey and the beacon rooms, a store catalog and the ground truth).",
    )
    imp_sub = imp.add_subparsers(title="format", metavar="FORMAT")
    imp.set_defaults(func=lambda _a: help_and_fail(imp))
    g = imp_sub.add_parser("geolife", help="GeoLife .plt files or a Data/ tree -> trace")
    g.add_argument("path", help=".plt file or a directory holding them")
    g.add_argument("--out", required=True, help="trace .jsonl to write")
    g.add_argument("--acc", type=_POS_FLOAT, default=None,
                   help="accuracy (m) to give every fix (GeoLife has none)")
    g.add_argument("--user", default=None, help="user id (default: from the folder name)")
    g.set_defaults(func=_cmd_geolife)
    o = imp_sub.add_parser("owntracks", help="OwnTracks JSON messages -> trace")
    o.add_argument("path", help="file of OwnTracks messages (JSON lines, array or one object)")
    o.add_argument("--out", required=True, help="trace .jsonl to write")
    o.add_argument("--user", default=None, help="user id (default: the message's tid)")
    o.add_argument("--device", default="phone", help="device name (default phone)")
    o.set_defaults(func=_cmd_owntracks)
    c = imp_sub.add_parser("csv", help="CSV user,ts,lat,lon[,acc] -> trace")
    c.add_argument("path", help="CSV file with a header row")
    c.add_argument("--out", required=True, help="trace .jsonl to write")
    c.add_argument("--acc", type=_POS_FLOAT, default=None,
                   help="accuracy (m) for rows without one")
    c.set_defaults(func=_cmd_csv)
    m = imp_sub.add_parser(
        "mall",
        help="the mall WiFi/iBeacon survey -> catalog, trace, truth",
        description="Derive a store catalog (polygons, APs and beacons registered by survey), a "
        "trace (each survey walk is a user) and the ground truth from the mall survey folder "
        "(../shared/data/near_field/mall).",
    )
    m.add_argument("path", help="the mall folder (with the .tsv.gz and site1_floormaps/)")
    m.add_argument("--out", required=True, help="output directory")
    m.add_argument("--floor", default="F1", help="floor (default F1, the one surveyed)")
    m.set_defaults(func=_cmd_mall)
    b = imp_sub.add_parser("beacon-rooms", help="iBeacon scanner logs -> catalog, trace, truth")
    b.add_argument("path", help="a log file or the beacon_rooms folder")
    b.add_argument("--out", required=True, help="output directory")
    b.set_defaults(func=_cmd_beacon_rooms)

    sc = sub.add_parser(
        "score",
        help="precision, recall and timing of detected visits against ground truth",
        description="Match detected visits (visits.jsonl from `geopush replay`) to truth stays "
        "(same user and store, overlapping in time) and report precision, recall and enter/exit "
        "delays per signal type (truth: strongest signal the phone produced, near-field > wifi "
        "> gps; detected: the visit's strongest signal).",
    )
    sc.add_argument("--truth", help="truth.jsonl (required)")
    sc.add_argument("--visits", help="visits.jsonl (required)")
    sc.add_argument("--min-stay", type=float, default=0.0,
                    help="truth stays shorter than this (s) are optional (default 0)")
    sc.add_argument("--tolerance", type=float, default=60.0,
                    help="seconds a visit may start after the stay ended, or end before it "
                    "began, and still match (default 60)")
    sc.add_argument("--fences", default=None,
                    help="the store catalog, to score a subset of stores with --tag/--without-tag")
    sub_tag = sc.add_mutually_exclusive_group()
    sub_tag.add_argument("--tag", default=None,
                         help="score only stores with this catalog tag (e.g. mall)")
    sub_tag.add_argument("--without-tag", default=None,
                         help="score only stores without this catalog tag")
    sc.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sc.set_defaults(func=_cmd_score)
    sc_sub = sc.add_subparsers(title="other scores", metavar="WHAT")
    lf = sc_sub.add_parser(
        "lift",
        help="the engine's estimated lift against a simulated week's true uplift",
        description="Score lift on simulated weeks (`geopush simulate week`): per scored "
        "campaign the report's lift (pushed vs held-out users, Newcombe 95%% interval) against "
        "the truth model's true_uplift (and the week's realized uplift among the decided people), "
        "the standardised errors, and the counts attribution must get exactly (users and "
        "converted users per arm, orders, redemptions, redemption answers). --week DIR replays "
        "and scores one week; --seeds N simulates, replays and scores seeds 1..N with a progress "
        "bar, prints the coverage and draws the intervals (--png).",
        epilog="Example: geopush score lift --seeds 20 --png lift.png",
        formatter_class=fmt,
    )
    one = lf.add_mutually_exclusive_group(required=True)
    one.add_argument("--week", default=None,
                     help="a week folder from `geopush simulate week`: replay it and score it")
    one.add_argument("--seeds", type=_POS_INT, default=None,
                     help="simulate, replay and score this many seeds (1..N; see --first-seed)")
    lf.add_argument("--run", default=None,
                    help="with --week: score this replay output folder instead of replaying "
                    "into WEEK/run")
    lf.add_argument("--first-seed", type=int, default=1, help="with --seeds: the first seed")
    lf.add_argument("--users", type=_POS_INT, default=None,
                    help="with --seeds: people per week (default 8000)")
    lf.add_argument("--work", default=None,
                    help="with --seeds: folder for the seeds' files (default: a temporary one)")
    lf.add_argument("--keep", action="store_true",
                    help="with --seeds: keep each seed's week and replay (large)")
    lf.add_argument("--png", default=None, help="write the intervals against the truth here")
    lf.add_argument("--json", action="store_true", help="print one JSON object")
    lf.add_argument("--quiet", action="store_true", help="no progress bar")
    lf.set_defaults(func=_cmd_score_lift)

    wk = sim_sub.add_parser(
        "week",
        help="a simulated week that closes the loop: visits, pushes, redemptions, payments",
        description="Generate a week of visits of a compact population, let the engine decide "
        "pushes and holdouts on them, draw each decided person's response from the truth model "
        "(conversion p0 held out, p0 + true_uplift pushed; redemption of the code) and write "
        "the full trace and the truth. Model: docs/simulator.md, \"Closing the loop\".",
        epilog="Next: geopush score lift --week OUT   (replays OUT/trace.jsonl into OUT/run, "
        "scores)\nAll seeds: geopush score lift --seeds 20 --png lift.png",
        formatter_class=fmt,
    )
    wk.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    wk.add_argument("--users", type=_POS_INT, default=8000, help="people (default 8000)")
    wk.add_argument("--out", required=True, help="output directory (created if missing)")
    wk.set_defaults(func=_cmd_week)


def _city_start(start: Start | None, start_hour: float | None) -> tuple[float | None, float]:
    """(t0 or None for the default day, the people's time of day) from --start / --start-hour."""
    if start is None:
        return None, 6.0 if start_hour is None else start_hour
    if not start.absolute:
        if start_hour is not None:
            raise GeopushError("give --start or --start-hour, not both (--start 12 = --start-hour 12)")
        return None, start.hour
    return start.epoch, start.hour if start_hour is None else start_hour


def _cmd_city(a: argparse.Namespace) -> int:
    from simulator.city import generate_city

    try:
        t0, start_hour = _city_start(a.start, a.start_hour)
        rep = generate_city(stores=a.stores, users=a.users, hours=a.hours, seed=a.seed,
                            out=a.out, t0=t0, start_hour=start_hour,
                            progress=not (a.quiet or a.json))
    except (ValueError, OSError) as exc:
        raise GeopushError(f"simulate city: {exc}") from exc
    if a.json:
        from dataclasses import asdict

        print(json.dumps(asdict(rep)))
        return 0
    by = ", ".join(f"{k} {v:,}" for k, v in rep.events_by_type.items())
    print(f"city: {rep.stores:,} stores, {rep.users:,} people, {rep.hours:g} h -> {rep.out}")
    print(f"events: {rep.events:,} ({by}); truth stays: {rep.truth_stays:,}; "
          f"spoofers: {len(rep.spoofers)}")
    print(f"generated in {rep.seconds:.1f} s: {rep.events_per_s:,.0f} events/s overall, "
          f"{rep.trace_events_per_s:,.0f} events/s for the trace itself; "
          f"{rep.cpu_seconds:.1f} s of CPU: {rep.events_per_cpu_s:,.0f} events per CPU-second")
    return 0


def _cmd_publish(a: argparse.Namespace) -> int:
    from simulator.publish import publish_trace  # owned by the daemon helper

    res = publish_trace(a.trace, a.broker, rate=a.rate, speed=a.speed, progress=not a.quiet,
                        prefix=a.prefix)
    if res is not None:
        print(res)
    return 0


def _write(events: list[Any], out: str) -> int:
    from engine.traces import write_trace

    n = write_trace(events, out)
    print(f"wrote {n:,} events to {out}")
    return 0


def _cmd_geolife(a: argparse.Namespace) -> int:
    from simulator.importers.geolife import load_geolife

    kw: dict[str, Any] = {"user": a.user}
    if a.acc is not None:
        kw["acc"] = a.acc
    return _write(load_geolife(a.path, **kw), a.out)


def _cmd_owntracks(a: argparse.Namespace) -> int:
    from simulator.importers.owntracks import load_owntracks

    return _write(load_owntracks(a.path, user=a.user, device=a.device), a.out)


def _cmd_csv(a: argparse.Namespace) -> int:
    from simulator.importers.csv_trace import load_csv

    kw: dict[str, Any] = {}
    if a.acc is not None:
        kw["default_acc"] = a.acc
    return _write(load_csv(a.path, **kw), a.out)


def _cmd_mall(a: argparse.Namespace) -> int:
    from simulator.mall import write_mall

    counts = write_mall(a.path, a.out, floor=a.floor)
    print(json.dumps(counts))
    return 0


def _cmd_beacon_rooms(a: argparse.Namespace) -> int:
    from simulator.importers.beacon_rooms import write_beacon_rooms

    counts = write_beacon_rooms(a.path, a.out)
    print(json.dumps(counts))
    return 0


def _cmd_score(a: argparse.Namespace) -> int:
    from simulator.score import render_table, score_files, stores_with_tag

    if not a.truth or not a.visits:
        raise GeopushError("score: give --truth TRUTH.jsonl and --visits VISITS.jsonl "
                           "(or `geopush score lift` for lift)")

    keep = drop = None
    if a.tag or a.without_tag:
        if not a.fences:
            raise GeopushError("--tag/--without-tag need --fences STORES.geojson (the catalog)")
        if a.tag:
            keep = stores_with_tag(a.fences, a.tag)
        else:
            drop = stores_with_tag(a.fences, a.without_tag)
    rep = score_files(a.truth, a.visits, min_stay=a.min_stay, tolerance=a.tolerance,
                      keep_stores=keep, drop_stores=drop)
    if a.json:
        print(json.dumps(rep.to_dict()))
        return 0
    from rich.console import Console

    Console().print(render_table(rep))
    return 0


def _cmd_week(a: argparse.Namespace) -> int:
    from simulator.week import WeekModel, simulate_week

    try:
        t = simulate_week(a.seed, a.out, WeekModel(users=a.users))
    except OSError as exc:
        raise GeopushError(f"simulate week: {exc}") from exc
    print(f"week: seed {a.seed}, {t['users']:,} people, {t['visits']:,} visits, "
          f"{t['events']:,} events -> {a.out}")
    for cid, c in t["campaigns"].items():
        print(f"  {cid}: {c['pushed_users']:,} pushed, {c['holdout_users']:,} held out, true "
              f"uplift {c['true_uplift'] * 100:+g} pp (realized among these people "
              f"{c['sample_uplift'] * 100:+.2f} pp), {c['redemptions']} redemptions")
    print(f"next: geopush score lift --week {a.out}")
    return 0


def _lift_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    tab = Table(title="lift: engine estimate vs truth")
    for col in ("seed", "campaign", "pushed", "held out", "lift pp [95% CI]", "true pp",
                "realized pp", "covered", "redeemed / truth", "counts exact"):
        tab.add_column(col, justify="left" if col == "campaign" else "right")
    for r in rows:
        ci = r["ci95"]
        est = (f"{r['estimate'] * 100:+.2f} [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]"
               if ci else r["status"])
        c = r["counts"]
        tab.add_row(
            str(r["seed"]), r["campaign_id"], f"{c['pushed_users']:,}", f"{c['holdout_users']:,}",
            est, f"{r['true_uplift'] * 100:+.2f}",
            "-" if r.get("sample_uplift") is None else f"{r['sample_uplift'] * 100:+.2f}",
            {True: "yes", False: "[red]NO[/]", None: "-"}[r["covered"]],
            f"{c['redemptions']} / {r['truth']['redemptions']}",
            "yes" if r["exact"] else "[red]" + ", ".join(r["mismatched"]) + "[/]",
        )
    return tab


def _coverage_lines(cov: dict[str, Any]) -> list[str]:
    out = []
    for cid, v in cov["per_campaign"].items():
        z = ""
        if v.get("z_mean") is not None and v.get("z_sd") is not None:
            z = f"; standardised error mean {v['z_mean']:+.2f}, sd {v['z_sd']:.2f}"
        out.append(f"{cid}: the 95% interval covers the configured uplift in "
                   f"{v['covered']}/{v['of']} seeds{_calibrated(v)}, the week's realized uplift "
                   f"in {v.get('covered_sample', 0)}/{v['of']}{z}")
    out.append(f"all: {cov['covered']}/{cov['of']}{_calibrated(cov)} (realized: "
               f"{cov.get('covered_sample', 0)}/{cov['of']}); attribution counts equal the truth "
               f"in {cov['exact']}/{cov['rows']}")
    return out


def _calibrated(v: dict[str, Any]) -> str:
    if v.get("expected") is None:
        return ""
    return (f" (an exact 95% interval at these sizes: {v['expected']:.1f} expected, "
            f"P(<= {v['covered']}) = {v['p_at_most']:.3f})")


def _cmd_score_lift(a: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from simulator.lift import coverage, render_png, run_seeds, score_week
    from simulator.week import WeekModel, replay_week

    if a.week is not None:
        week = Path(a.week)
        run = Path(a.run) if a.run else week / "run"
        if not a.run:
            replay_week(week, run)
        res = score_week(week / "truth.json", run)
        rows = res["campaigns"]
        res["coverage"] = coverage(rows)
    else:
        import tempfile

        seeds = list(range(a.first_seed, a.first_seed + a.seeds))
        model = WeekModel() if a.users is None else WeekModel(users=a.users)
        work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="geopush-lift-"))
        if a.quiet or a.json:
            res = run_seeds(seeds, work, model=model, keep=a.keep)
        else:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            with Progress(TextColumn("[bold]lift[/] {task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeRemainingColumn(), TimeElapsedColumn(),
                          console=Console(stderr=True)) as prog:
                task = prog.add_task("", total=len(seeds))

                def step(seed: int, phase: str) -> None:
                    if phase == "done":
                        prog.advance(task)
                    else:
                        prog.update(task, description=f"seed {seed}: {phase}")

                res = run_seeds(seeds, work, model=model, keep=a.keep, on_step=step)
        if not a.work and not a.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        rows = res["rows"]
    if a.png:
        render_png(rows, a.png)
    if a.json:
        print(json.dumps(res))
        return 0
    con = Console()
    if not con.is_terminal:
        con = Console(width=140)  # a file or pipe: do not squeeze the table to 80 columns
    con.print(_lift_table(rows))
    for line in _coverage_lines(res["coverage"]):
        con.print(line)
    if "seconds_per_seed" in res:
        ts = res["seconds_per_seed"]
        con.print(f"{len(ts)} seeds in {sum(ts):.0f} s ({sum(ts) / len(ts):.1f} s per seed)")
    if a.png:
        con.print(f"intervals drawn in {a.png}")
    return 0
