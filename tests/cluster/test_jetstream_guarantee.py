"""A broker node killed mid-stream loses nothing the phones saw acknowledged (docs/scaling.md)."""

from __future__ import annotations

import pytest

from cluster.harness import UserStreamLink, publish_consume_kill
from simulator.bench.nats_cluster import NatsCluster

pytestmark = pytest.mark.cluster


async def test_no_pubacked_message_lost_when_the_stream_leader_dies(
    nats_cluster: NatsCluster,
) -> None:
    out = await publish_consume_kill(nats_cluster)
    print(out.summary())
    assert len(out.acked) > 0.5 * out.published, out.summary()
    assert not out.lost, out.summary()


@pytest.mark.xfail(
    strict=False,  # the loss depends on where the kill lands; it did not show in 1 of ~6 runs
    reason="the trap: a user stream loses PUBACKed messages when its leader dies"
)
async def test_a_user_stream_loses_pubacked_messages(nats_cluster: NatsCluster) -> None:
    """Why the intake reads $MQTT_msgs: the same run on a user stream capturing the partitioned
    subjects loses messages the phones saw PUBACKed (the same harness, the same kill)."""
    out = await publish_consume_kill(nats_cluster, link_cls=UserStreamLink, settle_s=30)
    print(out.summary())
    assert not out.lost, out.summary()
