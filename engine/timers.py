"""The visit timers the core's sweep fires: entries ``(due, user, store_id, visit_id)`` taken in
tuple order once their event time ``due`` has passed.

A plain ``heapq`` of tuples does this, but on a million-user replay its heap holds ~100k entries
scattered in memory, and every pop walks ~17 levels comparing tuples and their boxed floats: ~2 µs
of cache misses per pop. Here entries wait in one list per whole second of ``due`` and only the
(few hundred) distinct seconds are kept in a heap; a second's list is sorted once, when its turn
comes. The order entries come out in is exactly the heap's: ascending tuples.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left

Timer = tuple[float, str, str, str]  # (due, user, store_id, visit_id)
_FAR = 1 << 62  # dues beyond this (e.g. an infinite timeout) share one far bucket


class TimerQueue:
    def __init__(self) -> None:
        self._buckets: dict[int, list[Timer]] = {}
        self._seconds: list[int] = []  # heap of the keys of ``_buckets``
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, timer: Timer) -> None:
        due = timer[0]
        sec = math.floor(due) if -_FAR < due < _FAR else (_FAR if due > 0 else -_FAR)
        bucket = self._buckets.get(sec)
        if bucket is None:
            self._buckets[sec] = [timer]
            heapq.heappush(self._seconds, sec)
        else:
            bucket.append(timer)
        self._n += 1

    def pop_due(self, up_to: float) -> list[Timer]:
        """Remove and return every timer with ``due < up_to``, in ascending order."""
        out: list[Timer] = []
        seconds, buckets = self._seconds, self._buckets
        while seconds and seconds[0] < up_to:
            sec = seconds[0]
            bucket = buckets[sec]
            bucket.sort()
            if sec + 1 <= up_to and -_FAR < sec < _FAR:
                cut = len(bucket)  # the whole second is due
            else:
                cut = bisect_left(bucket, (up_to,))  # (up_to,) sorts before every (up_to, ...)
            out += bucket[:cut]
            if cut < len(bucket):
                del bucket[:cut]
                break  # the rest of this second, and every later one, is not due yet
            heapq.heappop(seconds)
            del buckets[sec]
        self._n -= len(out)
        return out
