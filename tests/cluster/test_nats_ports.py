"""The NATS cluster harness survives a port taken between picking it and the bind (free_port's
race; a cluster test failed on it in CI): new ports for every node, and the cluster starts."""

from __future__ import annotations

import socket

import pytest

from simulator.bench.nats_cluster import NatsCluster, find_nats_server

pytestmark = pytest.mark.cluster


def test_a_taken_port_means_new_ports_and_a_started_cluster():
    if find_nats_server() is None:
        pytest.skip("nats-server not found (apt-get install nats-server)")
    c = NatsCluster(partitions=4)
    taken = c.nodes[1].mqtt_port
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        c.start()
        assert taken not in {n.mqtt_port for n in c.nodes}
        assert all(c.running(i) for i in range(len(c.nodes)))
    finally:
        squatter.close()
        c.close()
