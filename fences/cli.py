"""``geopush fences ...``: check a catalog, match fixes against it, import OpenStreetMap shops.

Heavy imports (numpy, shapely, osmium, the index) stay inside the handlers so that
``geopush --help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import warnings
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from fences.errors import FencesError

if TYPE_CHECKING:
    from fences.errors import Problem
    from fences.store import Store

# Fixes matched per call of FenceIndex.query_many: big enough to amortise the call, small enough
# to keep memory flat and the progress bar moving.
CHUNK = 65_536
# Show a progress bar from this many fixes on (and only when stderr is a terminal).
PROGRESS_FROM = 200_000
MAX_ROW_ERRORS = 20


class FixesCsvError(FencesError):
    """A fixes CSV that cannot be read; the message lists the bad lines."""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``fences check|match|import-osm``."""
    fences = sub.add_parser(
        "fences",
        help="store catalogs: check, match fixes, import OpenStreetMap shops",
        description="Store catalogs (GeoJSON, one Feature per store; see docs/catalog.md).",
    )
    fsub = fences.add_subparsers(title="fences commands", metavar="SUBCOMMAND")
    fences.set_defaults(func=lambda _a: _usage(fences))

    check = fsub.add_parser(
        "check",
        help="validate a catalog and report every problem",
        description=(
            "Validate a store catalog. Prints every problem (feature index, store_id, what to do), "
            "every warning (coordinates that look swapped: a store far from its tz or from its "
            "merchant's other stores) and a summary line; exits 1 when there is any problem (or, "
            "with --strict, any warning), 0 otherwise."
        ),
    )
    check.add_argument("file", metavar="FILE", help="catalog: a GeoJSON FeatureCollection")
    check.add_argument(
        "--max-problems",
        type=int,
        default=1000,
        metavar="N",
        help="print at most N problems and warnings (all are counted; default 1000)",
    )
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too, not only on problems"
    )
    check.set_defaults(func=cmd_check)

    match = fsub.add_parser(
        "match",
        help="match GPS fixes (CSV lon,lat[,acc]) against a catalog",
        description=(
            "Write CSV fix,store_id,distance_m for every fix inside a fence or within its accuracy "
            "(+ margin) of one. fix is the 0-based data row of FIXES.csv; distance_m is the signed "
            "distance to the fence boundary in metres, negative inside (a fix exactly on the "
            "boundary counts as inside)."
        ),
    )
    match.add_argument("file", metavar="FILE", help="catalog: a GeoJSON FeatureCollection")
    match.add_argument(
        "fixes",
        metavar="FIXES.csv",
        help="CSV with header lon,lat or lon,lat,acc (degrees, metres; an empty acc means 0)",
    )
    match.add_argument("-o", "--output", metavar="OUT.csv", help="write here instead of stdout")
    match.add_argument(
        "--margin",
        type=float,
        default=0.0,
        metavar="M",
        help="extra metres added to each fix's accuracy (default 0)",
    )
    match.set_defaults(func=cmd_match)

    osm = fsub.add_parser(
        "import-osm",
        help="turn OpenStreetMap shops, malls and amenities into a catalog",
        description=(
            "Read a GeoJSON export of OpenStreetMap or an .osm.pbf and write a catalog of its "
            "shops (shop=*), malls (shop=mall), amenities (amenity=*, minus street furniture) and "
            "retail buildings. Polygons stay polygons, points become circles. Objects the "
            "validator rejects are listed on stderr and left out, so the output passes "
            "`geopush fences check`."
        ),
    )
    osm.add_argument("file", metavar="FILE", help="FILE.geojson or FILE.osm.pbf")
    osm.add_argument("-o", "--output", metavar="OUT", help="catalog to write (default: stdout)")
    osm.add_argument(
        "--radius",
        type=float,
        default=None,
        metavar="M",
        help="radius in metres of the circle made for an OSM point (default 25)",
    )
    osm.add_argument(
        "--all",
        action="store_true",
        help="import every point and polygon, not only shops/amenities (for non-OSM files)",
    )
    osm.set_defaults(func=cmd_import_osm)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ------------------------------------------------------------------------------------ check


def summary(stores: list[Store]) -> str:
    circles = sum(1 for s in stores if s.is_circle)
    return (
        f"{len(stores)} valid stores: {circles} circles, {len(stores) - circles} polygons, "
        f"{sum(len(s.wifi) for s in stores)} wifi BSSIDs, "
        f"{sum(len(s.beacons) for s in stores)} beacons, {sum(len(s.nfc) for s in stores)} NFC tags"
    )


def cmd_check(args: argparse.Namespace) -> int:
    from fences.catalog import check_stores, read_json_checked
    from fences.errors import CatalogError

    found: list[Problem]
    stores: list[Store] = []
    try:
        obj, found = read_json_checked(args.file)
    except CatalogError as exc:
        found = exc.problems
        n_features = 0
    else:
        stores, problems = check_stores(obj)
        # repeated members first within a feature (stable sort), file-level ones first of all
        found = sorted(found + problems, key=lambda p: -1 if p.index is None else p.index)
        feats = obj.get("features") if isinstance(obj, dict) else None
        n_features = len(feats) if isinstance(feats, list) else 0
    for p in found[: args.max_problems]:
        print(p)
    if len(found) > args.max_problems:
        print(f"... and {len(found) - args.max_problems} more (use --max-problems)")
    problems = [p for p in found if not p.warning]
    warns = len(found) - len(problems)
    bad = len({p.index for p in problems if p.index is not None})
    status = (
        "OK"
        if not problems
        else f"{len(problems)} problem(s)" + (f" in {bad} feature(s)" if bad else "")
    )
    if warns:
        status += f", {warns} warning(s)" + (" (--strict: failing)" if args.strict else "")
    print(f"{args.file}: {n_features} features, {summary(stores)}; {status}")
    return 1 if problems or (warns and args.strict) else 0


# ------------------------------------------------------------------------------------ match


def _float(text: str, line: int, col: str) -> tuple[float, str | None]:
    try:
        v = float(text)
    except ValueError:
        return math.nan, f"line {line}: {col} {text!r} is not a number"
    if not math.isfinite(v):
        return v, f"line {line}: {col} {text!r} must be a finite number"
    return v, None


def read_fixes(fh: IO[str], name: str) -> tuple[list[float], list[float], list[float]]:
    """lon, lat, acc lists from a CSV with header lon,lat[,acc]; FixesCsvError names bad lines."""
    reader = csv.reader(fh)
    header = [h.strip().lower() for h in next(reader, [])]
    if header not in (["lon", "lat"], ["lon", "lat", "acc"]):
        raise FixesCsvError(
            f"{name}: line 1 must be the header lon,lat or lon,lat,acc, found {','.join(header)!r}; "
            "add or fix the header (GeoJSON order: longitude first)"
        )
    width = len(header)
    lons: list[float] = []
    lats: list[float] = []
    accs: list[float] = []
    errors: list[str] = []
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != width:
            errors.append(
                f"line {line}: expected {width} columns ({','.join(header)}), found {len(row)}"
            )
        else:
            lon, e1 = _float(row[0], line, "lon")
            lat, e2 = _float(row[1], line, "lat")
            acc, e3 = (
                (0.0, None) if width == 2 or not row[2].strip() else _float(row[2], line, "acc")
            )
            err = e1 or e2 or e3
            if err is None and not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
                err = f"line {line}: ({lon}, {lat}) is out of range; lon must be in [-180, 180] and lat in [-90, 90] (columns are lon,lat)"
            if err is None and acc < 0:
                err = f"line {line}: acc {acc} must be >= 0 metres"
            if err is None:
                lons.append(lon)
                lats.append(lat)
                accs.append(acc)
                continue
            errors.append(err)
        if len(errors) >= MAX_ROW_ERRORS:
            break
    if errors:
        count = (
            f"{len(errors)} bad row(s)"
            if len(errors) < MAX_ROW_ERRORS
            else f"the first {len(errors)} bad rows"
        )
        raise FixesCsvError(f"{name}: {count}; fix them and rerun:\n  " + "\n  ".join(errors))
    return lons, lats, accs


def load_fixes(path: str) -> tuple[Any, Any, Any]:
    """lon, lat, acc as float64 arrays from a fixes CSV.

    Fast path: numpy's C parser for plain numeric files. Anything it cannot take (quotes, empty
    acc, bad values, out-of-range rows) goes through ``read_fixes``, which names the bad lines.
    """
    import numpy as np

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = [h.strip().lower() for h in fh.readline().split(",")]
            if header in (["lon", "lat"], ["lon", "lat", "acc"]):
                try:
                    with warnings.catch_warnings():  # "input contained no data" on header-only
                        warnings.simplefilter("ignore", UserWarning)
                        arr = np.loadtxt(
                            fh, delimiter=",", ndmin=2, dtype=np.float64, comments=None
                        )
                except ValueError:
                    arr = None
                if arr is not None and arr.size == 0:
                    arr = arr.reshape(0, len(header))
                if arr is not None and _plausible(arr, len(header)):
                    acc = arr[:, 2] if len(header) == 3 else np.zeros(len(arr))
                    return arr[:, 0].copy(), arr[:, 1].copy(), np.ascontiguousarray(acc)
            fh.seek(0)
            lons, lats, accs = read_fixes(fh, path)
    except OSError as exc:
        raise FixesCsvError(f"cannot read {path!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise FixesCsvError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    return np.asarray(lons), np.asarray(lats), np.asarray(accs)


def _plausible(arr: Any, width: int) -> bool:
    import numpy as np

    if arr.shape[1] != width or not np.isfinite(arr).all():
        return False
    ok = (np.abs(arr[:, 0]) <= 180.0).all() and (np.abs(arr[:, 1]) <= 90.0).all()
    return bool(ok and (width == 2 or (arr[:, 2] >= 0).all()))


def _chunks(n: int, show: bool) -> Iterator[tuple[int, int]]:
    if not show:
        for lo in range(0, n, CHUNK):
            yield lo, min(n, lo + CHUNK)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "matching",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=_stderr_console(),
    ) as bar:
        task = bar.add_task("fixes", total=n)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            yield lo, hi
            bar.update(task, completed=hi)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def cmd_match(args: argparse.Namespace) -> int:

    from fences.catalog import load_catalog
    from fences.index import FenceIndex

    if not (math.isfinite(args.margin) and args.margin >= 0):
        raise FixesCsvError(f"--margin must be >= 0 metres, got {args.margin}")
    catalog = load_catalog(args.file)
    x, y, a = load_fixes(args.fixes)
    index = FenceIndex(catalog)
    ids = [s.store_id for s in catalog.stores]
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    matched = 0
    try:
        out.write("fix,store_id,distance_m\n")
        show = len(x) >= PROGRESS_FROM and sys.stderr.isatty()
        for lo, hi in _chunks(len(x), show):
            fix, slot, dist = index.query_many(x[lo:hi], y[lo:hi], a[lo:hi], margin_m=args.margin)
            matched += len(fix)
            out.writelines(
                f"{f + lo},{_csv_field(ids[s])},{d:.3f}\n"
                for f, s, d in zip(fix.tolist(), slot.tolist(), dist.tolist(), strict=True)
            )
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{len(x)} fixes, {matched} matches against {len(catalog)} stores", file=sys.stderr)
    return 0


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


# ------------------------------------------------------------------------------------ import-osm


def cmd_import_osm(args: argparse.Namespace) -> int:
    from fences.catalog import MAX_RADIUS_M, MIN_RADIUS_M, dump_catalog, write_catalog
    from fences.osm import DEFAULT_POINT_RADIUS_M, import_osm

    radius = DEFAULT_POINT_RADIUS_M if args.radius is None else args.radius
    if not MIN_RADIUS_M <= radius <= MAX_RADIUS_M:
        raise FencesError(
            f"--radius must be {MIN_RADIUS_M:g} to {MAX_RADIUS_M:g} metres, got {radius:g}"
        )
    result = import_osm(args.file, include_all=args.all, point_radius_m=radius)
    for p in result.skipped[:MAX_ROW_ERRORS]:
        print(f"skipped: {p}", file=sys.stderr)
    if len(result.skipped) > MAX_ROW_ERRORS:
        print(f"skipped: ... and {len(result.skipped) - MAX_ROW_ERRORS} more", file=sys.stderr)
    if not result.stores:
        hint = "" if args.all else "; use --all to import every point and polygon"
        raise FencesError(
            f"{args.file}: no shops, malls or amenities found among {result.read} objects{hint}"
        )
    if args.output:
        dump_catalog(result.stores, args.output)
    else:
        write_catalog(result.stores, sys.stdout)
    print(
        f"{args.file}: read {result.read} objects, wrote {summary(result.stores)}"
        f"{'' if not args.output else ' to ' + args.output}; skipped {len(result.skipped)}",
        file=sys.stderr,
    )
    return 0
