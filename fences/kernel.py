"""The compiled matching kernel: a uniform lon/lat grid over packed fence records (numba).

Data layout (built by fences.index, read here; all float64 / int64, C-contiguous):

* ``gp``      grid parameters ``[x0, y0, cell_w, cell_h, nx, ny, x1, y1]`` (degrees);
* ``cstart``  int32 CSR offsets, ``ncells + 1``: cell ``c`` owns occurrences ``cstart[c]:cstart[c+1]``;
* ``occ``     ``(m, 8)`` one 64-byte row (one cache line, rows aligned) per (cell, entry): the
  entry's box x0, y0, x1, y1; for a circle its centre lon, lat and radius (radius -1 marks a
  polygon); the record number (as a float, exact below 2**53). Box and circle are copied into
  every cell the entry overlaps, so the hot loop reads one cache line per candidate and touches
  the records only on a match (or for a polygon's vertices);
* ``recf``    ``(n, 4)`` per record: circle centre lon, lat, cos(lat), radius in metres;
* ``reci``    ``(n, 5)`` per record: kind (0 dead, 1 circle, 2 polygon), first ring, end ring,
  slot, and 1 when the record has several entries (so a fix may meet it twice);
* ``ringv``   ring start offsets into ``verts`` (``nrings + 1``); rings are closed;
* ``verts``   ``(nv, 2)`` polygon vertices lon, lat.

Each (query box, entry box) pair is tested in exactly one cell: the one holding the lower-left
corner of their intersection, so entries spanning several cells are not tested twice.

Boundary rule: a fix on a polygon's edge or vertex (or within ``EPS_BOUNDARY`` metres of it) is
inside, distance 0; a fix exactly ``radius_m`` from a circle's centre is inside. Edges lying on
the ±180° meridian are the seam of a polygon split at the antimeridian: they decide containment
but are not boundary, so a fix near the seam gets its distance to the real outline. A store matches
when its signed distance is <= accuracy + margin.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
from numpy.typing import NDArray

from fences.geo import BOX_SLACK, M_PER_DEG, POLE_LAT, R_EARTH

DEAD, CIRCLE, POLYGON = 0, 1, 2
EPS_BOUNDARY = 1e-6
"""A fix within this many metres (1 µm) of a polygon's boundary counts as on it (inside)."""

_DEG = math.pi / 180.0

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
I32 = NDArray[np.int32]


@nb.njit(cache=True, inline="always")
def _wrap(x: float) -> float:
    return x - 360.0 * math.floor((x + 180.0) / 360.0)


@nb.njit(cache=True, inline="always")
def _hav_sd(
    lon: float, lat: float, coslat: float, clon: float, clat: float, ccos: float, rad: float
) -> float:
    """Haversine distance from the fix to a circle's centre, minus its radius (scalars only)."""
    s1 = math.sin((clat - lat) * _DEG * 0.5)
    s2 = math.sin((clon - lon) * _DEG * 0.5)
    h = s1 * s1 + coslat * ccos * s2 * s2
    if h > 1.0:
        h = 1.0
    return float(2.0 * R_EARTH * math.asin(math.sqrt(h)) - rad)


# The polygon test exists twice: here for single records, and written out inside _core. numba
# adds atomic reference counting around every array handed to a helper, which cost ~100 ns a
# candidate in the hot loop; the property tests hold both copies against the same oracle.
@nb.njit(cache=True)
def _polygon_sd(
    lon: float, lat: float, coslat: float, rec: int, reci: I64, ringv: I64, verts: F64
) -> float:
    kx = M_PER_DEG * coslat
    ky = M_PER_DEG
    inside = False
    best = np.inf  # squared distance to real boundary edges
    touch = np.inf  # squared distance to any edge, seams included (decides "on the boundary")
    for ring in range(reci[rec, 1], reci[rec, 2]):
        v0 = ringv[ring]
        v1 = ringv[ring + 1]
        # Unwrap the ring as a whole next to the fix, so rings across +-180 stay continuous.
        raw = verts[v0, 0] - lon
        off = _wrap(raw) - raw
        px = (verts[v0, 0] - lon + off) * kx
        py = (verts[v0, 1] - lat) * ky
        for v in range(v0 + 1, v1):
            qx = (verts[v, 0] - lon + off) * kx
            qy = (verts[v, 1] - lat) * ky
            # even-odd ray cast towards +x; the boundary itself is settled by the distance below
            if (py > 0.0) != (qy > 0.0) and px + (0.0 - py) * (qx - px) / (qy - py) > 0.0:
                inside = not inside
            dx = qx - px
            dy = qy - py
            ll = dx * dx + dy * dy
            t = 0.0
            if ll > 0.0:
                t = -(px * dx + py * dy) / ll
                if t < 0.0:
                    t = 0.0
                elif t > 1.0:
                    t = 1.0
            ex = px + t * dx
            ey = py + t * dy
            d2 = ex * ex + ey * ey
            if d2 < touch:
                touch = d2
            if d2 < best and not (abs(verts[v - 1, 0]) == 180.0 and abs(verts[v, 0]) == 180.0):
                best = d2
            px = qx
            py = qy
    d = math.sqrt(best if best < np.inf else touch)
    if inside or touch <= EPS_BOUNDARY * EPS_BOUNDARY:
        return -d
    return d


@nb.njit(cache=True)
def record_sd(
    lon: float, lat: float, rec: int, recf: F64, reci: I64, ringv: I64, verts: F64
) -> float:
    """Signed distance in metres from (lon, lat) to record ``rec``'s boundary (negative inside)."""
    coslat = math.cos(lat * _DEG)
    if reci[rec, 0] == CIRCLE:
        return _hav_sd(lon, lat, coslat, recf[rec, 0], recf[rec, 1], recf[rec, 2], recf[rec, 3])
    return float(_polygon_sd(lon, lat, coslat, rec, reci, ringv, verts))


@nb.njit(cache=True, inline="always")
def _cell(v: float, lo: float, size: float, n: int) -> int:
    i = int((v - lo) / size)
    if i < 0:
        return 0
    if i >= n:
        return n - 1
    return i


@nb.njit(cache=True)
def _core(
    lon1: float,
    lat1: float,
    r1: float,
    lons: F64,
    lats: F64,
    rs: F64,
    order: I64,
    start: int,
    single: bool,
    gp: F64,
    cstart: I32,
    occ: F64,
    recf: F64,
    reci: I64,
    ringv: I64,
    verts: F64,
    out_fix: I64,
    out_slot: I64,
    out_d: F64,
) -> tuple[int, int]:
    """Match fixes ``order[start:]`` (or the one fix lon1, lat1, r1 when ``single``).

    Returns (next position, rows written); stops before a fix whose matches do not fit in the
    out arrays, so the caller can grow them and resume. Each fix's rows are sorted by distance.
    The query boxes use the same padding as fences.geo.pad_deg."""
    gx0 = gp[0]
    gy0 = gp[1]
    cw = gp[2]
    ch = gp[3]
    nx = int(gp[4])
    ny = int(gp[5])
    gx1 = gp[6]
    gy1 = gp[7]
    cap = out_slot.shape[0]
    stop = start + 1 if single else order.shape[0]
    n_out = 0
    for p in range(start, stop):
        if single:
            fix = 0
            lon = lon1
            lat = lat1
            r = r1
        else:
            fix = order[p]
            lon = lons[fix]
            lat = lats[fix]
            r = rs[fix]
        first = n_out
        coslat = math.cos(lat * _DEG)
        kx = M_PER_DEG * coslat
        # the fix's query box(es): two when it reaches across +-180
        dlat = r / M_PER_DEG * BOX_SLACK + 1e-9
        worst = abs(lat) + dlat
        dlon = 360.0
        if worst < POLE_LAT:
            # r == 0 (pure containment, the common case): cos(lat) already covers the 1e-9°
            # box within BOX_SLACK, saving a cosine per fix
            dlon = dlat / (coslat if r == 0.0 else math.cos(worst * _DEG))
            if not dlon < 180.0:
                dlon = 360.0
        qy0 = max(lat - dlat, -90.0)
        qy1 = min(lat + dlat, 90.0)
        ax0 = lon - dlon
        ax1 = lon + dlon
        bx0 = 0.0
        bx1 = 0.0
        nq = 1
        if ax1 - ax0 >= 360.0:
            ax0 = -180.0
            ax1 = 180.0
        elif ax0 < -180.0:
            bx0 = -180.0
            bx1 = ax1
            ax0 = ax0 + 360.0
            ax1 = 180.0
            nq = 2
        elif ax1 > 180.0:
            bx0 = -180.0
            bx1 = ax1 - 360.0
            ax1 = 180.0
            nq = 2
        if qy1 < gy0 or qy0 > gy1:
            continue
        iy0 = _cell(max(qy0, gy0), gy0, ch, ny)
        iy1 = _cell(min(qy1, gy1), gy0, ch, ny)
        for b in range(nq):
            qx0 = ax0 if b == 0 else bx0
            qx1 = ax1 if b == 0 else bx1
            if qx1 < gx0 or qx0 > gx1:
                continue
            ix0 = _cell(max(qx0, gx0), gx0, cw, nx)
            ix1 = _cell(min(qx1, gx1), gx0, cw, nx)
            one_cell = ix0 == ix1 and iy0 == iy1
            for iy in range(iy0, iy1 + 1):
                for ix in range(ix0, ix1 + 1):
                    c = iy * nx + ix
                    for j in range(cstart[c], cstart[c + 1]):
                        ex0 = occ[j, 0]
                        ey0 = occ[j, 1]
                        if ex0 > qx1 or ey0 > qy1 or occ[j, 2] < qx0 or occ[j, 3] < qy0:
                            continue
                        # test each (query box, entry) pair once: in the cell holding the
                        # lower-left corner of their intersection
                        if not one_cell and (
                            _cell(max(qx0, ex0), gx0, cw, nx) != ix
                            or _cell(max(qy0, ey0), gy0, ch, ny) != iy
                        ):
                            continue
                        rad = occ[j, 6]
                        rec = int(occ[j, 7])
                        if rad >= 0.0:  # a circle: its parameters sit in the row itself
                            d = _hav_sd(
                                lon,
                                lat,
                                coslat,
                                occ[j, 4],
                                occ[j, 5],
                                math.cos(occ[j, 5] * _DEG),
                                rad,
                            )
                        else:
                            # written-out copy of _polygon_sd (see the note there)
                            inside = False
                            best = np.inf
                            touch = np.inf
                            for ring in range(reci[rec, 1], reci[rec, 2]):
                                v0 = ringv[ring]
                                v1 = ringv[ring + 1]
                                raw = verts[v0, 0] - lon
                                off = _wrap(raw) - raw
                                px = (verts[v0, 0] - lon + off) * kx
                                py = (verts[v0, 1] - lat) * M_PER_DEG
                                for v in range(v0 + 1, v1):
                                    qx = (verts[v, 0] - lon + off) * kx
                                    qy = (verts[v, 1] - lat) * M_PER_DEG
                                    if (py > 0.0) != (qy > 0.0) and px + (0.0 - py) * (qx - px) / (
                                        qy - py
                                    ) > 0.0:
                                        inside = not inside
                                    dx = qx - px
                                    dy = qy - py
                                    ll = dx * dx + dy * dy
                                    t = 0.0
                                    if ll > 0.0:
                                        t = -(px * dx + py * dy) / ll
                                        if t < 0.0:
                                            t = 0.0
                                        elif t > 1.0:
                                            t = 1.0
                                    ex = px + t * dx
                                    ey = py + t * dy
                                    d2 = ex * ex + ey * ey
                                    if d2 < touch:
                                        touch = d2
                                    if d2 < best and not (
                                        abs(verts[v - 1, 0]) == 180.0 and abs(verts[v, 0]) == 180.0
                                    ):
                                        best = d2
                                    px = qx
                                    py = qy
                            d = math.sqrt(best if best < np.inf else touch)
                            if inside or touch <= EPS_BOUNDARY * EPS_BOUNDARY:
                                d = -d
                        if d > r or reci[rec, 0] == DEAD:
                            continue
                        slot = reci[rec, 3]
                        if nq > 1 or reci[rec, 4] != 0:
                            dup = False
                            for k in range(first, n_out):
                                if out_slot[k] == slot:
                                    dup = True
                                    break
                            if dup:
                                continue
                        if n_out >= cap:
                            return p, first
                        # insertion keeps this fix's matches sorted by distance
                        k = n_out
                        while k > first and out_d[k - 1] > d:
                            out_slot[k] = out_slot[k - 1]
                            out_d[k] = out_d[k - 1]
                            k -= 1
                        out_slot[k] = slot
                        out_d[k] = d
                        out_fix[n_out] = fix
                        n_out += 1
    return stop, n_out


def query_one(
    lon: float,
    lat: float,
    r: float,
    gp: F64,
    cstart: I32,
    occ: F64,
    recf: F64,
    reci: I64,
    ringv: I64,
    verts: F64,
    empty_f: F64,
    empty_i: I64,
    out_fix: I64,
    out_slot: I64,
    out_d: F64,
) -> int:
    """Matches of one fix in the grid part: count, or -1 when the out arrays are too small.
    ``empty_f`` / ``empty_i`` are any float64 / int64 arrays (unused; kept to avoid allocating)."""
    nxt, n = _core(
        lon,
        lat,
        r,
        empty_f,
        empty_f,
        empty_f,
        empty_i,
        0,
        True,
        gp,
        cstart,
        occ,
        recf,
        reci,
        ringv,
        verts,
        out_fix,
        out_slot,
        out_d,
    )
    return int(n) if nxt == 1 else -1


def query_batch(
    lons: F64,
    lats: F64,
    rs: F64,
    order: I64,
    start: int,
    gp: F64,
    cstart: I32,
    occ: F64,
    recf: F64,
    reci: I64,
    ringv: I64,
    verts: F64,
    out_fix: I64,
    out_slot: I64,
    out_d: F64,
) -> tuple[int, int]:
    """Matches of fixes ``order[start:]``; returns (next position in order, rows written).

    Stops early (next < len(order)) when the out arrays fill up: the caller grows them and
    resumes from ``next``."""
    nxt, n = _core(
        0.0,
        0.0,
        0.0,
        lons,
        lats,
        rs,
        order,
        start,
        False,
        gp,
        cstart,
        occ,
        recf,
        reci,
        ringv,
        verts,
        out_fix,
        out_slot,
        out_d,
    )
    return int(nxt), int(n)


@nb.njit(cache=True)
def cell_order(lons: F64, lats: F64, gp: F64) -> I64:
    """A processing order that visits fixes grouped by grid cell (a counting sort on the cell,
    coarsened to about one bucket per fix), so neighbouring fixes reuse cached grid rows."""
    n = lons.shape[0]
    nx = int(gp[4])
    ny = int(gp[5])
    div = max(1, (nx * ny) // max(n, 1))
    nb_ = (nx * ny) // div + 1
    key = np.empty(n, dtype=np.int64)
    count = np.zeros(nb_ + 1, dtype=np.int64)
    for i in range(n):
        c = _cell(lats[i], gp[1], gp[3], ny) * nx + _cell(lons[i], gp[0], gp[2], nx)
        k = c // div
        key[i] = k
        count[k + 1] += 1
    for k in range(nb_):
        count[k + 1] += count[k]
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        k = key[i]
        order[count[k]] = i
        count[k] += 1
    return order


@nb.njit(cache=True)
def check_fixes(lons: F64, lats: F64, rs: F64) -> int:
    """0 when a batch is fine; 1 a bad lon/lat, 2 a bad accuracy, 3 lons to fold into [-180, 180)."""
    wrap = 0
    for i in range(lons.shape[0]):
        if not (math.isfinite(lons[i]) and -90.0 <= lats[i] <= 90.0):
            return 1
        if not (0.0 <= rs[i] < np.inf):
            return 2
        if not (-180.0 <= lons[i] < 180.0):
            wrap = 3
    return wrap


def warm_up() -> float:
    """Compile (or load from cache) every kernel entry point; returns the seconds it took."""
    import time

    t0 = time.perf_counter()
    gp = np.array([-1.0, -1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0])
    cstart = np.zeros(5, dtype=np.int32)
    occ = np.zeros((0, 8))
    recf = np.zeros((1, 4))
    reci = np.zeros((1, 5), dtype=np.int64)
    ringv = np.zeros(1, dtype=np.int64)
    verts = np.zeros((0, 2))
    of = np.empty(4, dtype=np.int64)
    os_ = np.empty(4, dtype=np.int64)
    od = np.empty(4)
    a = np.zeros(1)
    o = np.zeros(1, dtype=np.int64)
    query_one(0.0, 0.0, 0.0, gp, cstart, occ, recf, reci, ringv, verts, a, o, of, os_, od)
    query_batch(a, a, a, o, 0, gp, cstart, occ, recf, reci, ringv, verts, of, os_, od)
    cell_order(a, a, gp)
    check_fixes(a, a, a)
    record_sd(0.0, 0.0, 0, recf, reci, ringv, verts)
    return time.perf_counter() - t0


__all__: list[Any] = [
    "_core",
    "query_one",
    "query_batch",
    "record_sd",
    "cell_order",
    "warm_up",
]
