"""Partitions: the unit of work of a clustered deployment (docs/scaling.md).

A user belongs to partition ``partition_of(user, P)``: FNV-1a (32-bit) of the user id's UTF-8
bytes, modulo P. It is the function behind NATS's subject mapping ``{{partition(P,1)}}`` (the
hash of the one wildcard token), so the broker routes a phone's MQTT publish to the partition
the engine expects; keep the two identical.
"""

from __future__ import annotations

from engine.errors import ConfigError

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(user: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) of ``user``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return fnv1a_32(user.encode()) % partitions


def parse_partitions(spec: str, count: int) -> list[int]:
    """``"0-7,12,14-15"`` -> sorted partition numbers, each below ``count``; ``"all"``: every one."""
    if spec.strip() == "all":
        return list(range(count))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
            else:
                lo = hi = int(part)
        except ValueError:
            raise ConfigError(
                f"--partitions {spec!r}: expected numbers and ranges such as 0-7,12 or 'all'"
            ) from None
        if lo > hi or lo < 0 or hi >= count:
            raise ConfigError(
                f"--partitions {spec!r}: {part} is outside 0-{count - 1} "
                f"(--partition-count is {count})"
            )
        out.update(range(lo, hi + 1))
    if not out:
        raise ConfigError(f"--partitions {spec!r} names no partition")
    return sorted(out)
