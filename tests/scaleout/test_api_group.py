"""The HTTP API in a worker group: two real `geopush run --group g --state redis://... --http`
workers on one mosquitto (shared subscription) and one redis-server. A store changed through
worker A's API decides the fixes worker B handles, and a worker restarted later has the changes
made while it was down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from api.conftest import circle, collection
from daemon.conftest import Collector, gps, publish_all, spawn_daemon, wait_online
from webhooks.conftest import free_port

from engine.api.redis_state import RedisApiState
from simulator.bench.redis_server import RedisServer
from simulator.embedded_broker import MosquittoBroker, find_mosquitto

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None,
    reason="needs the mosquitto binary: shared subscriptions ($share) are not delivered by amqtt",
)

T0 = 1_700_000_000.0
A = (24.9400, 60.1700)  # s1 in the catalog file
B = (24.9500, 60.1700)  # ~550 m east: where worker A's API moves s1
C = (24.9600, 60.1700)  # a new store s2, made through worker B's API while A is down
FAR = (25.5000, 60.5000)  # where the background walker walks
OUT = ["geopush/visits/#", "geopush/push/#", "geopush/status/#"]
USERS = 12


class Files:
    def __init__(self, folder: Path) -> None:
        self.fences = folder / "fences.geojson"
        self.campaigns = folder / "campaigns.json"
        self.fences.write_text(json.dumps(collection(circle("s1", "m1", *A, r=30))))
        coupon = {"title": "10%", "value": 10, "currency": "EUR", "expires_in_s": 3600}
        self.campaigns.write_text(json.dumps({"campaigns": [
            {"id": "c1", "merchant_id": "m1", "trigger": "enter", "coupon": coupon},
        ]}))  # fmt: skip


class Workers:
    def __init__(self, broker: str, redis_url: str, files: Files) -> None:
        self.broker, self.redis_url, self.files = broker, redis_url, files
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        self.ports[name] = port = free_port()
        self.procs[name] = p = spawn_daemon(
            self.broker, self.redis_url, self.files,  # type: ignore[arg-type]
            "--group", "g", "--client-id", name, "--batch-size", "8", "--http", f"127.0.0.1:{port}",
            "--pid-file", str(self.files.fences.parent / f"{name}.pid"),
        )  # fmt: skip
        return p

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/v1"

    def stop(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"worker {name} did not stop on SIGTERM") from None
        err = p.stderr.read().decode() if p.stderr else ""
        assert rc == 0, f"worker {name} exited {rc}:\n{err[-3000:]}"

    def stop_all(self) -> None:
        for name in self.procs:
            with contextlib.suppress(AssertionError):
                self.stop(name)


def _enters(col: Collector, store_id: str) -> set[str]:
    return {
        d["user"]
        for d in col.json_on("geopush/visits/")
        if d["event"] == "enter" and d["store_id"] == store_id
    }


def _events(col: Collector, pid: int) -> int:
    """The events counter of the worker process's newest status."""
    last = [d for d in col.json_on("geopush/status/") if d.get("pid") == pid and "counters" in d]
    return int(last[-1]["counters"].get("events", 0)) if last else 0


async def _until_served(
    url: str, auth: dict[str, str], store_id: str, where: tuple[float, float]
) -> None:
    """Until the worker's API (its live index) shows the store at ``where`` (a sync point, not
    a timing assertion: the change travels through Redis)."""
    async with httpx.AsyncClient(base_url=url, headers=auth) as http:
        for _ in range(1000):
            r = await http.get(f"/stores/{store_id}")
            if r.status_code == 200 and r.json()["geometry"]["coordinates"] == list(where):
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never served {store_id} at {where}")


async def _settled(col: Collector, pids: list[int], total: int) -> dict[int, int]:
    """Until the worker processes' status counters add up to ``total`` events; the counts."""
    await col.wait_for(lambda c: sum(_events(c, p) for p in pids) >= total, 30)
    return {p: _events(col, p) for p in pids}


async def test_a_store_changed_through_one_workers_api_reaches_every_worker(
    group_broker: MosquittoBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    files = Files(tmp_path)
    st = RedisApiState(redis_server.url)
    _info, token = st.create_token("operator")
    st.close()
    auth = {"Authorization": f"Bearer {token}"}
    workers = Workers(group_broker.url, redis_server.url, files)
    workers.start("wa")
    workers.start("wb")
    sent = 0

    async def publish(msgs: list[tuple[str, bytes]]) -> None:
        nonlocal sent
        await publish_all(group_broker.url, msgs)
        sent += len(msgs)

    try:
        async with Collector(group_broker.url, OUT) as col:
            for p in workers.procs.values():
                await wait_online(col, p.pid)

            async def walk() -> None:  # events keep flowing while the store changes
                for k in range(1, 40):
                    await publish(
                        [("geopush/events/walker", gps("walker", T0 + k, FAR[1], FAR[0]))]
                    )
                    await asyncio.sleep(0.02)

            walker = asyncio.create_task(walk())
            async with httpx.AsyncClient(base_url=workers.url("wa"), headers=auth) as http:
                r = await http.put("/stores/s1", json=circle("s1", "m1", *B, r=30))
                assert r.status_code == 200, r.text
            await _until_served(workers.url("wb"), auth, "s1", B)
            await walker
            pids = [workers.procs["wa"].pid, workers.procs["wb"].pid]
            before = await _settled(col, pids, sent)

            # one fix each, inside the moved fence: the shared subscription spreads them over
            # both workers, and every one enters s1 where worker A's API put it
            users = [f"u{i}" for i in range(USERS)]
            await publish([(f"geopush/events/{u}", gps(u, T0 + 100, B[1], B[0])) for u in users])
            await col.wait_for(lambda c: _enters(c, "s1") >= set(users), 30)
            after = await _settled(col, pids, sent)
            assert after[pids[1]] > before[pids[1]], "worker B handled some of the fixes"

            # worker A goes down; a store is made through worker B's API; A comes back with it
            workers.stop("wa")
            sent -= after[pids[0]]  # the events the first worker A handled
            async with httpx.AsyncClient(base_url=workers.url("wb"), headers=auth) as http:
                r = await http.put("/stores/s2", json=circle("s2", "m1", *C, r=30))
                assert r.status_code == 201, r.text
            wa = workers.start("wa")
            await wait_online(col, wa.pid)
            await _until_served(workers.url("wa"), auth, "s2", C)
            pids = [wa.pid, pids[1]]
            before = await _settled(col, pids, sent)
            users2 = [f"v{i}" for i in range(USERS)]
            await publish([(f"geopush/events/{u}", gps(u, T0 + 200, C[1], C[0])) for u in users2])
            await col.wait_for(lambda c: _enters(c, "s2") >= set(users2), 30)
            after = await _settled(col, pids, sent)
            assert after[wa.pid] > before[wa.pid], (
                "the restarted worker A handled some of the fixes"
            )
    finally:
        workers.stop_all()


def test_tokens_and_changes_in_redis(redis_server: RedisServer) -> None:
    """RedisApiState keeps ApiState's contract: numbered changes (newest per store), hashed
    tokens that can be revoked."""
    st = RedisApiState(redis_server.url)
    try:
        from engine.api.state import StoreChange

        f1 = circle("s1", "m1", *A)
        st.record([StoreChange("s1", "m1", f1), StoreChange("s2", "m1", circle("s2", "m1", *B))])
        st.record([StoreChange("s2", "m1", None)])
        got: list[Any] = [(c.store_id, c.feature, c.seq) for c in st.store_changes()]
        assert got == [("s1", f1, 1), ("s2", None, 3)]
        assert [c.store_id for c in st.store_changes(after=1)] == ["s2"]
        info, secret = st.create_token("merchant", "m1", "shop")
        who = st.authenticate(secret)
        assert who is not None and who.merchant_id == "m1" and who.token_id == info.token_id
        assert st.authenticate(secret + "x") is None
        assert [t.token_id for t in st.list_tokens()] == [info.token_id]
        st.revoke(info.token_id)
        assert st.authenticate(secret) is None
    finally:
        st.close()


async def test_the_follower_catches_up_from_its_sequence_in_redis_order(
    redis_server: RedisServer,
) -> None:
    """A worker's follower applies the changes after the one it last applied, in the order Redis
    numbered them (its own too: an older change of another worker never wins), and catches up
    from the hash when the stream was trimmed past it."""
    from engine.api.live import FenceTarget
    from engine.api.redis_state import ChangeFollower
    from engine.api.state import StoreChange
    from fences.catalog import load_catalog
    from fences.index import FenceIndex

    st = RedisApiState(redis_server.url)
    index = FenceIndex(load_catalog_from([circle("s1", "m1", *A)], load_catalog))
    removed: list[str] = []
    target = FenceTarget(lambda: index, removed.extend)
    follower = ChangeFollower(redis_server.url, target, after=0)

    async def until(seq: int) -> None:
        task = asyncio.create_task(follower.run())
        try:
            for _ in range(1000):
                if follower.applied >= seq:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"applied {follower.applied}, not {seq}")
        finally:
            follower.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)  # bounded: a follower that cannot stop fails

    try:
        # this worker moved s1 to C itself (applied already) after another worker moved it to B:
        # Redis numbered B first, so C stays
        st.record([StoreChange("s1", "m1", circle("s1", "m1", *B, r=30))])
        st.record([StoreChange("s1", "m1", circle("s1", "m1", *C, r=30))])
        st.record([StoreChange("s2", "m1", circle("s2", "m1", *B, r=30))])
        index.add(
            next(iter(load_catalog_from([circle("s1", "m1", *C, r=30)], load_catalog).stores))
        )
        await until(3)
        assert index.catalog.get("s1").center == C
        assert index.catalog.get("s2").center == B

        # down while two more changes come, and the stream is trimmed past its sequence
        st.record([StoreChange("s2", "m1", None)])
        st.record([StoreChange("s3", "m1", circle("s3", "m1", *A, r=30))])
        st.r.xtrim(st.k_changes, maxlen=1, approximate=False)
        await until(5)
        assert index.catalog.slot_of("s2") is None and removed == ["s2"]
        assert index.catalog.get("s3").center == A
    finally:
        st.close()


def load_catalog_from(features: list[dict[str, Any]], load: Any) -> Any:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".geojson", delete=False) as f:
        json.dump(collection(*features), f)
    return load(Path(f.name))
