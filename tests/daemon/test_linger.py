"""--linger-ms: a small batch waits for company; a full one goes at once."""

from __future__ import annotations

import asyncio
import time

from .conftest import Collector, gps, publish_all, running_service


async def test_a_burst_within_the_linger_is_one_batch_and_waits_for_it(broker, tmp_path):
    msgs = [(f"geopush/events/u{i}", gps(f"u{i}", 100.0 + i)) for i in range(30)]
    async with (
        Collector(broker.url, ["geopush/push/#"]) as col,
        running_service(broker.url, tmp_path / "s.db", linger_ms=400.0) as svc,
    ):
        t0 = time.monotonic()
        await publish_all(broker.url, msgs)
        await col.wait_for(lambda c: len(c.on("geopush/push/")) == 30)
        waited = time.monotonic() - t0
        assert svc.totals["batches"] <= 2, svc.totals  # a burst, not 30 batches of one
    assert waited >= 0.3, f"pushes after {waited:.3f} s: the batch did not linger"


async def _one_then_the_rest(url: str, state, **flags) -> tuple[float, int]:
    """Publish one message, and 0.1 s later 39 more, to a service lingering 1 s: seconds until
    all 40 pushes arrived, and the service's batch count."""
    msgs = [(f"geopush/events/u{i}", gps(f"u{i}", 100.0 + i)) for i in range(40)]
    async with Collector(url, ["geopush/push/#"]) as col, running_service(
        url, state, linger_ms=1000.0, **flags
    ) as svc:
        t0 = time.monotonic()
        await publish_all(url, msgs[:1])  # the loop wakes for one and lingers...
        await asyncio.sleep(0.1)
        await publish_all(url, msgs[1:])  # ...until the batch holds enough
        await col.wait_for(lambda c: len(c.on("geopush/push/")) == 40)
        return time.monotonic() - t0, svc.totals["batches"]


async def test_a_full_batch_does_not_wait_for_the_linger(broker, tmp_path):
    waited, batches = await _one_then_the_rest(broker.url, tmp_path / "s.db", batch_size=10)
    assert batches >= 4
    assert waited < 0.8, f"full batches waited {waited:.2f} s for a 1 s linger"


async def test_a_batch_of_linger_batch_messages_does_not_wait_for_the_linger(broker, tmp_path):
    waited, _ = await _one_then_the_rest(
        broker.url, tmp_path / "s.db", linger_batch=10, batch_size=1000
    )
    assert waited < 0.8, f"a batch of linger_batch waited {waited:.2f} s for a 1 s linger"
