"""Fixtures for the scale-out tests: a real redis-server (AOF, fsync always) on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemon.conftest import AS_ROOT

from engine.stores.redis_store import RedisStore, connect
from simulator.bench.redis_server import RedisServer, find_redis_server
from simulator.embedded_broker import MosquittoBroker


def _need_redis() -> None:
    if find_redis_server() is None:
        pytest.skip("redis-server binary not found on PATH: the scale-out tests need a real Redis")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server per test (own port and data dir); the test may stop/kill/restart it."""
    _need_redis()
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def make_store(redis_server: RedisServer) -> Iterator[object]:
    """Factory: ``make_store(worker="w1", **kw)`` -> a RedisStore on the test's server."""
    made: list[RedisStore] = []

    def make(worker: str = "w0", reconnect_s: float = 10.0, **kw: object) -> RedisStore:
        store = RedisStore(connect(redis_server.url, reconnect_s=reconnect_s), worker=worker, **kw)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()


@pytest.fixture
def redis_cluster() -> Iterator[object]:
    """A fresh 3-master / 3-replica Redis Cluster on free ports (simulator/bench/redis_cluster.py);
    the test may kill nodes (``kill``, ``wait_failover``)."""
    import shutil

    from simulator.bench.redis_cluster import RedisClusterServer

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli not found on PATH: the cluster tests need them")
    with RedisClusterServer() as cl:
        yield cl


@pytest.fixture
def group_broker() -> Iterator[MosquittoBroker]:
    """A mosquitto (persistent sessions, ``$share`` subscriptions) for a group of workers."""
    b = MosquittoBroker(persistence=True, extra_config=AS_ROOT + "max_inflight_messages 100\n")
    b.start()
    try:
        yield b
    finally:
        b.stop()
