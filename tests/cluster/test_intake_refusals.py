"""The NATS intake refuses a cluster whose partition mapping is missing or uses another P,
saying what to configure (before it consumes anything)."""

from __future__ import annotations

import pytest

from engine.errors import TransportError
from engine.transport.jetstream import JetStreamLink, parse_nats_urls
from engine.transport.mqtt import parse_broker_url
from simulator.bench.nats_cluster import NatsCluster, find_nats_server

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize(
    ("cluster_p", "match"), [(0, "arrived as geopush.events."), (8, "P = --partition-count")]
)
async def test_a_cluster_without_the_mapping_is_refused(cluster_p: int, match: str) -> None:
    if find_nats_server() is None:
        pytest.skip("nats-server not found")
    with NatsCluster(partitions=cluster_p) as c:
        link = JetStreamLink(
            parse_broker_url(c.mqtt_url(0)), nats_urls=parse_nats_urls(c.nats_urls),
            partitions=[0, 1], partition_count=16, client_id="engine",
        )  # fmt: skip
        with pytest.raises(TransportError, match=match) as err:
            await link.connect()
        assert "docs/scaling.md" in str(err.value)
        assert not link.connected
