"""`geopush bench start`: how long the engine takes from process start to ready, cold and from
the fences snapshot, against today's path, in the same run.

Workload (seeded): a ``fences.synth`` city of --stores fences (70% circles, 30% polygons of
4-20 vertices) with a fifth of the stores given a WiFi AP, a beacon and an NFC tag, written as a
GeoJSON catalog (one feature per line, as ``geopush fences`` writes them) plus a campaigns file
over every merchant; not timed.

Each measured start is a fresh Python process, so imports, the numba kernel cache and the page
cache are what a restart sees (the kernels are compiled and cached by a first, untimed process).
A start does what ``geopush run`` does before it connects: import the engine, load the fences,
load the campaigns and check them against the catalog, and warm the core (a throwaway Core over
a few fixes: the numba kernels load from their cache). It stops short of opening the state and
connecting to the broker, which do not depend on the catalog.

* **baseline**: the reference path: ``load_catalog(bulk=False)`` (feature by feature) +
  ``FenceIndex``;
* **rows**: the bulk validator as it was before the columns (``load_catalog(columns=False)``:
  fences.fastload row by row, a Store object per feature) + ``FenceIndex`` over the stores;
* **cold**: the columns (``load_catalog``: fences.fastload.load_columns, Store objects made on
  first access) + ``FenceIndex`` from the columns + writing the snapshot
  (``fences.snapshot.save``, sha256 of the catalog included);
* **snapshot**: ``load_index`` with the snapshot written by the cold start (sha256 of the
  catalog checked in a thread meanwhile); best of --repeat.

Times are wall seconds and CPU seconds of the process (all threads). Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

UUID = "B1E55ED0-0000-4000-8000-00000000BEEF"
STEPS = (
    "imports", "catalog", "index", "snapshot_save", "snapshot_load", "campaigns", "warm_up", "online",
)  # fmt: skip

_CHILD = r"""
import json, sys, time, resource
w0, c0 = time.perf_counter(), time.process_time()
mark = {}
def lap(name):
    mark[name] = (time.perf_counter() - w0, time.process_time() - c0)
from engine.campaigns import catalog_warnings, load_campaigns
from engine.daemon.loading import warm_up
from fences.catalog import load_catalog
from fences.index import FenceIndex
from fences.snapshot import load_index
lap("imports")
mode, source, campaigns, snapshot = sys.argv[1:5]
info = None
if mode == "snapshot":
    index, info = load_index(source, snapshot)
    if info.source != "snapshot":
        raise SystemExit(f"the snapshot was not used: {info.reason}")
    lap("snapshot_load")
else:
    catalog = load_catalog(source, bulk=mode != "baseline", columns=mode == "cold")
    lap("catalog")
    index = FenceIndex(catalog)
    lap("index")
    if mode == "cold":
        from fences.snapshot import save, source_digest
        save(index, snapshot, source_digest(source))
        lap("snapshot_save")
camps = load_campaigns(campaigns)
catalog_warnings(camps, index.catalog)
lap("campaigns")
warm_up(index, camps)
lap("warm_up")
out = {"mode": mode, "stores": len(index), "marks": mark,
       "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
print(json.dumps(out))
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``start`` to ``geopush bench``."""
    p = sub.add_parser(
        "start",
        help="time from process start to ready: today's catalog load vs bulk validation vs the snapshot",
        description=(
            "Write a seeded synthetic catalog of --stores fences, then time fresh processes that "
            "load it as `geopush run` does before connecting (imports, fences, campaigns, "
            "kernel warm-up): today's feature-by-feature path, the bulk validator writing the "
            "snapshot, and a restart from the snapshot (best of --repeat). Figures and caveats: "
            "docs/benchmarks.md."
        ),
    )
    p.add_argument("--stores", type=int, default=50_000, help="store fences (default 50000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic city (default 0)")
    p.add_argument(
        "--repeat", type=int, default=3, help="snapshot restarts; the best is reported (default 3)"
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the catalog and snapshot (default: a temporary directory, removed)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_run)


def _write_workload(n: int, seed: int, where: Path) -> tuple[Path, Path]:
    import numpy as np

    from fences.catalog import dump_catalog
    from fences.synth import synth_city

    stores = synth_city(n, seed=seed).stores
    rng = np.random.default_rng(seed + 7)
    for k in np.flatnonzero(rng.random(n) < 0.2).tolist():
        stores[k] = replace(
            stores[k],
            wifi=(":".join(f"{(k >> s) & 0xFF:02x}" for s in (40, 32, 24, 16, 8, 0)),),
            beacons=(f"{UUID}:{k // 65536}:{k % 65536}",),
            nfc=(f"nfc-{k}",),
        )
    source = where / "stores.geojson"
    dump_catalog(stores, source)
    merchants = sorted({s.merchant_id for s in stores})
    camps = where / "campaigns.json"
    camps.write_text(
        json.dumps(
            {
                "campaigns": [
                    {
                        "id": f"c-{m}",
                        "merchant_id": m,
                        "trigger": "enter",
                        "coupon": {
                            "title": "Welcome -10%",
                            "value": 1.0,
                            "currency": "EUR",
                            "expires_in_s": 3600,
                        },
                    }
                    for m in merchants[:1000]
                ]
            }
        )
    )
    return source, camps


def _child(mode: str, source: Path, camps: Path, snapshot: Path) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(source), str(camps), str(snapshot)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} start failed:\n{proc.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _steps(r: dict[str, Any]) -> dict[str, Any]:
    """Per step (imports, fences, campaigns, warm_up) wall and CPU seconds, plus totals."""
    prev = (0.0, 0.0)
    out: dict[str, Any] = {}
    for name, (w, c) in r["marks"].items():
        out[name] = {"wall_s": round(w - prev[0], 3), "cpu_s": round(c - prev[1], 3)}
        prev = (w, c)
    out["online"] = {"wall_s": round(prev[0], 3), "cpu_s": round(prev[1], 3)}
    out["rss_mb"] = round(r["rss_mb"], 1)
    return out


def measure(n: int, seed: int = 0, repeat: int = 3, where: Path | None = None) -> dict[str, Any]:
    """Run the benchmark and return its figures (the keys --json prints)."""
    with tempfile.TemporaryDirectory(prefix="geopush-bench-start-") as tmp:
        d = Path(where or tmp)
        d.mkdir(parents=True, exist_ok=True)
        source, camps = _write_workload(n, seed, d)
        snapshot = d / "state.sqlite.fences.snapshot"
        res: dict[str, Any] = {
            "stores": n,
            "seed": seed,
            "catalog_mb": round(source.stat().st_size / 1e6, 1),
        }
        scratch = d / "warm.snapshot"
        _child("cold", source, camps, scratch)  # compiles and caches the kernels, not timed
        scratch.unlink(missing_ok=True)
        res["baseline"] = _steps(_child("baseline", source, camps, snapshot))
        res["rows"] = _steps(_child("rows", source, camps, snapshot))
        snapshot.unlink(missing_ok=True)
        res["cold"] = _steps(_child("cold", source, camps, snapshot))
        res["snapshot_mb"] = round(snapshot.stat().st_size / 1e6, 1)
        runs = [_steps(_child("snapshot", source, camps, snapshot)) for _ in range(max(repeat, 1))]
        res["snapshot"] = min(runs, key=lambda r: r["online"]["wall_s"])
        b, c, s = res["baseline"], res["cold"], res["snapshot"]
        res["speedup"] = {
            "catalog_cpu": round(b["catalog"]["cpu_s"] / max(c["catalog"]["cpu_s"], 1e-9), 2),
            "catalog_cpu_vs_rows": round(
                res["rows"]["catalog"]["cpu_s"] / max(c["catalog"]["cpu_s"], 1e-9), 2
            ),
            "online_wall_cold": round(b["online"]["wall_s"] / max(c["online"]["wall_s"], 1e-9), 2),
            "online_wall_snapshot": round(
                b["online"]["wall_s"] / max(s["online"]["wall_s"], 1e-9), 2
            ),
        }
    return res


def _run(args: argparse.Namespace) -> int:
    if args.stores < 1 or args.repeat < 1:
        print("geopush bench start: --stores and --repeat must be >= 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = measure(args.stores, args.seed, args.repeat, args.dir)
    res["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(res))
    else:
        _print_table(res)
    return 0


def _print_table(r: dict[str, Any]) -> None:
    cols = ("baseline", "rows", "cold", "snapshot")
    print(
        f"geopush bench start: {r['stores']:,} stores ({r['catalog_mb']} MB GeoJSON, snapshot "
        f"{r['snapshot_mb']} MB); fresh processes; wall / CPU seconds"
    )
    print(f"{'step':<24}" + "".join(f"{c:>22}" for c in cols))
    for step in STEPS:
        cells = "".join(
            f"{r[c][step]['wall_s']:>12.2f} / {r[c][step]['cpu_s']:<7.2f}"
            if step in r[c]
            else f"{'-':>14}{'':8}"
            for c in cols
        )
        print(f"{step:<24}{cells}")
    print(f"{'peak RSS (MB)':<24}" + "".join(f"{r[c]['rss_mb']:>22.0f}" for c in cols))
    sp = r["speedup"]
    after_imports = r["snapshot"]["online"]["wall_s"] - r["snapshot"]["imports"]["wall_s"]
    print(
        f"catalog load + validation: {sp['catalog_cpu']}x less CPU than the reference, "
        f"{sp['catalog_cpu_vs_rows']}x less than the rows; time to online "
        f"{sp['online_wall_cold']}x faster cold, {sp['online_wall_snapshot']}x from the snapshot "
        f"({after_imports:.2f} s after the imports)"
    )
