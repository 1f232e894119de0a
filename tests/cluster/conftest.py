"""Fixtures for the cluster tests: a real 3-node NATS cluster (JetStream, MQTT) on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulator.bench.nats_cluster import NatsCluster, find_nats_server

PARTITIONS = 16


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    if find_nats_server() is None:
        pytest.skip(
            "nats-server not found (apt-get install nats-server): the cluster tests need it"
        )
    with NatsCluster(partitions=PARTITIONS) as c:
        yield c
