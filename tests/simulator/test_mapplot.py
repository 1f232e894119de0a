"""The PNG map, drawn from a tiny hand-made city."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulator.mapplot import MapError, _position_at, compose_map, render_map, visit_dot_area

LON0, LAT0 = 24.94, 60.17  # Helsinki centre


def _write_city(d: Path, with_pushes: bool = True) -> dict[str, Path]:
    """3 circle stores, 1 polygon, 1 two-part multipolygon; 3 walkers; visits; pushes."""

    def circle(sid: str, dx: float, dy: float, r: float) -> dict[str, object]:
        return {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [LON0 + dx, LAT0 + dy]},
            "properties": {"store_id": sid, "merchant_id": "m" + sid, "radius_m": r},
        }

    def square(x: float, y: float, s: float) -> list[list[float]]:
        return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]

    feats = [
        circle("s1", 0.0, 0.0, 60),
        circle("s2", 0.004, 0.001, 40),
        circle("s3", -0.003, 0.002, 100),
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [square(LON0 + 0.001, LAT0 - 0.003, 0.001)],
            },
            "properties": {"store_id": "p1", "merchant_id": "mp1"},
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [square(LON0 - 0.004, LAT0 - 0.002, 0.0005)],
                    [square(LON0 - 0.0032, LAT0 - 0.002, 0.0005)],
                ],
            },
            "properties": {"store_id": "mall", "merchant_id": "mm"},
        },
    ]
    paths = {k: d / f"{k}.jsonl" for k in ("trace", "visits", "pushes")}
    paths["stores"] = d / "stores.geojson"
    paths["stores"].write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    with open(paths["trace"], "w") as fh:
        for u, (dx, dy) in enumerate([(1, 0), (0, 1), (1, 1)]):
            for i in range(40):
                ev = {
                    "type": "gps",
                    "user": f"u{u}",
                    "ts": 1000.0 + 10 * i,
                    "lon": LON0 - 0.004 + dx * 0.0002 * i,
                    "lat": LAT0 - 0.003 + dy * 0.00015 * i,
                    "acc": 10,
                }
                fh.write(json.dumps(ev) + "\n")
        fh.write(json.dumps({"type": "wifi", "user": "u0", "ts": 1100, "aps": []}) + "\n")
        fh.write(
            json.dumps(
                {
                    "type": "batch",
                    "user": "u3",
                    "events": [
                        {
                            "type": "gps",
                            "ts": 1000 + i,
                            "lon": LON0 + 0.003,
                            "lat": LAT0 + 0.0001 * i,
                            "acc": 5,
                        }
                        for i in range(5)
                    ],
                }
            )
            + "\n"
        )
        fh.write('{"type": "gps", broken\n')  # a torn line: counted, not fatal
    visits = [
        {
            "visit_id": f"v{i}",
            "user": "u0",
            "store_id": s,
            "merchant_id": "m",
            "event": e,
            "ts": 1100.0 + i,
            "signal": "gps",
        }
        for i, (s, e) in enumerate(
            [("s1", "enter"), ("s1", "exit"), ("p1", "enter"), ("s1", "enter")]
        )
    ]
    paths["visits"].write_text("".join(json.dumps(v) + "\n" for v in visits))
    pushes = [
        {
            "push_id": "x1",
            "user": "u0",
            "campaign_id": "c1",
            "store_id": "s1",
            "merchant_id": "ms1",
            "visit_id": "v0",
            "trigger": "enter",
            "ts": 1200.0,
            "coupon": {},
        },
        {
            "push_id": "x2",
            "user": "nobody",
            "campaign_id": "c1",
            "store_id": "s3",
            "merchant_id": "ms3",
            "visit_id": "v9",
            "trigger": "enter",
            "ts": 1200.0,
            "coupon": {},
        },
    ]
    paths["pushes"].write_text("".join(json.dumps(p) + "\n" for p in pushes) if with_pushes else "")
    return paths


def _png_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _count_colour(px: np.ndarray, hex_colour: str, tol: int = 12) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(px.astype(int) - rgb).max(axis=2) <= tol).sum())


def test_map_of_a_tiny_city(tmp_path: Path) -> None:
    p = _write_city(tmp_path)
    out = tmp_path / "out" / "map.png"
    stats = render_map(
        out,
        stores=p["stores"],
        trace=p["trace"],
        visits=p["visits"],
        pushes=p["pushes"],
        subtitle="tiny test city",
    )
    assert stats.out == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (stats.stores, stats.circles, stats.polygons) == (5, 3, 2)
    assert stats.paths == 4  # u0..u2 plus the batched u3
    assert (stats.visits, stats.visited_stores, stats.pushes) == (3, 2, 2)
    assert stats.skipped_lines == 1
    px = _png_pixels(out)
    assert px.shape[0] >= 800 and px.shape[1] >= 800
    assert _count_colour(px, "#c44e52") > 50  # push stars are drawn


def test_no_pushes_no_push_markers(tmp_path: Path) -> None:
    p = _write_city(tmp_path, with_pushes=False)
    stats = render_map(
        tmp_path / "m.png",
        stores=p["stores"],
        trace=p["trace"],
        visits=p["visits"],
        pushes=p["pushes"],
    )
    assert stats.pushes == 0
    # only the legend's star remains: far fewer red pixels than with two pushes drawn
    (tmp_path / "b").mkdir()
    with_pushes = _write_city(tmp_path / "b")
    render_map(
        tmp_path / "m2.png",
        stores=with_pushes["stores"],
        trace=with_pushes["trace"],
        pushes=with_pushes["pushes"],
    )
    assert _count_colour(_png_pixels(tmp_path / "m.png"), "#c44e52") < _count_colour(
        _png_pixels(tmp_path / "m2.png"), "#c44e52"
    )


def test_stores_only_and_bad_stores(tmp_path: Path) -> None:
    p = _write_city(tmp_path)
    stats = render_map(tmp_path / "s.png", stores=p["stores"])
    assert stats.paths == 0 and stats.pushes == 0 and (tmp_path / "s.png").stat().st_size > 1000
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "Feature"}')
    with pytest.raises(MapError, match="FeatureCollection"):
        render_map(tmp_path / "x.png", stores=bad)
    with pytest.raises(MapError, match="cannot read"):
        render_map(tmp_path / "x.png", stores=tmp_path / "missing.geojson")


def test_position_at_is_the_last_fix_before() -> None:
    fixes = [(10.0, 1.0, 1.0), (20.0, 2.0, 2.0), (30.0, 3.0, 3.0)]
    assert _position_at(fixes, 25.0) == (2.0, 2.0)
    assert _position_at(fixes, 20.0) == (2.0, 2.0)
    assert _position_at(fixes, 5.0) == (1.0, 1.0)
    assert _position_at(fixes, 99.0) == (3.0, 3.0)
    assert _position_at([], 1.0) is None


def _composed(p: dict[str, Path], **kw: Any) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, stats = compose_map(stores=p["stores"], trace=p["trace"], visits=p["visits"],
                             pushes=p["pushes"], **kw)  # fmt: skip
    ax = fig.axes[0]
    plt.close(fig)
    return ax, stats


def _more_visits(p: dict[str, Path], store: str, n: int) -> None:
    with open(p["visits"], "a") as fh:
        for i in range(n):
            fh.write(json.dumps({"visit_id": f"w{i}", "user": "u1", "store_id": store,
                                 "event": "enter", "ts": 2000.0 + i}) + "\n")  # fmt: skip


def test_visited_and_pushed_stores_are_named(tmp_path: Path) -> None:
    """A merchant finds their store: the pushed and visited ones carry their name (or id)."""
    p = _write_city(tmp_path)
    ax, stats = _composed(p)
    texts = {t.get_text() for t in ax.texts}
    assert {"s1", "p1", "s3"} <= texts  # visited s1 and p1, pushed s3 (no visits of its own)
    assert "s2" not in texts and "mall" not in texts  # nobody went there
    assert stats.labelled_stores == 3
    named = json.loads(p["stores"].read_text())
    named["features"][0]["properties"]["name"] = "Kahvila Aalto"
    p["stores"].write_text(json.dumps(named))
    ax, _ = _composed(p)
    assert "Kahvila Aalto (s1)" in {t.get_text() for t in ax.texts}


def test_labels_stay_few_and_apart(tmp_path: Path) -> None:
    p = _write_city(tmp_path)
    ax, stats = _composed(p, max_labels=1)
    assert [t.get_text() for t in ax.texts] == ["s1"]  # most pushed


def test_the_legend_shows_the_dot_sizes_the_map_uses(tmp_path: Path) -> None:
    import math

    p = _write_city(tmp_path)
    _more_visits(p, "s2", 16)  # visits per store: s1 2, p1 1, s2 16
    ax, _ = _composed(p)
    dots = {}
    for legend in [*ax.artists, ax.get_legend()]:
        for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True):
            if t.get_text().endswith(("visit", "visits")):
                dots[t.get_text()] = h.get_markersize()
    assert dots == {
        f"{n} visit{'s' if n > 1 else ''}": pytest.approx(math.sqrt(visit_dot_area(n)))
        for n in (1, 4, 16)
    }
    assert len(set(dots.values())) == 3  # three different sizes
    sizes = _scatters(ax)[0].get_sizes()  # the visited stores
    assert sorted(sizes) == pytest.approx(sorted(visit_dot_area(np.array([1.0, 2.0, 16.0]))))


def _scatters(ax: Any) -> list[Any]:
    """The visited stores' dots, then the push stars (in drawing order)."""
    from matplotlib.collections import PathCollection

    return [c for c in ax.collections if isinstance(c, PathCollection)]


def test_push_stars_do_not_hide_the_stores(tmp_path: Path) -> None:
    p = _write_city(tmp_path)
    ax, _ = _composed(p)
    dots, stars = _scatters(ax)
    faces = stars.get_facecolors()
    assert len(faces) == 0 or (faces[:, 3] == 0).all()  # hollow ...
    assert (stars.get_edgecolors()[:, 3] > 0).all()  # ... outlined
    assert dots.get_zorder() > stars.get_zorder()  # stores on top
