"""Users to partitions: the ONE partition function of geopush (docs/scaling.md, "Partitions").

A partition is a fixed share of users: ``partition_of(user, P)`` is the 32-bit FNV-1a hash of
the user id's UTF-8 bytes, modulo ``P``. This is exactly what NATS computes for a subject
mapping ``partition(P, N)`` over the wildcard token holding the user (nats-server
``subjectTransform.getHashPartition``: ``fnv.New32a`` over the token's bytes, ``% P``), so a
broker that routes ``geopush.events.<user>`` to ``geopush.p.<partition>.<user>`` and the engine
that keeps the state of ``<partition>`` agree on every user. (NATS's MQTT gateway maps a ``.``
inside an MQTT topic level to ``//`` in the subject; user ids with a dot would hash differently
there: keep user ids free of ``.``, as the wallet's ids are.)

``P`` is fixed for the life of a deployment (256 by default): changing it moves almost every
user to another partition, i.e. it is a migration, not a setting.
"""

from __future__ import annotations

from engine.errors import ConfigError

DEFAULT_PARTITIONS = 256
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a of ``data`` (Go's ``hash/fnv.New32a``)."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(user: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """The partition of ``user`` among ``partitions`` (0 .. partitions-1)."""
    return fnv1a32(user.encode()) % partitions


def check_partitions(partitions: int) -> int:
    """``partitions`` if it is a usable partition count, else a ``ConfigError`` saying why."""
    if not isinstance(partitions, int) or isinstance(partitions, bool) or not 1 <= partitions <= 16384:
        raise ConfigError(
            f"--partitions {partitions!r}: give a whole number from 1 to 16384 (256 is a good "
            "default; it is fixed for a deployment's life)"
        )
    return partitions


__all__ = ["DEFAULT_PARTITIONS", "check_partitions", "fnv1a32", "partition_of"]
