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
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from engine.errors import GeopushError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
    labelled_stores: int = 0  # stores named on the map (the most pushed / visited, not crowded)
    pushes: int = 0
    skipped_lines: int = 0
    out: Path | None = None


@dataclass
class _Fences:
    circles: list[np.ndarray] = field(default_factory=list)  # each (n, 2) lon/lat ring
    polygons: list[np.ndarray] = field(default_factory=list)
    polygon_stores: int = 0
    centroid: dict[str, tuple[float, float]] = field(default_factory=dict)
    name: dict[str, str] = field(default_factory=dict)


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
        if props.get("name"):
            fences.name[sid] = str(props["name"])
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
    max_labels: int = 20,
    dpi: int = 120,
) -> MapStats:
    """Draw the map to ``out`` (PNG) and return what it shows."""
    plt = _pyplot()
    fig, stats = compose_map(stores=stores, trace=trace, visits=visits, pushes=pushes,
                             title=title, subtitle=subtitle, max_paths=max_paths,
                             max_labels=max_labels)  # fmt: skip
    try:
        stats.out = _save(fig, Path(out), dpi)
    finally:
        plt.close(fig)
    return stats


def compose_map(
    *,
    stores: str | Path,
    trace: str | Path | None = None,
    visits: str | Path | None = None,
    pushes: str | Path | None = None,
    title: str = "geopush demo",
    subtitle: str = "",
    max_paths: int = 30,
    max_labels: int = 20,
) -> tuple[Figure, MapStats]:
    """The map as a matplotlib figure (one axes), not saved: ``render_map`` saves it; tests read
    its artists. The caller closes it (``matplotlib.pyplot.close(fig)``)."""
    stats = MapStats()
    fences = _load_fences(Path(stores))
    stats.circles, stats.polygons = len(fences.circles), fences.polygon_stores
    stats.stores = len(fences.centroid)
    push_recs = list(_jsonl(_path(pushes), stats))
    enters = _enter_counts(_path(visits), stats)
    stats.visits = sum(enters.values())
    stats.pushes = len(push_recs)
    pushed_users = {str(r.get("user")) for r in push_recs}
    fixes, sampled = _load_paths(_path(trace), pushed_users, max_paths, stats)
    stats.paths = len(sampled)

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 10))
    try:
        _draw_fences(ax, fences)
        segs = _draw_paths(ax, fixes, sampled)
        stats.visited_stores = _draw_visits(ax, fences.centroid, enters)
        push_xy = _draw_pushes(ax, push_recs, fixes, fences.centroid)
        drawn = fences.circles + fences.polygons + segs + ([push_xy] if len(push_xy) else [])
        if not drawn:
            raise MapError(f"nothing to draw: {stores} has no stores and there are no paths")
        _frame(ax, np.vstack(drawn))
        pushed = Counter(str(r.get("store_id")) for r in push_recs)
        stats.labelled_stores = _draw_labels(ax, fences, enters, pushed, max_labels)
        _draw_legend(ax, stats, enters)
        _draw_title(ax, stats, title, subtitle)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig, stats


def _path(p: str | Path | None) -> Path | None:
    return Path(p) if p else None


def _enter_counts(visits: Path | None, stats: MapStats) -> Counter[str]:
    """Number of ``enter`` visit records per store id."""
    return Counter(
        str(r.get("store_id")) for r in _jsonl(visits, stats) if r.get("event") == "enter"
    )


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); imported late, it is slow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_fences(ax: Axes, fences: _Fences) -> None:
    from matplotlib.collections import PolyCollection

    for rings, colour, alpha, width in (
        (fences.circles, _FENCE_CIRCLE, 0.25, 0.5),
        (fences.polygons, _FENCE_POLY, 0.30, 0.6),
    ):
        if rings:
            ax.add_collection(PolyCollection(rings, facecolors=colour, edgecolors=colour,
                                             alpha=alpha, linewidths=width, zorder=1))  # fmt: skip


def _draw_paths(
    ax: Axes, fixes: dict[str, list[tuple[float, float, float]]], sampled: set[str]
) -> list[np.ndarray]:
    """Draw the sampled users' paths; returns their (n, 2) lon/lat polylines."""
    from matplotlib.collections import LineCollection

    segs = [np.asarray([(lon, lat) for _, lon, lat in fixes[u]]) for u in sorted(sampled)]
    segs = [s for s in segs if len(s) >= 2]
    if segs:
        ax.add_collection(LineCollection(segs, colors=_PATH, alpha=0.55, linewidths=0.7, zorder=2))
    return segs


def visit_dot_area(visits: float | np.ndarray) -> Any:
    """Area (points^2, scatter's ``s``) of a visited store's dot: grows with visits^0.75 up to
    a cap, so a busy store stands out without covering its neighbours. The legend uses it too,
    so its dots are the map's."""
    return np.minimum(6.0 + 24.0 * np.power(visits, 0.75), 200.0)


def _draw_visits(ax: Axes, centroid: dict[str, tuple[float, float]], enters: Counter[str]) -> int:
    """A dot on each visited store, its area growing with the visits; returns how many stores."""
    visited = [(centroid[s], n) for s, n in enters.items() if s in centroid]
    if visited:
        xy = np.asarray([c for c, _ in visited])
        sizes = visit_dot_area(np.asarray([n for _, n in visited], dtype=float))
        # Above the push stars (zorder 4): a store many pushes point at stays visible.
        ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c=_VISIT, edgecolors="white", linewidths=0.4,
                   alpha=0.85, zorder=5)  # fmt: skip
    return len(visited)


def _label_of(sid: str, name: str | None) -> str:
    if not name:
        return sid
    return name if sid in name else f"{name} ({sid})"


def _draw_labels(
    ax: Axes, fences: _Fences, enters: Counter[str], pushed: Counter[str], max_labels: int
) -> int:
    """Name the stores a merchant looks for first: the most pushed, then the most visited, at
    most ``max_labels``, skipping one whose label would sit on an earlier one (a mall's units
    get one label). Returns how many were named."""
    import matplotlib.patheffects as pe

    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    # A label's footprint, as a share of the map: about 14 characters wide, two lines high.
    half_w, half_h = (x1 - x0) * 0.07, (y1 - y0) * 0.018
    ranked = sorted(
        (s for s in set(enters) | set(pushed) if s in fences.centroid),
        key=lambda s: (-pushed[s], -enters[s], s),
    )
    placed: list[tuple[float, float]] = []
    halo = [pe.withStroke(linewidth=2.2, foreground="white")]
    for sid in ranked:
        if len(placed) >= max_labels:
            break
        x, y = fences.centroid[sid]
        if any(abs(x - px) < 2 * half_w and abs(y - py) < 2 * half_h for px, py in placed):
            continue
        placed.append((x, y))
        ax.annotate(_label_of(sid, fences.name.get(sid)), (x, y), xytext=(5, 4),
                    textcoords="offset points", fontsize=6.5, color="#222222",
                    path_effects=halo, zorder=6, annotation_clip=True)  # fmt: skip
    return len(placed)


def _draw_pushes(
    ax: Axes,
    push_recs: list[dict[str, Any]],
    fixes: dict[str, list[tuple[float, float, float]]],
    centroid: dict[str, tuple[float, float]],
) -> np.ndarray:
    """A hollow star where each push reached its user (else at its store), so the store under
    it stays visible; returns the (n, 2) points."""
    push_xy = []
    for r in push_recs:
        pos = _position_at(fixes.get(str(r.get("user")), []), float(r.get("ts") or 0.0))
        if pos is None:
            pos = centroid.get(str(r.get("store_id")))
        if pos is not None:
            push_xy.append(pos)
    pxy = np.asarray(push_xy).reshape(-1, 2)
    if len(pxy):
        ax.scatter(pxy[:, 0], pxy[:, 1], s=110, marker="*", facecolors="none", edgecolors=_PUSH,
                   linewidths=1.3, zorder=4)  # fmt: skip
    return pxy


def _frame(ax: Axes, points: np.ndarray) -> None:
    """Fit the axes to ``points`` (lon/lat), padded a little, with true-to-scale aspect."""
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
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


def visit_scale(most: int) -> list[int]:
    """The visit counts the legend shows dots for: 1, the most any store had, and one between."""
    if most <= 1:
        return [1]
    mid = round(math.sqrt(most))
    return sorted({1, mid, most} - ({mid} if mid in (1, most) else set()))


def _draw_legend(ax: Axes, stats: MapStats, enters: Counter[str]) -> None:
    from matplotlib.lines import Line2D

    def dot(
        marker: str, ms: float, face: str, edge: str, label: str, alpha: float | None = None,
        mew: float | None = None,
    ) -> Line2D:  # fmt: skip
        return Line2D([], [], marker=marker, ls="", ms=ms, mfc=face, mec=edge, alpha=alpha,
                      mew=mew, label=label)  # fmt: skip

    handles = [
        dot("o", 9, _FENCE_CIRCLE, _FENCE_CIRCLE, f"circle fences ({stats.circles})", alpha=0.4),
        dot("s", 9, _FENCE_POLY, _FENCE_POLY, f"polygon fences ({stats.polygons})", alpha=0.45),
        Line2D([], [], color=_PATH, lw=1.2, label=f"user paths (sample of {stats.paths})"),
        dot("*", math.sqrt(110), "none", _PUSH, f"pushes ({stats.pushes}, at the user's position)",
            mew=1.3),
    ]  # fmt: skip
    # Below the axes: a legend inside would hide part of the city.
    what = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.07), ncol=2,
                     fontsize=8, frameon=False)  # fmt: skip
    if not stats.visited_stores:
        return
    ax.add_artist(what)  # a second legend would replace it otherwise
    # The visited stores' dots at the sizes the map uses (a marker's size is its diameter in
    # points, a scatter's its area in points^2), one per step of the scale.
    scale = visit_scale(max(enters.values(), default=1))
    sizes = [
        dot("o", math.sqrt(float(visit_dot_area(n))), _VISIT, "white",
            f"{n} visit{'s' if n > 1 else ''}", alpha=0.85)
        for n in scale
    ]  # fmt: skip
    named = f"; the {stats.labelled_stores} most pushed, then visited, named" if stats.labelled_stores else ""
    ax.legend(handles=sizes, loc="upper right", bbox_to_anchor=(1.0, -0.07), ncol=len(sizes),
              fontsize=8, frameon=False, title=f"visited stores ({stats.visited_stores}){named}",
              title_fontsize=8, borderaxespad=0.0, columnspacing=1.2)  # fmt: skip


def _draw_title(ax: Axes, stats: MapStats, title: str, subtitle: str) -> None:
    heading = f"{title}: {stats.stores} stores, {stats.visits} visits, {stats.pushes} pushes"
    ax.set_title(heading + (f"\n{subtitle}" if subtitle else ""), fontsize=11)


def _save(fig: Figure, out_path: Path, dpi: int) -> Path:
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.15)
    except OSError as exc:
        raise MapError(f"cannot write the map to {out_path}: {exc}") from exc
    return out_path
