"""A broker node killed mid-stream loses nothing the phones saw acknowledged (docs/scaling.md)."""

from __future__ import annotations

import pytest

from cluster.harness import publish_consume_kill
from simulator.bench.nats_cluster import NatsCluster

pytestmark = pytest.mark.cluster


async def test_no_pubacked_message_lost_when_the_stream_leader_dies(
    nats_cluster: NatsCluster,
) -> None:
    out = await publish_consume_kill(nats_cluster)
    print(out.summary())
    assert len(out.acked) > 0.5 * out.published, out.summary()
    assert not out.lost, out.summary()
