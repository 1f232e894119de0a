"""Child process of test_cluster.py (not a test module): reserve coupons for a partition, then die (kill -9)."""

from __future__ import annotations

import os
import signal

from engine.daemon.pipeline import Renderer, Topics
from engine.stores.cluster_store import ClusterStore, connect_cluster


def crash_after_reserve(url: str, p: int, users: list[str]) -> None:
    st = ClusterStore(connect_cluster(url), worker="w1", partitions=16, render=Renderer(Topics()), block=2)
    assert st.acquire(p)
    st.begin(p, users)
    for _ in users:
        assert st.take_coupon("c1", 3)
    st._reserve_missing()  # the grant is recorded in the pool's slot ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the commit that would credit it never comes
