"""The city's ground plan: a grid of 150 m blocks, each residential, one standalone store or a mall.

Coordinates are metres (x east, y north) from the city's south-west corner; ``to_lonlat`` maps
them to degrees with an equirectangular projection around the city's centre (error far below a
metre at city scale, see ../shared/MEASUREMENTS.md). Streets run along block edges; every fence
stays at least ~20 m inside its block, so people walking or riding on streets are not inside
fences of stores they merely pass (drive-bys are a real engine problem, but they would make the
ground truth argue with itself).

Stores:
* standalone (~70%): one per commercial block, a circle (r 25-45 m) or an irregular 5-8 sided
  polygon of the same size; 75% register 1-3 WiFi APs (the rest are "GPS-only" stores), 25% a
  beacon, 40% an NFC tag;
* malls (~30% of stores): 12-36 units of 12 m pitch in one block, each with a circle fence of
  20-28 m, so neighbouring units' GPS fences overlap; every unit has 1-2 APs, 70% a beacon,
  50% an NFC tag, and a tighter ``max_accuracy_m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK_M = 150.0
EARTH_R = 6_371_008.8
ORIGIN = (24.9384, 60.1699)  # the city's centre (lon, lat): Helsinki, for believable maps
UNIT_PITCH_M = 12.0
CATEGORIES = ("coffee", "food", "fashion", "grocery", "electronics", "beauty", "books", "sports")
STORE_AP_PREFIX = 0x02 << 40  # locally administered MACs: 02:xx:... for store APs
ANCHOR_AP_PREFIX = 0x06 << 40  # 06:xx:... for homes' and offices' APs (registered nowhere)
BEACON_UUID = "F7826DA6-4FA2-4E98-8024-BC5B71E0893E"
MAX_VERTS = 8


@dataclass
class Layout:
    nx: int
    ny: int
    cell_kind: np.ndarray  # int8 per block: 0 residential, 1 standalone store, 2 mall
    cell_ref: np.ndarray  # int32: store index (kind 1) or mall index (kind 2), else -1
    cx: np.ndarray  # store centre x (m)
    cy: np.ndarray
    radius: np.ndarray  # fence radius (circle) or polygon's outer radius (m)
    is_poly: np.ndarray  # bool
    nverts: np.ndarray  # int8, polygon vertex count
    vert_ang: np.ndarray  # (N, MAX_VERTS) vertex angles (rad)
    vert_rad: np.ndarray  # (N, MAX_VERTS) vertex radii as a fraction of radius
    mall: np.ndarray  # int32 mall index or -1
    merchant: np.ndarray  # int32
    n_ap: np.ndarray  # int8, 0..3
    ap_dx: np.ndarray  # (N, 3) AP offsets from the centre (m)
    ap_dy: np.ndarray
    has_beacon: np.ndarray
    has_nfc: np.ndarray
    category: np.ndarray  # int8 index into CATEGORIES
    max_acc: np.ndarray  # float, the store's max_accuracy_m
    mall_start: np.ndarray  # first store index of each mall
    mall_count: np.ndarray
    mall_cell: np.ndarray
    cell_ptr: np.ndarray  # CSR: stores per block
    cell_idx: np.ndarray
    n_merchants: int

    @property
    def n_stores(self) -> int:
        return len(self.cx)

    @property
    def width_m(self) -> float:
        return self.nx * BLOCK_M

    @property
    def height_m(self) -> float:
        return self.ny * BLOCK_M

    def cell_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        i = np.clip((x // BLOCK_M).astype(np.int64), 0, self.nx - 1)
        j = np.clip((y // BLOCK_M).astype(np.int64), 0, self.ny - 1)
        return j * self.nx + i

    def cell_centre(self, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (cell % self.nx + 0.5) * BLOCK_M, (cell // self.nx + 0.5) * BLOCK_M

    def to_lonlat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lon0, lat0 = ORIGIN
        dx = np.asarray(x) - self.width_m / 2
        dy = np.asarray(y) - self.height_m / 2
        lat = lat0 + np.degrees(dy / EARTH_R)
        lon = lon0 + np.degrees(dx / (EARTH_R * math.cos(math.radians(lat0))))
        return lon, lat


def _mall_sizes(n_stores: int, rng: np.random.Generator) -> list[int]:
    budget = int(round(0.3 * n_stores)) if n_stores >= 16 else 0
    sizes: list[int] = []
    while budget >= 4:
        s = min(int(rng.integers(12, 37)), budget)
        sizes.append(s)
        budget -= s
    return sizes


def build_layout(n_stores: int, seed: int) -> Layout:
    """A seeded city plan with ``n_stores`` stores."""
    if n_stores < 1:
        raise ValueError("a city needs at least one store (--stores >= 1)")
    rng = np.random.default_rng([seed, 1])
    sizes = _mall_sizes(n_stores, rng)
    n_mall_stores = sum(sizes)
    n_stand = n_stores - n_mall_stores
    n_comm = n_stand + len(sizes)
    n_cells = max(2 * n_comm + 8, 16)  # about as many residential blocks as commercial ones
    nx = int(math.ceil(math.sqrt(n_cells)))
    ny = int(math.ceil(n_cells / nx))
    cells = rng.permutation(nx * ny)
    stand_cells = np.sort(cells[:n_stand])
    mall_cells = np.sort(cells[n_stand : n_stand + len(sizes)])
    cell_kind = np.zeros(nx * ny, np.int8)
    cell_ref = np.full(nx * ny, -1, np.int32)
    cell_kind[stand_cells] = 1
    cell_ref[stand_cells] = np.arange(n_stand)
    cell_kind[mall_cells] = 2
    cell_ref[mall_cells] = np.arange(len(sizes))

    n = n_stores
    cx = np.empty(n)
    cy = np.empty(n)
    radius = np.empty(n)
    mall = np.full(n, -1, np.int32)
    # Standalone stores: centre jittered +-10 m from the block centre.
    scx = (stand_cells % nx + 0.5) * BLOCK_M
    scy = (stand_cells // nx + 0.5) * BLOCK_M
    cx[:n_stand] = scx + rng.uniform(-10, 10, n_stand)
    cy[:n_stand] = scy + rng.uniform(-10, 10, n_stand)
    radius[:n_stand] = rng.uniform(25, 45, n_stand)
    mall_start = np.zeros(len(sizes), np.int64)
    mall_count = np.asarray(sizes, np.int64)
    pos = n_stand
    for m, (cell, size) in enumerate(zip(mall_cells, sizes, strict=True)):
        mall_start[m] = pos
        side = int(math.ceil(math.sqrt(size)))
        k = np.arange(size)
        ox = (k % side - (side - 1) / 2) * UNIT_PITCH_M
        oy = (k // side - (side - 1) / 2) * UNIT_PITCH_M
        cx[pos : pos + size] = (cell % nx + 0.5) * BLOCK_M + ox
        cy[pos : pos + size] = (cell // nx + 0.5) * BLOCK_M + oy
        radius[pos : pos + size] = rng.uniform(20, 28, size)
        mall[pos : pos + size] = m
        pos += size
    in_mall = mall >= 0
    is_poly = (~in_mall) & (rng.random(n) < 0.4)
    nverts = rng.integers(5, MAX_VERTS + 1, n).astype(np.int8)
    base = rng.uniform(0, 2 * np.pi, n)[:, None]
    steps = np.arange(MAX_VERTS)[None, :] * (2 * np.pi / nverts[:, None])
    vert_ang = base + steps + rng.uniform(-0.15, 0.15, (n, MAX_VERTS))
    vert_rad = rng.uniform(0.8, 1.0, (n, MAX_VERTS))
    n_merchants = max(1, n // 3)
    merchant = rng.integers(0, n_merchants, n).astype(np.int32)
    n_ap = np.where(in_mall, rng.integers(1, 3, n), rng.integers(1, 4, n))
    n_ap = np.where((~in_mall) & (rng.random(n) < 0.25), 0, n_ap).astype(np.int8)
    # APs sit near the middle of the store (a mall unit's AP at the back of the unit).
    ap_r = np.where(in_mall, 1.0, 0.25 * radius)[:, None] * rng.random((n, 3))
    ap_a = rng.uniform(0, 2 * np.pi, (n, 3))
    has_beacon = rng.random(n) < np.where(in_mall, 0.7, 0.25)
    has_nfc = rng.random(n) < np.where(in_mall, 0.5, 0.4)
    category = rng.integers(0, len(CATEGORIES), n).astype(np.int8)
    max_acc = np.where(in_mall, 50.0, 60.0)
    # Stores per block (CSR), for "which APs can this scan hear".
    cell_of_store = (cy // BLOCK_M).astype(np.int64) * nx + (cx // BLOCK_M).astype(np.int64)
    order = np.argsort(cell_of_store, kind="stable")
    counts = np.bincount(cell_of_store, minlength=nx * ny)
    cell_ptr = np.zeros(nx * ny + 1, np.int64)
    np.cumsum(counts, out=cell_ptr[1:])
    return Layout(
        nx=nx,
        ny=ny,
        cell_kind=cell_kind,
        cell_ref=cell_ref,
        cx=cx,
        cy=cy,
        radius=radius,
        is_poly=is_poly,
        nverts=nverts,
        vert_ang=vert_ang,
        vert_rad=vert_rad,
        mall=mall,
        merchant=merchant,
        n_ap=n_ap,
        ap_dx=ap_r * np.cos(ap_a),
        ap_dy=ap_r * np.sin(ap_a),
        has_beacon=has_beacon,
        has_nfc=has_nfc,
        category=category,
        max_acc=max_acc,
        mall_start=mall_start,
        mall_count=mall_count,
        mall_cell=mall_cells.astype(np.int64),
        cell_ptr=cell_ptr,
        cell_idx=order.astype(np.int64),
        n_merchants=n_merchants,
    )


def store_bssids(store: int, n_ap: int) -> list[int]:
    return [STORE_AP_PREFIX | (store << 2) | a for a in range(n_ap)]


def beacon_ids(store: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(major, minor) of each store's beacon: the store index split in two 16-bit halves."""
    s = np.asarray(store, dtype=np.int64)
    return np.right_shift(s, 16), np.bitwise_and(s, 0xFFFF)


def path_length(px: np.ndarray, py: np.ndarray, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Length of the route from P to Q: straight within one block, else along streets."""
    same = ((px // BLOCK_M) == (qx // BLOCK_M)) & ((py // BLOCK_M) == (qy // BLOCK_M))
    sy = np.round(py / BLOCK_M) * BLOCK_M
    sx = np.round(qx / BLOCK_M) * BLOCK_M
    street = np.abs(py - sy) + np.abs(px - sx) + np.abs(sy - qy) + np.abs(sx - qx)
    out: np.ndarray = np.where(same, np.hypot(qx - px, qy - py), street)
    return out


def path_point(
    px: np.ndarray, py: np.ndarray, qx: np.ndarray, qy: np.ndarray, f: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Position a fraction f in [0, 1] along the route from P to Q (see ``path_length``):
    P -> nearest street (vertical leg) -> along it to Q's nearest cross street -> along that to
    Q's level -> into Q."""
    same = ((px // BLOCK_M) == (qx // BLOCK_M)) & ((py // BLOCK_M) == (qy // BLOCK_M))
    sy = np.round(py / BLOCK_M) * BLOCK_M
    sx = np.round(qx / BLOCK_M) * BLOCK_M
    legs = np.stack([np.abs(py - sy), np.abs(px - sx), np.abs(sy - qy), np.abs(sx - qx)])
    total = legs.sum(axis=0)
    s = f * total
    c1 = legs[0]
    c2 = c1 + legs[1]
    c3 = c2 + legs[2]

    def frac(a: np.ndarray, length: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.clip(np.divide(a, length, out=np.zeros_like(a), where=length > 0), 0.0, 1.0)
        return out

    x = np.where(
        s < c1,
        px,
        np.where(
            s < c2,
            px + (sx - px) * frac(s - c1, legs[1]),
            np.where(s < c3, sx, sx + (qx - sx) * frac(s - c3, legs[3])),
        ),
    )
    y = np.where(
        s < c1,
        py + (sy - py) * frac(s, legs[0]),
        np.where(s < c2, sy, np.where(s < c3, sy + (qy - sy) * frac(s - c2, legs[2]), qy)),
    )
    xs = px + (qx - px) * f
    ys = py + (qy - py) * f
    return np.where(same, xs, x), np.where(same, ys, y)
