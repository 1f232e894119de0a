"""Crash-loop protection: a breadcrumb of the batch in hand, and poison-message quarantine.

Any *exception* while decoding or processing one message dead-letters that message (see
``Service.handle``). A message that takes the whole process down (a hard crash: a segfault in
native code, the C stack blown, the OOM killer, ``os._exit``) is never acknowledged, so the broker
redelivers it at every restart, and it would kill every process that takes it again.

Before each micro-batch the daemon writes the digests of the batch's messages to a small file
beside the state (``Breadcrumb.mark``: 12 + 16 bytes per message copied into a shared memory map
of the file, i.e. the page cache; no system call, no fsync: it has to survive the *process*, not
the machine). At start, the previous
process's breadcrumb names the batch it had in hand when it ended; digests the state committed
since are dropped (``seen_inputs``), as is everything after a clean stop (the breadcrumb is
cleared). What remains was in hand when the process died:

* **suspects**, when they were a normal batch: each is processed alone (its own micro-batch,
  its own breadcrumb marked ``isolated``) when the broker redelivers it;
* **poison**, when it was a single message processed alone as a suspect: the process died on
  it twice, once in its batch and once alone. It is quarantined: dead-lettered with reason
  ``poison`` and acknowledged, never processed again.

So a poison message costs two restarts and is then dead-lettered, and every other message of its
batch is processed; a plain ``kill -9`` (or OOM kill) that happens to land during a batch only
makes that batch's messages run one by one once: an innocent message is quarantined only if the
process dies twice while handling it, the second time while it is alone.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.transport.mqtt import Inbound

log = logging.getLogger("geopush.daemon")

DIGEST_BYTES = 16
_MAGIC = b"GPB1"
_HEAD = struct.Struct("<4sBxxxI")  # magic, isolated flag, number of digests
NORMAL, ISOLATED = 0, 1


class Breadcrumb:
    """The batch in hand, in a file that survives a crash of the process (see the module doc):
    a shared memory map of the file, so marking a batch is a copy into the page cache, no
    system call (~0.1 µs for one message, ~1 µs for 64).

    ``previous`` is what the file held when opened: ``(isolated, digests)``."""

    def __init__(self, path: str | Path, capacity: int = 500) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self.previous = self._read()
            self._map = self._mapped(max(1, capacity))
        except OSError as exc:
            from engine.errors import StateError

            raise StateError(
                f"cannot use the in-flight breadcrumb {self.path}: {exc} (it lives beside the "
                "--state file, or the --pid-file for a Redis state: make that folder writable)"
            ) from exc

    def _read(self) -> tuple[bool, list[bytes]]:
        data = os.pread(self._fd, _HEAD.size, 0)
        if len(data) < _HEAD.size:
            return False, []
        magic, mode, n = _HEAD.unpack(data)
        body = os.pread(self._fd, n * DIGEST_BYTES, _HEAD.size) if magic == _MAGIC else b""
        if magic != _MAGIC or len(body) != n * DIGEST_BYTES:
            log.warning("ignoring a damaged in-flight breadcrumb %s", self.path)
            return False, []
        digests = [body[i : i + DIGEST_BYTES] for i in range(0, len(body), DIGEST_BYTES)]
        return mode == ISOLATED, digests

    def _mapped(self, capacity: int) -> mmap.mmap:
        self.capacity = capacity
        size = _HEAD.size + capacity * DIGEST_BYTES
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        return mmap.mmap(self._fd, size)

    def mark(self, digests: Sequence[bytes], *, isolated: bool = False) -> None:
        """Name the batch about to be decoded and processed: the digests, then the header with
        their number (a torn write leaves an old count over new digests: no valid suspect)."""
        n = len(digests)
        if n > self.capacity:
            self._map.close()
            self._map = self._mapped(2 * n)
        m = self._map
        if n:
            m[_HEAD.size : _HEAD.size + n * DIGEST_BYTES] = b"".join(digests)
        _HEAD.pack_into(m, 0, _MAGIC, ISOLATED if isolated else NORMAL, n)

    def clear(self) -> None:
        """Nothing in hand (a clean stop)."""
        self.mark(())

    def close(self) -> None:
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1


class Budget:
    """A token bucket: ``take`` is True at most ``rate`` times per second on average, with
    bursts of ``burst``; ``rate`` 0 means no limit."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._at = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


POISON_DETAIL = (
    "the engine process died twice while handling this message (the second time with it alone): "
    "quarantined, not processed; report it with the engine's log"
)

# Handles a (sub-)batch: False when a worker group's hold sent it back to the inbox's head.
BatchHandler = Callable[[list["Inbound"], list[bytes]], bool]


class CrashGuard:
    """The daemon's side of the crash-loop protection (see the module doc): the breadcrumb, and
    what the previous process left in it, the suspects (run alone) and the quarantine."""

    def __init__(self, path: str | Path, batch_size: int) -> None:
        self.crumb = Breadcrumb(path, batch_size)
        self.batch_size = batch_size
        self.suspects: set[bytes] = set()
        self.quarantine: set[bytes] = set()
        # The broker redelivers the unacknowledged messages first: both sets are forgotten after
        # this many more messages (a message the broker lost must not cost a look-up forever).
        self._watch_left = 0

    def load(self, seen_inputs: Callable[[list[bytes]], set[bytes]]) -> None:
        """Read what the previous process had in hand when it ended: suspects to process alone,
        or the one message it died on alone, to quarantine (``seen_inputs``: the digests among
        those the state committed since)."""
        isolated, left = self.crumb.previous
        if left:
            done = seen_inputs(left)
            left = [d for d in left if d not in done]
        if not left:
            return
        self._watch_left = 10_000 + 20 * self.batch_size
        if isolated and len(left) == 1:
            self.quarantine.update(left)
            log.error(
                "the previous process died on a message it was processing alone, for the second "
                "time: it will be dead-lettered as poison, not processed"
            )
        else:
            self.suspects.update(left)
            log.warning(
                "the previous process died with %d uncommitted messages in hand: each will be "
                "processed alone", len(left),
            )  # fmt: skip

    def has_suspects(self, keys: list[bytes]) -> bool:
        """Whether the batch of ``keys`` holds a suspect (then ``handle_suspects`` runs it);
        counts the messages seen since the start, and forgets the suspects after enough."""
        if not (self.suspects or self.quarantine):
            return False
        self._watch_left -= len(keys)
        if self._watch_left < 0:
            n = len(self.suspects) + len(self.quarantine)
            log.warning("%d suspect messages never came back: forgotten", n)
            self.suspects.clear()
            self.quarantine.clear()
            return False
        return bool(self.suspects) and not self.suspects.isdisjoint(keys)

    def quarantined(self, key: bytes, topic: str) -> bool:
        """True (once) for the message the previous process died on twice: dead-letter it."""
        if not self.quarantine or key not in self.quarantine:
            return False
        self.quarantine.discard(key)
        log.error("quarantined a message from %s: the process died on it twice", topic)
        return True

    def handle_suspects(
        self,
        batch: list[Inbound],
        keys: list[bytes],
        handle: BatchHandler,
        inbox: deque[Inbound],
    ) -> bool:
        """The previous process died with some of these messages in hand: each of those goes
        alone, marked so (dying on it again quarantines it); the others, in between, in
        batches, in their order. False: a group's hold sent part back to ``inbox``."""
        crumb, suspects = self.crumb, self.suspects
        run: list[tuple[Inbound, bytes]] = []
        pairs: list[tuple[Inbound | None, bytes]] = [*zip(batch, keys, strict=True), (None, b"")]
        for i, (x, k) in enumerate(pairs):
            if x is not None and k not in suspects:
                run.append((x, k))
                continue
            if run:
                sub, run = run, []
                crumb.mark([j for _, j in sub])
                if not handle([y for y, _ in sub], [j for _, j in sub]):
                    return _held_rest(inbox, len(sub), pairs[i:])  # a group's hold: keep the order
            if x is not None:
                log.warning("processing alone a message the last process died with (%s)", x.topic)
                crumb.mark([k], isolated=True)
                if not handle([x], [k]):
                    return _held_rest(inbox, 1, pairs[i + 1 :])
                suspects.discard(k)
        return True

    def mark(self, keys: Sequence[bytes]) -> None:
        """Name the batch about to be processed (survives a crash of the process)."""
        self.crumb.mark(keys)

    def clear(self) -> None:
        """A clean stop: nothing was in hand."""
        self.crumb.clear()

    def close(self) -> None:
        self.crumb.close()


def _held_rest(inbox: deque[Inbound], held: int, rest: list[tuple[Inbound | None, bytes]]) -> bool:
    """A group's hold sent the last ``held`` messages back to the inbox's head: what followed
    them in this batch goes back right behind them, so the order is kept."""
    head = [inbox.popleft() for _ in range(held)]
    inbox.extendleft(reversed([*head, *(x for x, _ in rest if x is not None)]))
    return False


__all__ = ["POISON_DETAIL", "Breadcrumb", "Budget", "CrashGuard"]
