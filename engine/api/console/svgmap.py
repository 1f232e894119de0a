"""The console's map: a merchant's stores (their fences) and where its visitors were, drawn as
an SVG on the server. No tiles, no script: a local equirectangular projection around the
stores' centre (metres east and north), fitted to the picture, with a scale bar."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from fences.store import Store

_M_PER_DEG = 111_195.0
W, H, PAD = 640, 400, 28
TOP, BOTTOM = 32, 56  # room for the labels above, the scale and legend below


@dataclass(frozen=True, slots=True)
class Dot:
    """A visitor's position (lon, lat); ``returning`` colours it."""

    lon: float
    lat: float
    returning: bool
    label: str


def _rings(store: Store) -> list[list[tuple[float, float]]]:
    poly = store.polygon
    if poly is None:
        return []
    geoms = getattr(poly, "geoms", [poly])
    out = []
    for g in geoms:
        out.append([(float(x), float(y)) for x, y in g.exterior.coords])
    return out


def render(stores: Sequence[Store], dots: Sequence[Dot], counts: dict[str, int]) -> str:
    """The SVG (a string, escaped) of ``stores`` with ``counts`` visits each and ``dots``."""
    pts: list[tuple[float, float]] = []
    for s in stores:
        if s.center is not None:
            lon, lat = s.center
            r = (s.radius_m or 0.0) / _M_PER_DEG
            pts += [(lon - r / max(0.01, math.cos(math.radians(lat))), lat - r)]
            pts += [(lon + r / max(0.01, math.cos(math.radians(lat))), lat + r)]
        for ring in _rings(s):
            pts += ring
    pts += [(d.lon, d.lat) for d in dots]
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="map" '
        'role="img" aria-label="map of the stores and their visitors">'
        f'<rect width="{W}" height="{H}" class="map-bg"/>'
    )
    if not pts:
        return head + f'<text x="{W / 2}" y="{H / 2}" class="map-empty">no stores yet</text></svg>'
    lon0 = (min(p[0] for p in pts) + max(p[0] for p in pts)) / 2
    lat0 = (min(p[1] for p in pts) + max(p[1] for p in pts)) / 2
    kx = _M_PER_DEG * math.cos(math.radians(lat0))

    def xy(lon: float, lat: float) -> tuple[float, float]:
        return (lon - lon0) * kx, (lat - lat0) * _M_PER_DEG

    ms = [xy(*p) for p in pts]
    span_x = max(40.0, max(m[0] for m in ms) - min(m[0] for m in ms))
    span_y = max(40.0, max(m[1] for m in ms) - min(m[1] for m in ms))
    scale = min((W - 2 * PAD) / span_x, (H - TOP - BOTTOM) / span_y)  # px per metre
    cx = (max(m[0] for m in ms) + min(m[0] for m in ms)) / 2
    cy = (max(m[1] for m in ms) + min(m[1] for m in ms)) / 2

    def px(lon: float, lat: float) -> tuple[float, float]:
        x, y = xy(lon, lat)
        return W / 2 + (x - cx) * scale, TOP + (H - TOP - BOTTOM) / 2 - (y - cy) * scale

    parts = [head]
    for s in stores:
        name = escape(s.name or s.store_id)
        sid = escape(s.store_id)
        n = counts.get(s.store_id, 0)
        title = f"<title>{name} ({sid}): {n} visit(s)</title>"
        if s.center is not None and s.radius_m is not None:
            x, y = px(*s.center)
            r = max(3.0, s.radius_m * scale)
            top, bottom = y - r, y + r
            parts.append(
                f'<g class="store" data-store="{sid}"><circle cx="{x:.1f}" cy="{y:.1f}" '
                f'r="{r:.1f}" class="fence"/>{title}'
            )
        else:
            path = " ".join(
                "M " + " L ".join(f"{a:.1f} {b:.1f}" for a, b in (px(*p) for p in ring)) + " Z"
                for ring in _rings(s)
            )
            c = s.polygon.centroid if s.polygon is not None else None
            x, y = px(float(c.x), float(c.y)) if c is not None else (W / 2, H / 2)
            ys = [px(*p)[1] for ring in _rings(s) for p in ring] or [y]
            top, bottom = min(ys), max(ys)
            parts.append(f'<g class="store" data-store="{sid}"><path d="{path}" class="fence"/>{title}')
        parts.append(
            f'<text x="{x:.1f}" y="{max(12.0, top - 6):.1f}" class="store-label">{name}</text>'
            f'<text x="{x:.1f}" y="{min(H - 30.0, bottom + 15):.1f}" class="store-count">'
            f'{n} visit{"" if n == 1 else "s"}'
            "</text></g>"
        )
    for d in dots:
        x, y = px(d.lon, d.lat)
        kind = "returning" if d.returning else "new"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" class="dot visitor dot-{kind}">'
            f"<title>{escape(d.label)}</title></circle>"
        )
    # scale bar: a round number of metres near a fifth of the width
    target = (W / 5) / scale
    step = 10 ** math.floor(math.log10(target))
    bar_m = max(m for m in (step, 2 * step, 5 * step) if m <= target) if target >= 1 else 1.0
    bar = bar_m * scale
    label = f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"
    parts.append(
        f'<g class="scale"><line x1="{PAD}" y1="{H - 14}" x2="{PAD + bar:.1f}" y2="{H - 14}"/>'
        f'<text x="{PAD}" y="{H - 20}">{label}</text></g>'
        f'<g class="legend"><circle cx="{W - 150}" cy="{H - 16}" r="4" class="dot dot-new"/>'
        f'<text x="{W - 142}" y="{H - 12}">new</text>'
        f'<circle cx="{W - 95}" cy="{H - 16}" r="4" class="dot dot-returning"/>'
        f'<text x="{W - 87}" y="{H - 12}">returning</text></g></svg>'
    )
    return "".join(parts)


__all__ = ["Dot", "render"]
