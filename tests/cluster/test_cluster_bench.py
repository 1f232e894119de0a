"""`geopush bench e2e --workers N --nats-cluster P` reports events/s per worker on the cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from simulator.bench.nats_cluster import find_nats_server

pytestmark = pytest.mark.cluster


def test_bench_e2e_workers_on_a_nats_cluster() -> None:
    if find_nats_server() is None:
        pytest.skip("nats-server not found")
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    cmd = [
        sys.executable, "-m", "engine", "bench", "e2e", "--workers", "2", "--nats-cluster", "16",
        "--group-users", "200", "--group-per-user", "5", "--no-sqlite-baseline",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["workers"] for r in rows] == [1, 2]
    assert all("NATS 16 partitions" in r["label"] for r in rows), rows
    assert all(r["events"] == 1000 and r["events_per_s_per_worker"] > 0 for r in rows), rows


def test_bench_e2e_workers_on_one_stack_beside_the_baseline() -> None:
    """`--stack P`: `geopush worker --intake` on a NATS cluster + Redis Cluster, interleaved with
    the mosquitto + single Redis run, with events/s per worker and Redis round trips per event."""
    if find_nats_server() is None:
        pytest.skip("nats-server not found")
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    cmd = [
        sys.executable, "-m", "simulator.bench.workers", "--workers", "1", "--stack", "8",
        "--group-users", "200", "--group-per-user", "5", "--no-sqlite-baseline",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["label"] for r in rows] == [
        "mosquitto + redis, 1 worker",
        "NATS cluster + Redis Cluster, 1 worker",
        "NATS cluster + Redis Cluster, 1 worker, outputs kept in Redis",
    ]
    assert all(r["events"] == 1000 and r["events_per_s_per_worker"] > 0 for r in rows), rows
    assert all(r["round_trips_per_event"] > 0 for r in rows), rows
