"""Webhooks through a worker group, with real parts only: two `geopush run --group g --state
redis://... --http` workers on one mosquitto (shared subscription) and one redis-server, the real
engine on a small city, endpoints registered through ONE worker's API, and a real HTTP receiver
that is down, fails and comes back. Every visit event and push the group publishes on MQTT
reaches its merchant's endpoint once it is back (once by id; with a worker killed -9 mid-stream,
at least once: nothing lost). Also: a group worker's API refuses a merchant token on another
merchant's webhooks, and answers every route of its OpenAPI schema without a 500."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon.conftest import (
    Collector,
    World,
    publish_all,
    received_outputs,
    spawn_daemon,
    wait_online,
)
from webhooks.conftest import Receiver, free_port

from engine.api.redis_state import RedisApiState
from engine.stores.redis_store import connect
from scaleout.procs import WorkerProcs
from simulator.bench.redis_server import RedisServer
from simulator.embedded_broker import MosquittoBroker, find_mosquitto

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None,
    reason="needs the mosquitto binary: shared subscriptions ($share) are not delivered by amqtt",
)

OUT = ["geopush/visits/#", "geopush/push/#", "geopush/status/#"]
MERCHANTS = [f"m{i}" for i in range(16)]  # the city's merchants


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' webhook backoff in tens of ms (their environment), never paused."""
    monkeypatch.setenv("GEOPUSH_WEBHOOK_RETRY_BASE_S", "0.05")
    monkeypatch.setenv("GEOPUSH_WEBHOOK_RETRY_CAP_S", "0.3")
    monkeypatch.setenv("GEOPUSH_WEBHOOK_PAUSE_AFTER", "100000")


class Group(WorkerProcs):
    """Worker processes of group ``g``, each with its API on a port of its own."""

    def __init__(self, broker: str, redis_url: str, world: World) -> None:
        super().__init__()
        self.broker, self.redis_url, self.world = broker, redis_url, world
        self.ports: dict[str, int] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        self.ports.setdefault(name, free_port())
        self.procs[name] = p = spawn_daemon(
            self.broker, self.redis_url, self.world,  # type: ignore[arg-type]
            "--group", "g", "--client-id", name, "--batch-size", "8",
            "--http", f"127.0.0.1:{self.ports[name]}",
            "--pid-file", str(Path(self.world.fences).parent / f"{name}.pid"),
        )  # fmt: skip
        return p

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/v1"


def _tokens(url: str) -> dict[str, str]:
    st = RedisApiState(url)
    try:
        return {
            "op": st.create_token("operator")[1],
            "m1": st.create_token("merchant", "m1")[1],
            "m2": st.create_token("merchant", "m2")[1],
        }
    finally:
        st.close()


async def _until(cond: Any, what: str, timeout: float = 90.0) -> None:
    """Wait for ``cond()`` (a guard against a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class Redis:
    """What the test reads in the group's Redis (its own connection)."""

    def __init__(self, url: str) -> None:
        self.r = connect(url)

    def committed_inputs(self) -> int:
        return sum(1 for _ in self.r.scan_iter(match="gp:in:*", count=1000))

    def idle(self, workers: list[str]) -> bool:
        """Every worker's outbox published and enqueued, every webhook queue delivered."""
        if any(self.r.xlen(f"gp:out:{{{w}}}") for w in workers):
            return False
        return not any(self.r.xlen(k) for k in self.r.scan_iter(match="gp:wh:q:*", count=1000))


def _mqtt_ids(col: Collector) -> set[str]:
    got = received_outputs(col)
    return got["pushes"] | got["visits"]


async def _register(url: str, token: str, rec: Receiver) -> dict[str, str]:
    """One endpoint per merchant, all through ONE worker's API; merchant -> secret."""
    secrets: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for m in MERCHANTS:
            r = await http.post(f"/merchants/{m}/webhooks", json={"url": f"{rec.url}/{m}"})
            assert r.status_code == 201, r.text
            secrets[m] = r.json()["secret"]
    return secrets


def _check_hits(rec: Receiver, secrets: dict[str, str]) -> None:
    from webhooks.conftest import docs_receiver

    verify = docs_receiver()["verify_webhook"]
    for h in rec.hits:  # each went to its merchant's endpoint, signed with its secret
        m = json.loads(h.body)["merchant_id"]
        assert h.path == f"/hook/{m}"
        assert h.headers["ce-id"] == h.headers["webhook-id"]
        assert verify(secrets[m], h.headers, h.body)


async def _outage(group_broker: MosquittoBroker, redis_server: RedisServer, tmp_path: Path, down_s: float) -> None:
    world = World(tmp_path, users=20, per_user=15)
    tokens = _tokens(redis_server.url)
    rds = Redis(redis_server.url)
    group = Group(group_broker.url, redis_server.url, world)
    rec = Receiver()  # down: connections refused
    try:
        async with Collector(group_broker.url, OUT) as col:
            for name in ("w1", "w2"):
                await wait_online(col, group.start(name).pid)
            secrets = await _register(group.url("w1"), tokens["op"], rec)  # through w1 only
            t_end = time.monotonic() + down_s
            msgs = world.messages
            step = max(1, len(msgs) // 6)
            for k in range(0, len(msgs), step):  # the trace arrives while the receiver is down
                await publish_all(group_broker.url, msgs[k : k + step])
                await asyncio.sleep(min(0.5, down_s / 6))
            await _until(lambda: rds.committed_inputs() == len(msgs), "every message committed")
            while time.monotonic() < t_end:
                await asyncio.sleep(0.2)
            rec.mode = "fail"  # up, but answering 503
            rec.start()
            await _until(lambda: rec.failed() >= 10, "failed attempts")
            assert rec.accepted() == []
            rec.mode = "ok"
            await _until(lambda: rds.idle(["w1", "w2"]), "everything delivered")
            await _until(lambda: set(rec.accepted()) == _mqtt_ids(col), "the MQTT outputs by webhook")
            await asyncio.sleep(0.3)  # a duplicate would show up now
            want = _mqtt_ids(col)
            assert len(want) > 50 and {m["merchant_id"] for m in col.json_on("geopush/push/")}
            assert sorted(rec.accepted()) == sorted(want)  # everything, once by id
            # each worker delivered its own outputs (both took part of the stream)
            assert all(rds.r.get(f"gp:wh:cur:{{{w}}}") for w in ("w1", "w2"))
        _check_hits(rec, secrets)
    finally:
        rec.stop()
        group.stop_all()


async def test_two_workers_deliver_everything_once_after_a_short_outage(
    group_broker: MosquittoBroker, redis_server: RedisServer, tmp_path: Path, fast_retries: None
) -> None:
    await _outage(group_broker, redis_server, tmp_path, 3.0)


@pytest.mark.slow
async def test_two_workers_deliver_everything_once_after_a_minute_down(
    group_broker: MosquittoBroker, redis_server: RedisServer, tmp_path: Path, fast_retries: None
) -> None:
    await _outage(group_broker, redis_server, tmp_path, 60.0)


async def test_a_worker_killed_mid_stream_loses_no_webhook(
    group_broker: MosquittoBroker, redis_server: RedisServer, tmp_path: Path, fast_retries: None
) -> None:
    world = World(tmp_path, users=20, per_user=15)
    tokens = _tokens(redis_server.url)
    rds = Redis(redis_server.url)
    group = Group(group_broker.url, redis_server.url, world)
    rec = Receiver(mode="fail").start()  # failing while the worker dies: its queues are full
    try:
        async with Collector(group_broker.url, OUT) as col:
            for name in ("w1", "w2"):
                await wait_online(col, group.start(name).pid)
            secrets = await _register(group.url("w2"), tokens["op"], rec)
            msgs = world.messages
            step = max(1, len(msgs) // 10)

            async def feed() -> None:
                for k in range(0, len(msgs), step):
                    await publish_all(group_broker.url, msgs[k : k + step])
                    await asyncio.sleep(0.1)

            feeder = asyncio.create_task(feed())
            await _until(lambda: rds.committed_inputs() >= len(msgs) // 3, "a third committed")
            group.kill("w2")  # mid-stream, with outputs committed, queued, some not published
            await asyncio.sleep(0.5)
            await wait_online(col, group.start("w2").pid)
            await feeder
            await _until(lambda: rds.committed_inputs() == len(msgs), "every message committed")
            rec.mode = "ok"
            await _until(lambda: rds.idle(["w1", "w2"]), "everything delivered")
            await _until(lambda: set(rec.accepted()) == _mqtt_ids(col), "the MQTT outputs by webhook")
            want = _mqtt_ids(col)
            assert len(want) > 50
            assert set(rec.accepted()) == want  # none lost (a repeat carries the same id)
        _check_hits(rec, secrets)
    finally:
        rec.stop()
        group.stop_all()


async def test_a_group_workers_api_scopes_webhooks_and_never_answers_500(
    group_broker: MosquittoBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    world = World(tmp_path, users=2, per_user=2)
    tokens = _tokens(redis_server.url)
    group = Group(group_broker.url, redis_server.url, world)
    try:
        async with Collector(group_broker.url, OUT) as col:
            for name in ("w1", "w2"):
                await wait_online(col, group.start(name).pid)
        m1 = {"Authorization": f"Bearer {tokens['m1']}"}
        m2 = {"Authorization": f"Bearer {tokens['m2']}"}
        async with httpx.AsyncClient(base_url=group.url("w1"), headers=m1) as a, httpx.AsyncClient(
            base_url=group.url("w2"), headers=m2
        ) as b:
            r = await a.post("/merchants/m1/webhooks", json={"url": "https://h.example/m1"})
            assert r.status_code == 201, r.text
            eid = r.json()["endpoint_id"]
            # through the OTHER worker: m2's token on m1's webhooks is refused; m1's own shows it
            r = await b.get("/merchants/m1/webhooks")
            assert r.status_code == 403 and "limited to merchant 'm2'" in r.json()["detail"]
            assert (await b.post("/merchants/m1/webhooks", json={"url": "https://evil.example/"})).status_code == 403
            assert (await b.delete(f"/merchants/m1/webhooks/{eid}")).status_code == 403
            assert (await b.delete(f"/merchants/m2/webhooks/{eid}")).status_code == 404
            listed = (await b.get("/merchants/m1/webhooks", headers=m1)).json()
            assert [e["endpoint_id"] for e in listed] == [eid]
            await _walk_every_route(group.url("w2").removesuffix("/v1"), tokens["op"])
    finally:
        group.stop_all()


_SAMPLE = {"merchant_id": "m1", "store_id": "s-x", "campaign_id": "c-x", "token_id": "tok_x",
           "endpoint_id": "wh_x"}  # fmt: skip

# what a worker group does not serve: the 503 says what to do
_NOT_SERVED = ("/visits", "/campaigns", "/redemptions", "/report", "/console")


async def _walk_every_route(base: str, op_token: str) -> None:
    """Every path and method of the API's OpenAPI schema (and the console), with an operator
    token and with none, an empty and a minimal body: never a 500; what a group does not serve
    is a 503 that says to use a single daemon."""
    async with httpx.AsyncClient(base_url=base, timeout=20.0) as http:
        schema = (await http.get("/openapi.json")).json()
        calls: list[tuple[str, str]] = [
            (method.upper(), path.format(**_SAMPLE))
            for path, ops in schema["paths"].items()
            for method in ops
        ]
        calls += [("GET", "/console"), ("GET", "/console/login"), ("POST", "/console/login"),
                  ("GET", "/console/m/m1"), ("POST", "/console/m/m1/redeem")]  # fmt: skip
        assert len(calls) > 20
        for method, path in calls:
            for headers in ({"Authorization": f"Bearer {op_token}"}, {}):
                for body in (None, {}):
                    r = await http.request(method, path, headers=headers, json=body)
                    assert r.status_code < 500 or r.status_code == 503, (method, path, r.status_code, r.text)
                    if any(x in path for x in _NOT_SERVED):
                        assert r.status_code == 503, (method, path, r.status_code, r.text)
                        d = r.json()
                        assert d["error"] == "NotInGroup" and "single daemon" in d["detail"], d
                    elif r.status_code == 503:
                        raise AssertionError(f"{method} {path}: 503 in a group: {r.text}")

