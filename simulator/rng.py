"""Counter-based randomness: every per-event random number is a hash of (seed, stream, ids).

Why not one sequential generator: the city is generated in time windows whose size depends on
the number of users; a hash of (user, tick, stream) gives every event the same noise whatever the
window, so output bytes depend only on the seed and the parameters, and any window can be
generated without the ones before it. splitmix64's finaliser is a good, cheap 64-bit mixer.
"""

from __future__ import annotations

import numpy as np

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


def key(seed: int, stream: int, *parts: np.ndarray | int) -> np.ndarray:
    """A uint64 hash of (seed, stream, parts...); parts broadcast like numpy arrays."""
    h = mix(np.asarray([(seed * 1_000_003 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    for p in parts:
        h = mix(h ^ np.asarray(p).astype(np.uint64))
    return h


def uniform(h: np.ndarray, salt: int = 0) -> np.ndarray:
    """Uniform floats in [0, 1) from hashes (salt derives independent draws from one key)."""
    if salt:
        h = mix(h ^ np.uint64(salt))
    return (h >> np.uint64(11)).astype(np.float64) * _INV53


def normal(h: np.ndarray, salt: int = 0) -> np.ndarray:
    """Standard normal floats from hashes (Box-Muller)."""
    u1 = uniform(h, salt * 2 + 101)
    u2 = uniform(h, salt * 2 + 102)
    out: np.ndarray = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return out
