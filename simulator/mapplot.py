"""A PNG map of a city run: store fences, a sample of user paths, visits and pushes.

Pure files in, one PNG out (matplotlib, Agg backend: no display needed), so it serves the demo,
a replay's output directory, or anyone's own run:

    render_map("map.png", stores="stores.geojson", trace="trace.jsonl",
               visits="visits.jsonl", pushes="pushes.jsonl")

Coordinates are drawn in lon/lat degrees with the axes' aspect set to 1/cos(latitude), so circles
look round and distances look right at city scale. Circles are drawn from their radius in metres.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.errors import GeopushError

_M_PER_DEG_LAT = 111_320.0
_CIRCLE_VERTICES = 48

# Colours chosen to stay readable on white and for common colour-vision deficiencies.
_FENCE_CIRCLE = "#4c72b0"
_FENCE_POLY = "#8172b3"
_PATH = "#7f7f7f"
_VISIT = "#dd8452"
_PUSH = "#c44e52"


class MapError(GeopushError):
    """The map could not be drawn (unreadable stores file, nothing to draw, unwritable output)."""


@dataclass
class MapStats:
    """What the map shows (also used for its title)."""

    stores: int = 0
    circles: int = 0
    polygons: int = 0
    paths: int = 0
    visits: int = 0
    visited_stores: int = 0
    pushes: int = 0
    skipped_lines: int = 0
    out: Path | None = None


@dataclass
class _Fences:
    circles: list[np.ndarray] = field(default_factory=list)  # each (n, 2) lon/lat ring
    polygons: list[np.ndarray] = field(default_factory=list)
    polygon_stores: int = 0
    centroid: dict[str, tuple[float, float]] = field(default_factory=dict)


def _circle_ring(lon: float, lat: float, radius_m: float) -> np.ndarray:
    """Vertices of a circle of ``radius_m`` metres (local equirectangular, fine at fence scale)."""
    t = np.linspace(0.0, 2.0 * math.pi, _CIRCLE_VERTICES, endpoint=False)
    dlat = radius_m / _M_PER_DEG_LAT
    dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
    return np.column_stack([lon + dlon * np.cos(t), lat + dlat * np.sin(t)])


def _load_fences(path: Path) -> _Fences:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise MapError(f"cannot read stores file {path}: {exc}") from exc
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise MapError(f"{path} is not a GeoJSON FeatureCollection (no 'features' list)")
    fences = _Fences()
    for i, feat in enumerate(features):
        props = feat.get("properties") or {}
        geom = feat.get("geometry") or {}
        sid = str(props.get("store_id", i))
        kind = geom.get("type")
        coords: Any = geom.get("coordinates") or []
        if kind == "Point" and props.get("radius_m"):
            lon, lat = float(coords[0]), float(coords[1])
            fences.circles.append(_circle_ring(lon, lat, float(props["radius_m"])))
            fences.centroid[sid] = (lon, lat)
        elif kind in ("Polygon", "MultiPolygon"):
            parts = [coords] if kind == "Polygon" else coords
            rings = [np.asarray(part[0], dtype=float)[:, :2] for part in parts if part]
            if not rings:
                continue
            # Holes are not drawn: at city scale they are invisible, and outlines suffice.
            fences.polygons.extend(rings)
            fences.polygon_stores += 1
            allpts = np.vstack(rings)
            fences.centroid[sid] = (float(allpts[:, 0].mean()), float(allpts[:, 1].mean()))
    return fences


def _jsonl(
    path: Path | None, stats: MapStats, must_contain: bytes = b""
) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; bad lines are counted, not fatal (the map is best effort)."""
    if path is None or not Path(path).exists():
        return
    with open(path, "rb") as fh:
        for line in fh:
            if must_contain and must_contain not in line:
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                if line.strip():
                    stats.skipped_lines += 1
                continue
            if isinstance(rec, dict):
                yield rec


def _gps_fixes(rec: dict[str, Any]) -> Iterator[tuple[str, float, float, float]]:
    """(user, ts, lon, lat) of every GPS fix in a trace record (batches included)."""
    if rec.get("type") == "batch":
        user = rec.get("user")
        for ev in rec.get("events") or ():
            if isinstance(ev, dict):
                ev.setdefault("user", user)
                yield from _gps_fixes(ev)
    elif rec.get("type") == "gps":
        try:
            yield str(rec["user"]), float(rec["ts"]), float(rec["lon"]), float(rec["lat"])
        except (KeyError, TypeError, ValueError):
            return


def _load_paths(
    trace: Path | None, wanted: set[str], max_paths: int, stats: MapStats
) -> tuple[dict[str, list[tuple[float, float, float]]], set[str]]:
    """Fixes of the first ``max_paths`` users seen (a fair sample: traces are time-ordered) and
    of every user in ``wanted`` (pushed users, to place their pushes)."""
    fixes: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    sampled: set[str] = set()
    for rec in _jsonl(trace, stats, must_contain=b"gps"):
        for user, ts, lon, lat in _gps_fixes(rec):
            if user not in sampled and len(sampled) < max_paths:
                sampled.add(user)
            if user in sampled or user in wanted:
                fixes[user].append((ts, lon, lat))
    for pts in fixes.values():
        pts.sort()
    return fixes, sampled


def _position_at(fixes: list[tuple[float, float, float]], ts: float) -> tuple[float, float] | None:
    """The user's last fix at or before ``ts`` (else the first one after)."""
    if not fixes:
        return None
    i = bisect.bisect_right(fixes, (ts, math.inf, math.inf)) - 1
    _, lon, lat = fixes[max(i, 0)]
    return lon, lat


def render_map(
    out: str | Path,
    *,
    stores: str | Path,
    trace: str | Path | None = None,
    visits: str | Path | None = None,
    pushes: str | Path | None = None,
    title: str = "geopush demo",
    subtitle: str = "",
    max_paths: int = 30,
    dpi: int = 120,
) -> MapStats:
    """Draw the map to ``out`` (PNG) and return what it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.lines import Line2D

    stats = MapStats()
    fences = _load_fences(Path(stores))
    stats.circles, stats.polygons = len(fences.circles), fences.polygon_stores
    stats.stores = len(fences.centroid)

    push_recs = list(_jsonl(Path(pushes) if pushes else None, stats))
    enters = Counter(
        str(r.get("store_id"))
        for r in _jsonl(Path(visits) if visits else None, stats)
        if r.get("event") == "enter"
    )
    stats.visits = sum(enters.values())
    stats.pushes = len(push_recs)
    pushed_users = {str(r.get("user")) for r in push_recs}
    fixes, sampled = _load_paths(Path(trace) if trace else None, pushed_users, max_paths, stats)
    stats.paths = len(sampled)

    fig, ax = plt.subplots(figsize=(10, 10))
    all_rings = fences.circles + fences.polygons
    if fences.circles:
        ax.add_collection(
            PolyCollection(
                fences.circles,
                facecolors=_FENCE_CIRCLE,
                edgecolors=_FENCE_CIRCLE,
                alpha=0.25,
                linewidths=0.5,
                zorder=1,
            )
        )
    if fences.polygons:
        ax.add_collection(
            PolyCollection(
                fences.polygons,
                facecolors=_FENCE_POLY,
                edgecolors=_FENCE_POLY,
                alpha=0.30,
                linewidths=0.6,
                zorder=1,
            )
        )
    segs = [np.asarray([(lon, lat) for _, lon, lat in fixes[u]]) for u in sorted(sampled)]
    segs = [s for s in segs if len(s) >= 2]
    if segs:
        ax.add_collection(LineCollection(segs, colors=_PATH, alpha=0.55, linewidths=0.7, zorder=2))

    visited = [(fences.centroid[s], n) for s, n in enters.items() if s in fences.centroid]
    stats.visited_stores = len(visited)
    if visited:
        xy = np.asarray([c for c, _ in visited])
        sizes = 12 + 10 * np.sqrt(np.asarray([n for _, n in visited], dtype=float))
        ax.scatter(
            xy[:, 0],
            xy[:, 1],
            s=sizes,
            c=_VISIT,
            edgecolors="white",
            linewidths=0.4,
            alpha=0.9,
            zorder=3,
        )

    push_xy = []
    for r in push_recs:
        pos = _position_at(fixes.get(str(r.get("user")), []), float(r.get("ts") or 0.0))
        if pos is None:
            pos = fences.centroid.get(str(r.get("store_id")))
        if pos is not None:
            push_xy.append(pos)
    if push_xy:
        pxy = np.asarray(push_xy)
        ax.scatter(
            pxy[:, 0],
            pxy[:, 1],
            s=46,
            marker="*",
            c=_PUSH,
            edgecolors="black",
            linewidths=0.3,
            zorder=4,
        )

    # Frame everything drawn; pad a little.
    pts = [r for r in all_rings] + segs + ([np.asarray(push_xy)] if push_xy else [])
    if not pts:
        plt.close(fig)
        raise MapError(f"nothing to draw: {stores} has no stores and there are no paths")
    allp = np.vstack(pts)
    (x0, y0), (x1, y1) = allp.min(axis=0), allp.max(axis=0)
    coslat = max(math.cos(math.radians((y0 + y1) / 2)), 1e-6)
    # Never thinner than 1:2 on paper: a city along one street would become a sliver.
    w_m, h_m = (x1 - x0) * coslat, y1 - y0
    if h_m < w_m / 2:
        grow = (w_m / 2 - h_m) / 2
        y0, y1 = y0 - grow, y1 + grow
    elif w_m < h_m / 2:
        grow = (h_m / 2 - w_m) / 2 / coslat
        x0, x1 = x0 - grow, x1 + grow
    padx, pady = max((x1 - x0) * 0.03, 1e-4), max((y1 - y0) * 0.03, 1e-4)
    ax.set_xlim(x0 - padx, x1 + padx)
    ax.set_ylim(y0 - pady, y1 + pady)
    ax.set_aspect(1.0 / coslat)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.ticklabel_format(useOffset=False)
    ax.grid(True, linewidth=0.3, alpha=0.4)

    legend = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            ms=9,
            mfc=_FENCE_CIRCLE,
            mec=_FENCE_CIRCLE,
            alpha=0.4,
            label=f"circle fences ({stats.circles})",
        ),
        Line2D(
            [],
            [],
            marker="s",
            ls="",
            ms=9,
            mfc=_FENCE_POLY,
            mec=_FENCE_POLY,
            alpha=0.45,
            label=f"polygon fences ({stats.polygons})",
        ),
        Line2D([], [], color=_PATH, lw=1.2, label=f"user paths (sample of {stats.paths})"),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            ms=7,
            mfc=_VISIT,
            mec="white",
            label=f"visited stores ({stats.visited_stores}; size = visits)",
        ),
        Line2D(
            [],
            [],
            marker="*",
            ls="",
            ms=11,
            mfc=_PUSH,
            mec="black",
            label=f"pushes ({stats.pushes}, at the user's position)",
        ),
    ]
    # Below the axes: a legend inside would hide part of the city.
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, fontsize=8,
              frameon=False)  # fmt: skip
    heading = f"{title}: {stats.stores} stores, {stats.visits} visits, {stats.pushes} pushes"
    ax.set_title(heading + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    fig.tight_layout()

    out_path = Path(out)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.15)
    except OSError as exc:
        raise MapError(f"cannot write the map to {out_path}: {exc}") from exc
    finally:
        plt.close(fig)
    stats.out = out_path
    return stats
