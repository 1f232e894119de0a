"""Webhooks in a worker group, without mocks: a real redis-server, outputs committed by real
``RedisStore`` workers into their outbox streams (as the daemon commits them) and marked sent as
the daemon does after each PUBACK, the real dispatcher over ``RedisWebhookStore``, and a real HTTP
receiver that is down, fails and recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from scaleout.conftest import redis_server  # noqa: F401  (a real redis-server per test)

from engine.daemon.metrics import Metrics
from engine.daemon.pipeline import Renderer, Topics
from engine.daemon.webhooks import Endpoint, WebhookDispatcher, WebhookSettings
from engine.daemon.webhooks_redis import RedisWebhookStore
from engine.stores.redis_store import RedisStore, connect
from simulator.bench.redis_server import RedisServer

from .conftest import Receiver, docs_receiver, outputs_for
from .test_delivery import FAST, until


class Worker:
    """One group worker's parts: its Redis store (outbox stream) and its webhook dispatcher."""

    def __init__(self, url: str, name: str, settings: WebhookSettings = FAST) -> None:
        self.url, self.name, self.settings = url, name, settings
        self.store = RedisStore(connect(url), worker=name, render=Renderer(Topics()))
        self.metrics = Metrics()
        self.disp: WebhookDispatcher | None = None

    def commit(self, merchant: str, n: int, start: int = 0, publish: bool = True) -> list[str]:
        """Commit outputs (as the daemon does); ``publish``: then mark them sent, as the outbox
        does after each PUBACK (at once: before the dispatcher may have enqueued them)."""
        rows = self.store.commit(outputs_for(merchant, n, start, user="u", tag=f"-{self.name}"))
        ids = [r.out_id for r in rows]
        if publish:
            self.store.mark_sent(ids)
        if self.disp is not None:
            self.disp.wake()
        return ids

    async def start(self) -> Worker:
        queue = RedisWebhookStore(self.url, worker=self.name, outbox=self.store)
        self.disp = WebhookDispatcher(queue, self.metrics, self.settings)
        await self.disp.start()
        return self

    async def stop(self) -> None:
        if self.disp is not None:
            await self.disp.stop()
            self.disp = None
        self.store.close()

    def outbox_len(self) -> int:
        return int(self.store.r.xlen(self.store.outbox_key))


@pytest.fixture
def api(redis_server: RedisServer) -> Iterator[RedisWebhookStore]:  # noqa: F811
    """The API's view (no worker): registers, lists, counts."""
    st = RedisWebhookStore(redis_server.url)
    yield st
    st.close()


def test_endpoints_in_redis_are_shared_scoped_and_keep_their_state(api: RedisWebhookStore) -> None:
    a = api.create("m1", "https://h.example/a", ["push"], "crm")
    b = api.create("m1", "https://h.example/b")
    c = api.create("m2", "https://h.example/c")
    other = RedisWebhookStore(api.url)  # another worker's API
    try:
        # listed by creation time (ms), then id: two made in the same millisecond go by id
        def listed(*eps: Endpoint) -> list[str]:
            return [e.endpoint_id for e in sorted(eps, key=lambda e: (e.created, e.endpoint_id))]

        assert [e.endpoint_id for e in other.endpoints("m1")] == listed(a, b)
        assert [e.endpoint_id for e in other.endpoints()] == listed(a, b, c)
        got = other.get(a.endpoint_id)
        assert got is not None and got.secret == a.secret and got.events == ("push",)
        assert got.description == "crm" and got.pending == 0 and got.after_seq == a.after_seq > 0
        other.pause(a.endpoint_id, "dead")
        p = api.get(a.endpoint_id)
        assert p is not None and p.paused is not None and p.pause_reason == "dead"
        api.resume(a.endpoint_id)
        r = other.get(a.endpoint_id)
        assert r is not None and r.paused is None and r.failures == 0
        other.delete(b.endpoint_id)
        assert api.get(b.endpoint_id) is None
        assert [e.endpoint_id for e in api.endpoints("m1")] == [a.endpoint_id]
        other.pause(b.endpoint_id, "gone")  # a deleted endpoint is not brought back
        assert api.get(b.endpoint_id) is None
    finally:
        other.close()


async def _two_workers_down_then_up(url: str, down_s: float) -> tuple[Receiver, list[str], list[Worker]]:
    api = RedisWebhookStore(url)
    rec = Receiver()  # not started: connection refused
    ep = api.create("m1", rec.url)
    api.create("m2", rec.url + "-m2", ["visit.exit"])  # another merchant's, wants nothing here
    workers = [await Worker(url, "w1").start(), await Worker(url, "w2").start()]
    ids: list[str] = []
    try:
        t_end = time.monotonic() + down_s
        k = 0
        while time.monotonic() < t_end:  # both workers keep committing while it is down
            for w in workers:
                ids += w.commit("m1", 3, start=k)
            k += 3
            if k == 3 * max(1, int(down_s)):  # halfway: up, but failing with 503
                rec.mode = "fail"
                rec.start()
            await asyncio.sleep(0.5)
        await until(lambda: all(w.metrics.totals["webhooks_failed"] > 0 for w in workers), "failures on both")
        rec.mode = "ok"
        if rec._server is None:  # noqa: SLF001
            rec.start()
        for w in workers:
            ids += w.commit("m1", 3, start=k)
        await until(lambda: set(rec.accepted()) == set(ids), "every output after the recovery")
        await until(lambda: all(w.outbox_len() == 0 for w in workers), "the outboxes emptied")
        await asyncio.sleep(0.3)  # a duplicate would show up now

        def settled() -> bool:
            got = api.get(ep.endpoint_id)
            return got is not None and got.pending == 0 and got.failures == 0

        await until(settled, "every queue entry settled")
    finally:
        for w in workers:
            await w.stop()
        rec.stop()
        api.close()
    for h in rec.hits:
        assert docs_receiver()["verify_webhook"](ep.secret, h.headers, h.body)
    return rec, ids, workers


async def test_two_workers_deliver_everything_once_after_a_short_outage(redis_server: RedisServer) -> None:  # noqa: F811
    rec, ids, workers = await _two_workers_down_then_up(redis_server.url, 3.0)
    assert sorted(rec.accepted()) == sorted(ids)  # everything, exactly once by id
    assert len(rec.accepted()) == len(set(rec.accepted()))
    assert rec.failed() > 0
    assert all(w.metrics.totals["webhooks_delivered"] > 0 for w in workers)  # each its own
    assert not [h for h in rec.hits if h.path != "/hook"]


@pytest.mark.slow
async def test_two_workers_deliver_everything_once_after_a_60_s_outage(redis_server: RedisServer) -> None:  # noqa: F811
    rec, ids, _ = await _two_workers_down_then_up(redis_server.url, 60.0)
    assert sorted(rec.accepted()) == sorted(ids)
    assert len(rec.accepted()) == len(set(rec.accepted()))


async def test_a_published_output_is_kept_until_enqueued_so_a_kill_loses_nothing(redis_server: RedisServer) -> None:  # noqa: F811
    """A worker killed after its outputs were committed and published on MQTT (PUBACK, marked
    sent) but before its dispatcher enqueued them: the outbox kept them, the next start
    delivers them (and does not publish them on MQTT again in the meantime)."""
    url = redis_server.url
    api = RedisWebhookStore(url)
    rec = Receiver().start()
    api.create("m1", rec.url)
    w = Worker(url, "w1")
    RedisWebhookStore(url, worker="w1", outbox=w.store)  # the dispatcher's store, not yet running
    ids = w.commit("m1", 5)  # committed, published, marked sent ... and the worker dies
    assert w.outbox_len() == 1  # kept for the webhooks
    assert w.store.unsent() == []  # not published again by this process
    w.store.close()
    w = await Worker(url, "w1").start()  # the next start
    try:
        await until(lambda: set(rec.accepted()) == set(ids), "the outputs of the killed worker")
        # the start re-publishes what the outbox holds (at least once on MQTT, same ids)
        again = w.store.unsent()
        assert sorted(r.out_id for r in again) == sorted(ids)
        w.store.mark_sent([r.out_id for r in again])
        await until(lambda: w.outbox_len() == 0, "the outbox entry deleted once enqueued")
    finally:
        await w.stop()
        rec.stop()
        api.close()
    assert sorted(rec.accepted()) == sorted(ids)


async def test_with_no_endpoint_the_outbox_is_not_held(redis_server: RedisServer) -> None:  # noqa: F811
    w = await Worker(redis_server.url, "w1").start()
    try:
        w.commit("m1", 3)
        w.commit("m1", 3, start=3)
        await until(lambda: w.outbox_len() == 0, "published entries deleted without any endpoint")
        api = RedisWebhookStore(redis_server.url)
        rec = Receiver().start()
        try:
            api.create("m1", rec.url)
            later = w.commit("m1", 2, start=6)
            await until(lambda: sorted(rec.accepted()) == sorted(later), "only what came after")
        finally:
            rec.stop()
            api.close()
    finally:
        await w.stop()


async def test_a_dead_endpoint_is_paused_for_the_group_and_holds_back_nothing_else(redis_server: RedisServer) -> None:  # noqa: F811
    url = redis_server.url
    api = RedisWebhookStore(url)
    good, dead = Receiver().start(), Receiver()  # dead: never started, refused
    api.create("m1", good.url)
    dead_ep = api.create("m1", dead.url)
    settings = WebhookSettings(retry_base_s=0.05, retry_cap_s=0.2, pause_after=4, timeout_s=5.0)
    workers = [await Worker(url, "w1", settings).start(), await Worker(url, "w2", settings).start()]
    try:
        ids = [i for w in workers for i in w.commit("m1", 10)]
        await until(lambda: sorted(good.accepted()) == sorted(ids), "the good endpoint")

        def paused() -> bool:
            ep = api.get(dead_ep.endpoint_id)
            return ep is not None and ep.paused is not None

        await until(paused, "the pause")
        more = [i for w in workers for i in w.commit("m1", 5, start=10)]
        await until(lambda: sorted(good.accepted()) == sorted(ids + more), "after the pause")
        await until(lambda: all(w.outbox_len() == 0 for w in workers), "the outboxes emptied")
        ep = api.get(dead_ep.endpoint_id)
        assert ep is not None and ep.failures >= 4 and "consecutive" in (ep.pause_reason or "")
        assert ep.pending == 2 * 2 * 15  # both workers' queues, kept for a resume
        dead.start()
        api.resume(dead_ep.endpoint_id)
        await until(lambda: sorted(dead.accepted()) == sorted(ids + more), "the resumed endpoint")
    finally:
        for w in workers:
            await w.stop()
        good.stop()
        dead.stop()
        api.close()
