"""The HTTP API's own process (engine/api/process.py), supervised by `geopush run --http`: killed
with -9 mid-stream it comes back while the engine goes on deciding exactly what replay decides,
and a redemption in flight at the kill is still made exactly once; SIGTERM stops both processes;
a daemon killed with -9 takes its API process with it; a port in use is a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from daemon.conftest import (  # noqa: F401  (broker: the daemon's real-broker fixture)
    Collector,
    World,
    broker,
    gps,
    publish_all,
    received_outputs,
    running_service,
)

from engine.api.state import ApiState
from engine.loop import display_code
from engine.report import build_report, load_delivered, load_outputs


def _token(state: Path, role: str, merchant: str | None = None) -> dict[str, str]:
    st = ApiState(state)
    try:
        _info, secret = st.create_token(role, merchant)
    finally:
        st.close()
    return {"Authorization": f"Bearer {secret}"}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
    return out


async def _until(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_the_api_process_killed_mid_stream_comes_back_and_the_engine_decides_as_replay(broker, tmp_path):  # noqa: F811
    world = World(tmp_path, users=20, per_user=20)
    state = tmp_path / "state.db"
    op = _token(state, "operator")
    oracle = world.oracle()
    half = len(world.messages) // 2
    async with (
        Collector(broker.url, ["geopush/push/#", "geopush/visits/#", "geopush/redemptions/#"]) as col,
        running_service(broker.url, state, world=world, http="127.0.0.1:0") as svc,  # type: ignore[arg-type]
    ):
        api = svc.api
        first = api.pid
        assert first is not None and _alive(first) and api.up
        base = f"http://127.0.0.1:{api.port}/v1"
        async with httpx.AsyncClient(base_url=base, headers=op, timeout=30) as http:
            assert (await http.get("/health")).status_code == 200
            sending = asyncio.create_task(publish_all(broker.url, world.messages[:half]))
            await asyncio.sleep(0.05)
            os.kill(first, signal.SIGKILL)  # mid-stream
            await sending
            await publish_all(broker.url, world.messages[half:])
            await _until(lambda: api.restarts == 1 and api.up and api.pid != first, "the restart")
            assert not _alive(first)
            assert svc.metrics.api_restarts._value.get() == 1
            assert (await http.get("/health")).json()["stores"] == len(world.city.catalog()["features"])
            await col.wait_for(lambda c: received_outputs(c) == oracle, 60)
            assert received_outputs(col) == oracle

            # a redemption in flight when the API's process is killed: retried, made once (of a
            # push decided now: the trace's coupons have expired by the wall clock)
            old = next(p for p in col.json_on("geopush/push/") if p["merchant_id"] != "m0")
            (where,) = [f["geometry"]["coordinates"] for f in world.city.catalog()["features"]
                        if f["properties"]["store_id"] == old["store_id"]]  # fmt: skip
            await publish_all(broker.url, [("geopush/events/r1", gps("r1", time.time(), where[1], where[0]))])
            await col.wait_for(lambda c: len(c.on("geopush/push/r1")) == 1)
            push = col.json_on("geopush/push/r1")[0]
            till = _token(state, "merchant", push["merchant_id"])
            body = {"user": push["user"], "code": display_code(push["code"]), "request_id": "till-9"}
            second = api.pid
            assert second is not None
            post = asyncio.create_task(http.post("/redemptions", json=body, headers=till))
            await asyncio.sleep(0.02)
            os.kill(second, signal.SIGKILL)
            with contextlib.suppress(httpx.TransportError):
                await post  # answered before the kill, or a broken connection
            await _until(lambda: api.restarts == 2 and api.up, "the second restart")
            for _ in range(100):  # the restarted process may still be binding its routes
                with contextlib.suppress(httpx.TransportError):
                    r = await http.post("/redemptions", json=body, headers=till)
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "ok"  # the till's retry: the one redemption, again
            other = await http.post("/redemptions", json={**body, "request_id": "till-10"}, headers=till)
            assert other.json()["status"] == "already_redeemed"
        topic = f"geopush/redemptions/{push['merchant_id']}/{push['user']}"
        await col.wait_for(lambda c: any(a["status"] == "already_redeemed" for a in c.json_on(topic)))
        answers = col.json_on(topic)
        oks = [a for a in answers if a["status"] == "ok"]
        assert oks and {a["request_id"] for a in oks} == {"till-9"}
        # the same redemption each time (only the attempt's time differs)
        assert len({json.dumps({**a, "ts": 0}, sort_keys=True) for a in oks}) == 1
    assert not _alive(api.pid or 0)  # stopped with the daemon
    # and in the state: one redemption of the merchant's (`geopush report`)
    report = build_report(load_outputs(state), delivered=load_delivered(state))
    (mine,) = [m for m in report["merchants"] if m["merchant_id"] == push["merchant_id"]]
    assert mine["redemptions"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(broker_url: str, tmp_path: Path, world: World, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "engine", "run", "--broker", broker_url,
        "--state", str(tmp_path / "s.db"), "--fences", str(world.fences),
        "--campaigns", str(world.campaigns), "--http", f"127.0.0.1:{port}", "--log-level", "WARNING",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _api_child(proc: subprocess.Popen[bytes], port: int) -> int:
    """Wait until the daemon's API answers; the pid of its API process."""
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        while True:
            assert proc.poll() is None, proc.communicate()
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/v1/health")).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the API never came up"
            await asyncio.sleep(0.1)
    (child,) = _children(proc.pid)
    return child


async def test_sigterm_stops_the_daemon_and_its_api_process(broker, tmp_path):  # noqa: F811
    world = World(tmp_path, users=2, per_user=2)
    port = _free_port()
    proc = _run(broker.url, tmp_path, world, port)
    try:
        child = await _api_child(proc, port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.communicate()
        await _until(lambda: not _alive(child), "the API process to end", 10)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_daemon_killed_with_9_takes_its_api_process_with_it(broker, tmp_path):  # noqa: F811
    world = World(tmp_path, users=2, per_user=2)
    port = _free_port()
    proc = _run(broker.url, tmp_path, world, port)
    child = 0
    try:
        child = await _api_child(proc, port)
        proc.kill()
        proc.wait()
        await _until(lambda: not _alive(child), "the orphaned API process to end", 15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_port_in_use_stops_geopush_run_with_a_clear_error(broker, tmp_path):  # noqa: F811
    world = World(tmp_path, users=2, per_user=2)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        proc = _run(broker.url, tmp_path, world, busy.getsockname()[1])
        _out, err = proc.communicate(timeout=60)
    finally:
        busy.close()
    assert proc.returncode != 0
    assert b"cannot listen" in err and b"pick a free port" in err, err


async def test_a_reload_reaches_the_api_process(broker, tmp_path):  # noqa: F811
    from .conftest import circle, collection
    from .test_daemon_api import Files

    files = Files(tmp_path)
    state = tmp_path / "state.db"
    op = _token(state, "operator")
    async with running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc:  # type: ignore[arg-type]
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api.port}/v1", headers=op)
        async with http:
            assert (await http.get("/stores/s9")).status_code == 404
            files.fences.write_text(json.dumps(collection(
                circle("s1", "m1", 24.94, 60.17, r=30), circle("s9", "m1", 24.96, 60.17, r=30),
            )))  # fmt: skip
            svc.request_reload()  # (SIGHUP, or `reload` on the control topic)
            await _until(lambda: svc.totals["reloads"] == 1, "the engine's reload")
            assert svc.core.index.catalog.get("s9") is not None
            for _ in range(300):  # the API's process reloads its own copy
                if (await http.get("/stores/s9")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert (await http.get("/stores/s9")).json()["properties"]["store_id"] == "s9"


async def test_a_store_deleted_through_the_api_exits_its_open_visits_in_the_engine(broker, tmp_path):  # noqa: F811
    from .test_daemon_api import Files

    files = Files(tmp_path)
    state = tmp_path / "state.db"
    op = _token(state, "operator")
    t0 = 1_700_000_000.0
    a = (24.9400, 60.1700)  # s1's place (Files)
    async with (
        Collector(broker.url, ["geopush/visits/#"]) as col,
        running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc,  # type: ignore[arg-type]
    ):
        await publish_all(broker.url, [("geopush/events/u1", gps("u1", t0, a[1], a[0]))])
        await col.wait_for(lambda c: [d["event"] for d in c.json_on("geopush/visits/m1")] == ["enter"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api.port}/v1", headers=op) as http:
            assert (await http.delete("/stores/s1")).status_code in (200, 204)
        await _until(lambda: svc.core.index.catalog.slot_of("s1") is None, "the engine's index")
        # the user's next fix, still where the store was: its visit exits as the store's removal
        await publish_all(broker.url, [("geopush/events/u1", gps("u1", t0 + 5, a[1], a[0]))])
        await col.wait_for(lambda c: [d["event"] for d in c.json_on("geopush/visits/m1")] == ["enter", "exit"])
        assert svc.core.stats.exits_by_cause == {"removed": 1}
