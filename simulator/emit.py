"""Fast JSON lines for simulated events, byte-for-byte what ``engine.events.encode_event`` writes.

Formatting millions of events a second in Python is the simulator's bottleneck, so events are
held as integer columns (fixed-point: ts in ms, lon/lat in 1e-7 degrees, accuracy in decimetres,
amounts in cents) and a numba kernel writes the JSON bytes. A fixed-point decimal with its
trailing zeros stripped (and at least one fractional digit) is exactly the shortest round-trip
repr of the float it parses to (for up to 15 significant digits), which is what msgspec writes;
tests/simulator/test_city.py holds every line against ``encode_event(decode(line))``.

Kinds (column ``kind``) and what the generic columns a, b, c hold:

======== =========================== ==================== ==============
kind     a                           b                    c
======== =========================== ==================== ==============
GPS 0    lon * 1e7                   lat * 1e7            acc * 10
WIFI 1   first AP row                AP count             -
BEACON 2 major                       minor                rssi (dBm)
NFC 3    store index (tag)           -                    -
PAY 4    merchant index              amount in cents      -
======== =========================== ==================== ==============
"""

from __future__ import annotations

import numba as nb
import numpy as np

GPS, WIFI, BEACON, NFC, PAY = 0, 1, 2, 3, 4


def _lit(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8).copy()


_L_TYPE = _lit('{"type":"')
_L_USER = _lit('","user":"u')
_L_TS = _lit('","ts":')
_L_GPS = _lit("gps")
_L_WIFI = _lit("wifi")
_L_BEACON = _lit("beacon")
_L_NFC = _lit("nfc")
_L_PAY = _lit("payment")
_L_LON = _lit(',"lon":')
_L_LAT = _lit(',"lat":')
_L_ACC = _lit(',"acc":')
_L_APS = _lit(',"aps":[')
_L_BSSID = _lit('{"bssid":"')
_L_RSSI_AP = _lit('","rssi":')
_L_UUID = _lit(',"uuid":"')
_L_MAJOR = _lit('","major":')
_L_MINOR = _lit(',"minor":')
_L_RSSI = _lit(',"rssi":')
_L_TAG = _lit(',"tag":"nfc-s')
_L_MERCH = _lit(',"merchant_id":"m')
_L_AMOUNT = _lit('","amount":')
_HEX = _lit("0123456789abcdef")


@nb.njit(cache=True, inline="always")
def _put(buf: np.ndarray, pos: int, lit: np.ndarray) -> int:
    for i in range(lit.shape[0]):
        buf[pos + i] = lit[i]
    return int(pos + lit.shape[0])


@nb.njit(cache=True)
def _put_uint(buf: np.ndarray, pos: int, v: int, width: int) -> int:
    """Decimal digits of v >= 0, zero-padded to at least ``width``."""
    n = 1
    t = v
    while t >= 10:
        t //= 10
        n += 1
    if n < width:
        n = width
    for i in range(n - 1, -1, -1):
        buf[pos + i] = 48 + v % 10
        v //= 10
    return pos + n


@nb.njit(cache=True)
def _put_int(buf: np.ndarray, pos: int, v: int) -> int:
    if v < 0:
        buf[pos] = 45  # '-'
        return _put_uint(buf, pos + 1, -v, 1)
    return _put_uint(buf, pos, v, 1)


@nb.njit(cache=True)
def _put_sci(buf: np.ndarray, pos: int, v: int, decimals: int) -> int:
    """0 < v / 10**decimals < 1e-5 the way msgspec writes it (like JavaScript): '1e-7', '1.23e-5'."""
    z = 0
    while v % 10 == 0:
        v //= 10
        z += 1
    n = 1
    t = v
    while t >= 10:
        t //= 10
        n += 1
    p10 = 1
    for _ in range(n - 1):
        p10 *= 10
    buf[pos] = 48 + v // p10
    pos += 1
    if n > 1:
        buf[pos] = 46
        pos += 1
        pos = _put_uint(buf, pos, v % p10, n - 1)
    buf[pos] = 101  # 'e'
    buf[pos + 1] = 45  # '-'
    return _put_uint(buf, pos + 2, decimals - z - (n - 1), 1)


@nb.njit(cache=True)
def _put_fixed(buf: np.ndarray, pos: int, v: int, decimals: int) -> int:
    """v / 10**decimals as the shortest float repr: '12.5', '-60.0', '24.9384123'."""
    if v < 0:
        buf[pos] = 45
        pos += 1
        v = -v
    scale = 1
    for _ in range(decimals):
        scale *= 10
    if v != 0 and v * 100_000 < scale:
        return _put_sci(buf, pos, v, decimals)
    pos = _put_uint(buf, pos, v // scale, 1)
    buf[pos] = 46  # '.'
    pos += 1
    frac = v % scale
    if frac == 0:
        buf[pos] = 48
        return pos + 1
    nd = decimals
    while frac % 10 == 0:
        frac //= 10
        nd -= 1
    return _put_uint(buf, pos, frac, nd)


@nb.njit(cache=True)
def _put_mac(buf: np.ndarray, pos: int, v: int) -> int:
    for octet in range(5, -1, -1):
        byte = (v >> (8 * octet)) & 0xFF
        buf[pos] = _HEX[byte >> 4]
        buf[pos + 1] = _HEX[byte & 15]
        pos += 2
        if octet:
            buf[pos] = 58  # ':'
            pos += 1
    return pos


@nb.njit(cache=True, nogil=True)
def write_lines(
    buf: np.ndarray,
    kind: np.ndarray,
    user: np.ndarray,
    ts_ms: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    ap_bssid: np.ndarray,
    ap_rssi: np.ndarray,
    uuid: np.ndarray,
    user_w: int,
    store_w: int,
    merchant_w: int,
) -> int:
    """Write one JSON line per event into ``buf``; returns the number of bytes written.
    ``buf`` must be large enough (see ``line_budget``)."""
    pos = 0
    for i in range(kind.shape[0]):
        k = kind[i]
        pos = _put(buf, pos, _L_TYPE)
        if k == 0:
            pos = _put(buf, pos, _L_GPS)
        elif k == 1:
            pos = _put(buf, pos, _L_WIFI)
        elif k == 2:
            pos = _put(buf, pos, _L_BEACON)
        elif k == 3:
            pos = _put(buf, pos, _L_NFC)
        else:
            pos = _put(buf, pos, _L_PAY)
        pos = _put(buf, pos, _L_USER)
        pos = _put_uint(buf, pos, user[i], user_w)
        pos = _put(buf, pos, _L_TS)
        pos = _put_fixed(buf, pos, ts_ms[i], 3)
        if k == 0:
            pos = _put(buf, pos, _L_LON)
            pos = _put_fixed(buf, pos, a[i], 7)
            pos = _put(buf, pos, _L_LAT)
            pos = _put_fixed(buf, pos, b[i], 7)
            pos = _put(buf, pos, _L_ACC)
            pos = _put_fixed(buf, pos, c[i], 1)
        elif k == 1:
            pos = _put(buf, pos, _L_APS)
            for j in range(a[i], a[i] + b[i]):
                if j > a[i]:
                    buf[pos] = 44  # ','
                    pos += 1
                pos = _put(buf, pos, _L_BSSID)
                pos = _put_mac(buf, pos, ap_bssid[j])
                pos = _put(buf, pos, _L_RSSI_AP)
                pos = _put_fixed(buf, pos, ap_rssi[j] * 10, 1)
                buf[pos] = 125  # '}'
                pos += 1
            buf[pos] = 93  # ']'
            pos += 1
        elif k == 2:
            pos = _put(buf, pos, _L_UUID)
            pos = _put(buf, pos, uuid)
            pos = _put(buf, pos, _L_MAJOR)
            pos = _put_uint(buf, pos, a[i], 1)
            pos = _put(buf, pos, _L_MINOR)
            pos = _put_uint(buf, pos, b[i], 1)
            pos = _put(buf, pos, _L_RSSI)
            pos = _put_fixed(buf, pos, c[i] * 10, 1)
        elif k == 3:
            pos = _put(buf, pos, _L_TAG)
            pos = _put_uint(buf, pos, a[i], store_w)
            buf[pos] = 34  # '"'
            pos += 1
        else:
            pos = _put(buf, pos, _L_MERCH)
            pos = _put_uint(buf, pos, a[i], merchant_w)
            pos = _put(buf, pos, _L_AMOUNT)
            pos = _put_fixed(buf, pos, b[i], 2)
        buf[pos] = 125  # '}'
        buf[pos + 1] = 10  # '\n'
        pos += 2
    return pos


def line_budget(n_events: int, n_aps: int, uuid_len: int = 36) -> int:
    """An upper bound on the bytes ``write_lines`` needs."""
    return n_events * (160 + uuid_len) + n_aps * 48 + 64


def format_events(
    cols: dict[str, np.ndarray],
    ap_bssid: np.ndarray,
    ap_rssi: np.ndarray,
    uuid: str,
    widths: tuple[int, int, int],
) -> bytes:
    """JSON lines (bytes) for the events in ``cols`` (keys kind, user, ts_ms, a, b, c)."""
    n = len(cols["kind"])
    buf = np.empty(line_budget(n, len(ap_bssid), len(uuid)), dtype=np.uint8)
    used = write_lines(
        buf,
        cols["kind"].astype(np.uint8),
        cols["user"].astype(np.int64),
        cols["ts_ms"].astype(np.int64),
        cols["a"].astype(np.int64),
        cols["b"].astype(np.int64),
        cols["c"].astype(np.int64),
        ap_bssid.astype(np.int64),
        ap_rssi.astype(np.int64),
        _lit(uuid),
        widths[0],
        widths[1],
        widths[2],
    )
    return buf[:used].tobytes()
