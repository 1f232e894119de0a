"""What phones emit in a time window: GPS fixes, WiFi scans, beacon sightings, NFC taps, payments.

Each phone has its own clocks (a GPS period of 20-60 s, a WiFi scan period of 30-90 s, a BLE
period of 10-30 s, each with a phase and +-25% jitter). All per-event noise is a hash of
(seed, stream, user, tick) (simulator.rng), so a window's events do not depend on how the run
is cut into windows.

Signal models (documented in docs/simulator.md):
* GPS accuracy (reported, metres) is log-normal: outdoors median 8 (4-30), at home/work 18 (8-50),
  in a standalone store 15 (6-50), in a mall 35 (15-80). The position error is Gaussian with
  sigma = acc / 1.51 per axis (so ~68% of fixes lie within the reported accuracy). 0.3% of fixes
  are outliers 60-250 m off (90% of them honestly report 150-500 m accuracy). Phones at home or
  work report every other tick. Spoofers (labelled in city.json) report a position ~57 km away
  for a while: the only fixes implying more than 250 km/h.
* WiFi (log-distance path loss): rssi = -40 - 30 log10(d) - 12 dB per wall + N(0, 2.5) dB,
  heard down to -92 dBm, at most 10 APs per scan (the strongest). A store's own APs are behind
  no wall for its visitors; every other store's are behind one. Phones scan when stationary only
  (Android throttles scans, and a moving phone's scans are mostly skipped); at home or work
  they hear that place's AP, which no store registers.
* Beacons: rssi = -59 - 20 log10(d) + N(0, 3) dBm from the store's beacon at its middle, for
  visitors of that store whose Bluetooth is on; sightings below -95 dBm are not reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from simulator import emit, rng
from simulator.layout import (
    ANCHOR_AP_PREFIX,
    BLOCK_M,
    STORE_AP_PREFIX,
    Layout,
    beacon_ids,
    path_point,
)
from simulator.people import People

S_GPS, S_WIFI, S_BEACON, S_NFC = 1, 2, 4, 8  # truth signal flags per stay
SPOOF_OFFSET_M = 40_000.0
MAX_APS = 10
_PAD = 3 * 86400.0


@dataclass
class WindowEvents:
    cols: dict[str, np.ndarray]
    ap_bssid: np.ndarray
    ap_rssi: np.ndarray

    def __len__(self) -> int:
        return len(self.cols["kind"])


class Emitter:
    """Generates the events of [w0, w1) and records, per stay, which signals the phone produced."""

    def __init__(self, lay: Layout, ppl: People, seed: int) -> None:
        self.lay = lay
        self.ppl = ppl
        self.seed = seed
        self.span = (ppl.t_end - ppl.t0) + 2 * _PAD
        self.st_key = ppl.st_user * self.span + (ppl.st_start - ppl.t0 + _PAD)
        self.flags = np.zeros(len(ppl.st_user), np.uint8)
        self.lon0, self.lat0 = lay.to_lonlat(np.zeros(1), np.zeros(1))
        lon1, lat1 = lay.to_lonlat(np.ones(1), np.ones(1))
        self.dlon = float(lon1[0] - self.lon0[0])
        self.dlat = float(lat1[0] - self.lat0[0])

    # --- clocks -------------------------------------------------------------------------------
    def _ticks(self, users: np.ndarray, period: np.ndarray, phase: np.ndarray, stream: int,
               w0: float, w1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, tick number, time) of every tick of each user's clock falling in [w0, w1)."""
        t0 = self.ppl.t0
        p = period[users]
        ph = phase[users]
        k0 = np.floor((w0 - t0 - ph) / p).astype(np.int64) - 1
        k1 = np.ceil((w1 - t0 - ph) / p).astype(np.int64) + 1
        n = np.maximum(k1 - k0 + 1, 0)
        rep = np.repeat(np.arange(len(users)), n)
        first = np.repeat(np.cumsum(n) - n, n)
        k = k0[rep] + (np.arange(len(rep)) - first)
        u = users[rep]
        jit = rng.uniform(rng.key(self.seed, stream, u, k)) - 0.5
        t = t0 + ph[rep] + (k + 0.5 * jit) * p[rep]
        keep = (t >= w0) & (t < w1) & (t >= t0) & (t < self.ppl.t_end) & (k >= 0)
        return u[keep], k[keep], t[keep]

    def _locate(self, u: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(stay index, in-stay flag, x, y) of each user at each time."""
        p = self.ppl
        i = np.searchsorted(self.st_key, u * self.span + (t - p.t0 + _PAD), side="right") - 1
        in_stay = t < p.st_end[i]
        x = p.st_x[i]
        y = p.st_y[i]
        tr = np.flatnonzero(~in_stay)
        if len(tr):
            a = i[tr]
            b = np.minimum(a + 1, len(p.st_user) - 1)
            gap = np.maximum(p.st_start[b] - p.st_end[a], 1e-9)
            f = np.clip((t[tr] - p.st_end[a]) / gap, 0.0, 1.0)
            x[tr], y[tr] = path_point(p.st_x[a], p.st_y[a], p.st_x[b], p.st_y[b], f)
        return i, in_stay, x, y

    # --- signals ------------------------------------------------------------------------------
    def gps(self, w0: float, w1: float) -> dict[str, np.ndarray]:
        p, lay = self.ppl, self.lay
        users = np.arange(p.n)
        u, k, t = self._ticks(users, p.gps_period, p.gps_phase, 11, w0, w1)
        i, in_stay, x, y = self._locate(u, t)
        store = np.where(in_stay, p.st_store[i], -1)
        at_anchor = in_stay & (p.st_store[i] < 0)
        keep = ~(at_anchor & (k % 2 == 1))
        u, k, t, i, in_stay, x, y, store = (a[keep] for a in (u, k, t, i, in_stay, x, y, store))
        at_anchor = in_stay & (store < 0)
        in_mall = (store >= 0) & (lay.mall[np.maximum(store, 0)] >= 0)
        h = rng.key(self.seed, 12, u, k)
        med = np.where(in_mall, 35.0, np.where(store >= 0, 15.0, np.where(at_anchor, 18.0, 8.0)))
        lo = np.where(in_mall, 15.0, np.where(store >= 0, 6.0, np.where(at_anchor, 8.0, 4.0)))
        hi = np.where(in_mall, 80.0, np.where(at_anchor | (store >= 0), 50.0, 30.0))
        acc = np.clip(med * np.exp(0.35 * rng.normal(h, 1)), lo, hi)
        sig = acc / 1.51
        ex = sig * rng.normal(h, 2)
        ey = sig * rng.normal(h, 3)
        outlier = rng.uniform(h, 4) < 0.003
        dist = 60.0 + 190.0 * rng.uniform(h, 5)
        ang = 2 * np.pi * rng.uniform(h, 6)
        ex = np.where(outlier, dist * np.cos(ang), ex)
        ey = np.where(outlier, dist * np.sin(ang), ey)
        honest = rng.uniform(h, 7) < 0.9
        acc = np.where(outlier & honest, 150.0 + 350.0 * rng.uniform(h, 8), acc)
        spoof = p.spoofer[u] & (t >= p.spoof_from) & (t < p.spoof_until)
        fx = x + ex + np.where(spoof, SPOOF_OFFSET_M, 0.0)
        fy = y + ey + np.where(spoof, SPOOF_OFFSET_M, 0.0)
        lon = self.lon0[0] + fx * self.dlon
        lat = self.lat0[0] + fy * self.dlat
        self.flags[i[(store >= 0)]] |= S_GPS
        return {
            "kind": np.full(len(u), emit.GPS, np.int64),
            "user": u,
            "ts_ms": np.round(t * 1000).astype(np.int64),
            "a": np.round(lon * 1e7).astype(np.int64),
            "b": np.round(lat * 1e7).astype(np.int64),
            "c": np.round(acc * 10).astype(np.int64),
        }

    def wifi(self, w0: float, w1: float, ap_base: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        p, lay = self.ppl, self.lay
        users = np.flatnonzero(p.wifi_on)
        u, k, t = self._ticks(users, p.wifi_period, p.wifi_phase, 21, w0, w1)
        i, in_stay, x, y = self._locate(u, t)
        u, k, t, i, x, y = (a[in_stay] for a in (u, k, t, i, x, y))
        store = p.st_store[i]
        h = rng.key(self.seed, 22, u, k)
        out_b = np.zeros((len(u), MAX_APS), np.int64)
        out_r = np.zeros((len(u), MAX_APS), np.int64)
        out_n = np.zeros(len(u), np.int64)
        own = np.zeros(len(u), np.bool_)
        _hear(x, y, store, h.astype(np.int64), lay.cell_ptr, lay.cell_idx, lay.cx, lay.cy,
              lay.n_ap.astype(np.int64), lay.ap_dx, lay.ap_dy, lay.nx, lay.ny, BLOCK_M,
              STORE_AP_PREFIX, out_b, out_r, out_n, own)
        # Homes and offices: their own AP, strong.
        anc = store < 0
        out_b[anc, 0] = ANCHOR_AP_PREFIX | p.st_ap[i[anc]]
        out_r[anc, 0] = np.round(-45.0 + 4.0 * rng.normal(h[anc], 1)).astype(np.int64)
        out_n[anc] = 1
        self.flags[i[own]] |= S_WIFI
        keep = out_n > 0
        u, t, out_b, out_r, out_n = u[keep], t[keep], out_b[keep], out_r[keep], out_n[keep]
        mask = np.arange(MAX_APS)[None, :] < out_n[:, None]
        starts = np.cumsum(out_n) - out_n + ap_base
        cols = {
            "kind": np.full(len(u), emit.WIFI, np.int64),
            "user": u,
            "ts_ms": np.round(t * 1000).astype(np.int64),
            "a": starts,
            "b": out_n,
            "c": np.zeros(len(u), np.int64),
        }
        return cols, out_b[mask], out_r[mask]

    def beacons(self, w0: float, w1: float) -> dict[str, np.ndarray]:
        p, lay = self.ppl, self.lay
        # Only people in a store with a beacon during the window can see one.
        st = np.flatnonzero((p.st_end > w0) & (p.st_start < w1) & (p.st_store >= 0))
        st = st[lay.has_beacon[p.st_store[st]]]
        users = np.unique(p.st_user[st])
        users = users[p.ble_on[users]]
        u, k, t = self._ticks(users, p.ble_period, p.ble_phase, 31, w0, w1)
        i, in_stay, x, y = self._locate(u, t)
        store = np.where(in_stay, p.st_store[i], -1)
        ok = (store >= 0) & lay.has_beacon[np.maximum(store, 0)]
        u, k, t, i, x, y, store = (a[ok] for a in (u, k, t, i, x, y, store))
        d = np.maximum(np.hypot(x - lay.cx[store], y - lay.cy[store]), 0.5)
        h = rng.key(self.seed, 32, u, k)
        rssi = np.round(-59.0 - 20.0 * np.log10(d) + 3.0 * rng.normal(h, 1)).astype(np.int64)
        ok = rssi >= -95
        u, t, i, store, rssi = u[ok], t[ok], i[ok], store[ok], rssi[ok]
        self.flags[i] |= S_BEACON
        major, minor = beacon_ids(store)
        return {
            "kind": np.full(len(u), emit.BEACON, np.int64),
            "user": u,
            "ts_ms": np.round(t * 1000).astype(np.int64),
            "a": np.asarray(major, np.int64),
            "b": np.asarray(minor, np.int64),
            "c": rssi,
        }

    def checkouts(self, w0: float, w1: float) -> dict[str, np.ndarray]:
        p, lay = self.ppl, self.lay
        lo, hi = np.searchsorted(p.pt_ts, [w0, w1])
        sl = slice(int(lo), int(hi))
        kind = p.pt_kind[sl]
        store = p.pt_store[sl]
        self.flags[p.pt_stay[sl][kind == emit.NFC]] |= S_NFC
        return {
            "kind": kind,
            "user": p.pt_user[sl],
            "ts_ms": np.round(p.pt_ts[sl] * 1000).astype(np.int64),
            "a": np.where(kind == emit.NFC, store, lay.merchant[store].astype(np.int64)),
            "b": p.pt_amount_cents[sl],
            "c": np.zeros(hi - lo, np.int64),
        }

    def window(self, w0: float, w1: float, ap_base: int = 0) -> WindowEvents:
        """All events of [w0, w1), sorted by (ts, user, kind)."""
        wcols, ap_b, ap_r = self.wifi(w0, w1, ap_base)
        parts = [self.gps(w0, w1), wcols, self.beacons(w0, w1), self.checkouts(w0, w1)]
        cols = {name: np.concatenate([pt[name] for pt in parts]) for name in parts[0]}
        # One int64 key (ts since t0 | user | kind) sorts much faster than a 3-key lexsort.
        rel = cols["ts_ms"] - int(round(self.ppl.t0 * 1000))
        ub = int(self.ppl.n).bit_length()
        sort_key = (rel << (ub + 3)) | (cols["user"] << 3) | cols["kind"]
        order = np.argsort(sort_key, kind="stable")
        return WindowEvents({k: v[order] for k, v in cols.items()}, ap_b, ap_r)


@nb.njit(cache=True)
def _mix(z: np.uint64) -> np.uint64:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True)
def _gauss(h: np.uint64) -> float:
    a = _mix(h ^ np.uint64(0x51))
    b = _mix(h ^ np.uint64(0x52))
    u1 = float(a >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    u2 = float(b >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return float(np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2))


@nb.njit(cache=True)
def _hear(x: np.ndarray, y: np.ndarray, store_in: np.ndarray, keys: np.ndarray,
          cell_ptr: np.ndarray, cell_idx: np.ndarray, cx: np.ndarray, cy: np.ndarray,
          n_ap: np.ndarray, ap_dx: np.ndarray, ap_dy: np.ndarray, nx: int, ny: int, block: float,
          prefix: int, out_b: np.ndarray, out_r: np.ndarray, out_n: np.ndarray,
          own: np.ndarray) -> None:
    """For each scan, the (at most MAX_APS strongest) store APs heard in its block."""
    max_aps = out_b.shape[1]
    for i in range(x.shape[0]):
        ci = min(max(int(x[i] // block), 0), nx - 1)
        cj = min(max(int(y[i] // block), 0), ny - 1)
        cell = cj * nx + ci
        n = 0
        for q in range(cell_ptr[cell], cell_ptr[cell + 1]):
            s = cell_idx[q]
            for a in range(n_ap[s]):
                d = np.hypot(x[i] - cx[s] - ap_dx[s, a], y[i] - cy[s] - ap_dy[s, a])
                d = max(d, 1.0)
                wall = 0.0 if s == store_in[i] else 12.0
                h = _mix(np.uint64(keys[i]) ^ np.uint64(s * 4 + a + 1))
                r = -40.0 - 30.0 * np.log10(d) - wall + 2.5 * _gauss(h)
                if r < -92.0:
                    continue
                if s == store_in[i]:
                    own[i] = True
                ri = int(np.round(r))
                bssid = prefix | (s << 2) | a
                # Insert into the strongest-first list, dropping the weakest when full.
                if n < max_aps:
                    n += 1
                elif ri <= out_r[i, n - 1]:
                    continue
                m = n - 1
                while m > 0 and out_r[i, m - 1] < ri:
                    out_b[i, m] = out_b[i, m - 1]
                    out_r[i, m] = out_r[i, m - 1]
                    m -= 1
                out_b[i, m] = bssid
                out_r[i, m] = ri
        out_n[i] = n
