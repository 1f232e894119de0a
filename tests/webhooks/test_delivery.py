"""Webhook delivery end to end, without mocks: outputs committed into a real SQLite state file (as
the daemon commits them), the real dispatcher with its real httpx client, a real HTTP receiver on
loopback that is stopped (connection refused), fails (503), hangs, and recovers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.daemon.metrics import Metrics
from engine.daemon.webhooks import WebhookDispatcher, WebhookSettings, WebhookStore

from .conftest import Receiver, commit_outputs, docs_receiver, payloads

FAST = WebhookSettings(retry_base_s=0.05, retry_cap_s=0.4, pause_after=10_000, timeout_s=5.0)


async def until(cond, what: str, timeout: float = 60.0) -> None:
    """Wait for ``cond()`` (a guard against a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def register(state: Path, merchant: str, url: str, events: list[str] | None = None):
    st = WebhookStore(state)
    try:
        return st.create(merchant, url, events)
    finally:
        st.close()


def fresh(tmp_path: Path) -> Path:
    state = tmp_path / "state.db"
    commit_outputs(state, "m0", 1)  # a state file with history before any endpoint
    return state


async def test_a_delivery_is_signed_per_the_docs_and_carries_the_mqtt_ids_as_cloudevents(tmp_path):
    state = fresh(tmp_path)
    rec = Receiver().start()
    ep = register(state, "m1", rec.url)
    other = register(state, "m2", rec.url + "-m2")  # another merchant's endpoint
    register(state, "m1", rec.url + "-push", ["push"])
    ids = commit_outputs(state, "m1", 3)
    disp = WebhookDispatcher(state, Metrics(), FAST)
    await disp.start()
    try:
        await until(lambda: len(rec.accepted()) == 9, "6 deliveries + 3 pushes")
    finally:
        await disp.stop()
        rec.stop()
    receiver = docs_receiver()
    committed = payloads(state)
    main = [h for h in rec.hits if h.path == "/hook"]
    assert sorted(h.headers["webhook-id"] for h in main) == sorted(ids)
    for h in main:
        assert receiver["verify_webhook"](ep.secret, h.headers, h.body)
        assert receiver["handle"](ep.secret, h.headers, h.body) == 204
        assert not receiver["verify_webhook"](other.secret, h.headers, h.body)  # another key
        assert not receiver["verify_webhook"](ep.secret, h.headers, h.body + b" ")  # altered
        replayed = {**h.headers, "webhook-timestamp": str(int(h.headers["webhook-timestamp"]) - 3600)}
        assert not receiver["verify_webhook"](ep.secret, replayed, h.body)  # an old timestamp
        oid = h.headers["webhook-id"]
        assert h.body == committed[oid]  # the MQTT payload, byte for byte
        assert h.headers["ce-id"] == oid and h.headers["ce-specversion"] == "1.0"
        assert h.headers["ce-source"] == "/geopush/merchants/m1"
        assert h.headers["ce-type"] == ("com.geopush.visit.enter" if oid.endswith(":enter") else "com.geopush.push")
        assert h.headers["ce-subject"] == "s1" and h.headers["ce-time"].endswith("Z")
    assert sorted(h.headers["webhook-id"] for h in rec.hits if h.path == "/hook-push") == sorted(
        i for i in ids if not i.endswith(":enter")
    )
    assert not [h for h in rec.hits if h.path == "/hook-m2"]  # m1's outputs never reach m2
    assert {h.headers["webhook-id"] for h in rec.hits} <= set(ids)  # nothing from before


async def _down_then_up(tmp_path: Path, down_s: float) -> tuple[Receiver, list[str], Metrics]:
    state = fresh(tmp_path)
    rec = Receiver()  # not started: connection refused
    register(state, "m1", rec.url)
    metrics = Metrics()
    disp = WebhookDispatcher(state, metrics, FAST)
    await disp.start()
    ids: list[str] = []
    try:
        t_end = time.monotonic() + down_s
        k = 0
        while time.monotonic() < t_end:  # outputs keep coming while it is down
            ids += commit_outputs(state, "m1", 5, start=k)
            disp.wake()
            k += 5
            if k == 5 * max(1, int(down_s)):  # halfway: up, but failing with 503
                rec.mode = "fail"
                rec.start()
            await asyncio.sleep(0.5)
        await until(lambda: metrics.totals["webhooks_failed"] > 0, "failed attempts")
        rec.mode = "ok"
        if rec._server is None:  # noqa: SLF001
            rec.start()
        ids += commit_outputs(state, "m1", 5, start=k)
        disp.wake()
        await until(lambda: set(rec.accepted()) == set(ids), "every output after the recovery")
        await asyncio.sleep(0.3)  # a duplicate would show up now
    finally:
        await disp.stop()
        rec.stop()
    return rec, ids, metrics


async def test_a_receiver_down_a_few_seconds_gets_everything_once_it_is_back(tmp_path):
    rec, ids, metrics = await _down_then_up(tmp_path, 3.0)
    assert sorted(rec.accepted()) == sorted(ids)  # everything, exactly once by id
    assert len(rec.accepted()) == len(set(rec.accepted()))
    assert rec.failed() > 0 and metrics.totals["webhooks_failed"] > 0
    assert WebhookStore(tmp_path / "state.db").pending() == 0


@pytest.mark.slow
async def test_a_receiver_down_60_s_gets_everything_once_it_is_back(tmp_path):
    rec, ids, _ = await _down_then_up(tmp_path, 60.0)
    assert sorted(rec.accepted()) == sorted(ids)
    assert len(rec.accepted()) == len(set(rec.accepted()))


async def test_outputs_committed_before_the_dispatcher_ran_are_delivered(tmp_path):
    """The daemon killed right after a commit, before any webhook work: the next start
    enqueues from the committed outbox (the cursor), nothing is lost."""
    state = fresh(tmp_path)
    rec = Receiver().start()
    register(state, "m1", rec.url)
    disp = WebhookDispatcher(state, Metrics(), FAST)
    await disp.start()
    first = commit_outputs(state, "m1", 2)
    disp.wake()
    await until(lambda: set(rec.accepted()) == set(first), "the first outputs")
    # settled (a stop between the 2xx and its bookkeeping repeats it: at least once)
    await until(lambda: disp.store.pending() == 0, "the first outputs settled")
    await disp.stop()  # the dispatcher's process is gone ...
    later = commit_outputs(state, "m1", 4, start=2)  # ... and the daemon commits more
    disp = WebhookDispatcher(state, Metrics(), FAST)  # the next start
    await disp.start()
    try:
        await until(lambda: set(rec.accepted()) == set(first + later), "the later outputs")
    finally:
        await disp.stop()
        rec.stop()
    assert sorted(rec.accepted()) == sorted(first + later)


async def test_a_dead_or_hanging_endpoint_does_not_hold_back_another(tmp_path):
    state = fresh(tmp_path)
    good, hang = Receiver().start(), Receiver(mode="hang").start()
    dead = Receiver()  # never started: refused
    register(state, "m1", good.url)
    register(state, "m1", hang.url)
    dead_ep = register(state, "m1", dead.url)
    settings = WebhookSettings(retry_base_s=0.05, retry_cap_s=0.2, pause_after=3, timeout_s=60.0)
    disp = WebhookDispatcher(state, Metrics(), settings)
    await disp.start()
    try:
        ids = commit_outputs(state, "m1", 20)
        disp.wake()
        # every output reaches the good endpoint while the hanging one still holds its requests
        await until(lambda: sorted(good.accepted()) == sorted(ids), "the good endpoint")
        assert hang.accepted() == []
        await until(lambda: (WebhookStore(state).get(dead_ep.endpoint_id).paused is not None), "the pause")
        more = commit_outputs(state, "m1", 5, start=20)
        disp.wake()
        await until(lambda: sorted(good.accepted()) == sorted(ids + more), "after the pause")
        paused = WebhookStore(state).get(dead_ep.endpoint_id)
        assert paused.failures >= 3 and "consecutive" in paused.pause_reason
        assert paused.pending == 50  # kept for a resume
    finally:
        hang.release.set()
        await disp.stop()
        good.stop()
        hang.stop()
