"""/v1/merchants/{id}/visits: a merchant's visitors, end to end with `geopush run --http`, the
real core and a real broker: the SSE stream, resume after a disconnect (each missed event once),
history in pages, open visits, and tenants."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
from daemon.conftest import (  # noqa: F401  (broker: the daemon's real-broker fixture)
    Collector,
    broker,
    gps,
    publish_all,
    running_service,
)

from engine.api.visits import QUEUE_SIZE, VisitHub
from engine.stores.sqlite_store import OutRow

from .conftest import circle, collection, tokens

T0 = 1_700_000_000.0
A = (24.9400, 60.1700)  # s1 (m1)
B = (24.9500, 60.1700)  # s2 (m1), ~550 m east
C = (23.7600, 61.4980)  # s3 (m2), Tampere
NEAR = (24.9436, 60.1700)  # ~200 m east of s1: out of it


class Files:
    def __init__(self, folder: Path) -> None:
        self.fences = folder / "fences.geojson"
        self.campaigns = folder / "campaigns.json"
        self.fences.write_text(json.dumps(collection(
            circle("s1", "m1", *A, r=30), circle("s2", "m1", *B, r=30), circle("s3", "m2", *C, r=30),
        )))  # fmt: skip
        self.campaigns.write_text(json.dumps({"campaigns": []}))


async def walk(url: str, user: str, ts: float, at: tuple[float, float]) -> None:
    await publish_all(url, [(f"geopush/events/{user}", gps(user, ts, at[1], at[0]))])


class Sse:
    """An SSE client over httpx: ``next()`` is the next event as {"id", "event", "data"}."""

    def __init__(self, http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        self._cm = http.stream("GET", path, headers=headers, timeout=None)
        self.events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()

    async def __aenter__(self) -> Sse:
        self.resp = await self._cm.__aenter__()
        assert self.resp.status_code == 200, await self.resp.aread()
        assert self.resp.headers["content-type"].startswith("text/event-stream")
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.ready.wait(), 15)  # subscribed: the first frame came
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._task
        await self._cm.__aexit__(None, None, None)

    async def _read(self) -> None:
        frame: dict[str, str] = {}
        try:
            async for line in self.resp.aiter_lines():
                if line == "":
                    if "data" in frame:
                        await self.events.put(frame)
                    elif "retry" in frame:
                        self.ready.set()
                    frame = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    frame[key] = value.removeprefix(" ")
        finally:
            self.ended.set()

    async def next(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.events.get(), 15)
        return {"id": int(frame["id"]), "event": frame["event"], "data": frame["data"]}


def _m1_visits(col: Collector) -> list[bytes]:
    return [p for t, p in col.on("geopush/visits/m1")]


async def test_the_stream_shows_who_walked_in_and_resumes_with_each_missed_event_once(broker, tmp_path):  # noqa: F811
    files = Files(tmp_path)
    state = tmp_path / "state.db"
    auth = tokens(state)
    async with (
        Collector(broker.url, ["geopush/visits/#"]) as col,
        running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc,  # type: ignore[arg-type]
    ):
        url = f"http://127.0.0.1:{svc.api.port}"
        path = "/v1/merchants/m1/visits/stream"
        async with httpx.AsyncClient(base_url=url) as http:
            async with Sse(http, path, auth["m1"]) as sse:
                await walk(broker.url, "u1", T0 + 1, A)
                first = await sse.next()
                assert first["event"] == "visit"
                data = json.loads(first["data"])
                assert (data["user"], data["store_id"], data["event"]) == ("u1", "s1", "enter")
                assert data["returning"] is False
                # the very bytes of the MQTT message: consumers of both dedupe alike
                await col.wait_for(lambda c: len(_m1_visits(c)) == 1)
                assert first["data"].encode() == _m1_visits(col)[0]
            last = first["id"]

            # disconnected: two enters at m1, one at m2
            await walk(broker.url, "u2", T0 + 2, A)
            await walk(broker.url, "u3", T0 + 3, B)
            await walk(broker.url, "u4", T0 + 4, C)
            await col.wait_for(lambda c: len(_m1_visits(c)) == 3 and len(c.on("geopush/visits/m2")) == 1)

            async with Sse(http, path, {**auth["m1"], "Last-Event-ID": str(last)}) as sse:
                missed = [await sse.next(), await sse.next()]
                await walk(broker.url, "u5", T0 + 5, A)  # live again, after the missed ones
                live = await sse.next()
            got = [json.loads(e["data"])["user"] for e in [*missed, live]]
            assert got == ["u2", "u3", "u5"]  # each missed one once, m2's never, then live
            ids = [e["id"] for e in [*missed, live]]
            assert ids == sorted(ids) and ids[0] > last
            assert [e["data"].encode() for e in missed] == _m1_visits(col)[1:3]

            # the same resume as a query parameter (for clients that cannot set headers)
            async with Sse(http, f"{path}?last_event_id={last}", auth["op"]) as sse:
                again = [await sse.next(), await sse.next(), await sse.next()]
            assert [e["id"] for e in again] == ids
            # a client that went away is forgotten (nothing is queued for it any more)
            for _ in range(1500):  # (the API's process counts its open streams in /v1/health)
                if (await http.get("/v1/health")).json()["streams"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert (await http.get("/v1/health")).json()["streams"] == 0


async def test_merchants_read_only_their_own_visits_in_pages_and_who_is_in_now(broker, tmp_path):  # noqa: F811
    files = Files(tmp_path)
    state = tmp_path / "state.db"
    auth = tokens(state)
    async with (
        Collector(broker.url, ["geopush/visits/#"]) as col,
        running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc,  # type: ignore[arg-type]
    ):
        for i, (user, at) in enumerate([("u1", A), ("u2", A), ("u3", B), ("u4", C)]):
            await walk(broker.url, user, T0 + 10 * (i + 1), at)
        await walk(broker.url, "u1", T0 + 100, NEAR)  # u1 leaves s1
        await col.wait_for(lambda c: len(_m1_visits(c)) == 4 and len(c.on("geopush/visits/m2")) == 1)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api.port}/v1") as http:
            # tenants: m2 cannot read m1's visits, in any form; m1 can; an operator any
            for p in ("visits", "visits/open", "visits/stream"):
                r = await http.get(f"/merchants/m1/{p}", headers=auth["m2"])
                assert r.status_code == 403, (p, r.text)
                assert "own visits" in r.json()["detail"]
            assert (await http.get("/merchants/m1/visits")).status_code == 401
            r = await http.get("/merchants/m2/visits", headers=auth["m2"])
            assert [v["data"]["user"] for v in r.json()["visits"]] == ["u4"]
            r = await http.get("/merchants/m2/visits", headers=auth["op"])
            assert [v["data"]["user"] for v in r.json()["visits"]] == ["u4"]

            # pages of one, oldest first, each event as published on MQTT
            seen: list[dict[str, Any]] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 1}
                if cursor:
                    params["cursor"] = cursor
                page = (await http.get("/merchants/m1/visits", params=params, headers=auth["m1"])).json()
                seen.extend(page["visits"])
                cursor = page.get("next_cursor")
                if cursor is None:
                    break
            assert len(seen) == 4
            assert [(v["data"]["user"], v["data"]["event"]) for v in seen] == [
                ("u1", "enter"), ("u2", "enter"), ("u3", "enter"), ("u1", "exit"),
            ]  # fmt: skip
            assert [json.dumps(v["data"], separators=(",", ":")).encode() for v in seen] == _m1_visits(col)
            assert seen[0]["out_id"] == f"{seen[0]['data']['visit_id']}:enter"

            # since: by event time (Unix seconds or ISO 8601)
            r = await http.get("/merchants/m1/visits", params={"since": T0 + 25}, headers=auth["m1"])
            assert [v["data"]["user"] for v in r.json()["visits"]] == ["u3", "u1"]
            iso = "2023-11-14T22:13:50Z"  # T0 + 30
            r = await http.get("/merchants/m1/visits", params={"since": iso}, headers=auth["m1"])
            assert [v["data"]["user"] for v in r.json()["visits"]] == ["u3", "u1"]
            r = await http.get("/merchants/m1/visits", params={"since": "yesterday"}, headers=auth["m1"])
            assert r.status_code == 422 and "ISO 8601" in r.json()["detail"]

            # open visits: u2 in s1, u3 in s2 (u1 left)
            r = await http.get("/merchants/m1/visits/open", headers=auth["m1"])
            body = r.json()
            assert body["open"] == 2
            assert {s: [v["data"]["user"] for v in vs] for s, vs in body["stores"].items()} == {
                "s1": ["u2"], "s2": ["u3"],
            }  # fmt: skip


def test_a_slow_stream_is_dropped_not_waited_for_and_knows_where_it_stopped() -> None:
    async def go() -> None:
        seq = 0
        hub = VisitHub("geopush/visits/", lambda: seq)
        sub = hub.subscribe("m1")
        rows = [OutRow(f"v{i}:enter", "geopush/visits/m1", b"{}") for i in range(QUEUE_SIZE + 5)]
        seq = len(rows)
        hub.committed(rows)  # never waits, whatever the reader does
        items = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert sub.dropped and items[-1] is None
        assert [i[0] for i in items[:-1] if i] == list(range(1, QUEUE_SIZE + 1))
        hub.committed(rows)  # no longer subscribed
        assert sub.queue.empty()

    asyncio.run(go())


async def test_ids_hold_across_a_restart_and_a_client_resumes_past_it(broker, tmp_path):  # noqa: F811
    files = Files(tmp_path)
    state = tmp_path / "state.db"
    auth = tokens(state)
    async with Collector(broker.url, ["geopush/visits/#"]) as col:
        async with running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc:  # type: ignore[arg-type]
            await walk(broker.url, "u1", T0 + 1, A)
            await col.wait_for(lambda c: len(_m1_visits(c)) == 1)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api.port}/v1") as http:
                before = (await http.get("/merchants/m1/visits", headers=auth["m1"])).json()["visits"]
        last = before[0]["id"]
        await walk(broker.url, "u2", T0 + 2, A)  # while the daemon is down: the broker keeps it

        async with (
            running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc,  # type: ignore[arg-type]
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api.port}") as http,
        ):
            path = "/v1/merchants/m1/visits/stream"
            async with Sse(http, path, {**auth["m1"], "Last-Event-ID": str(last)}) as sse:
                missed = await sse.next()
                await walk(broker.url, "u3", T0 + 3, B)
                live = await sse.next()
            assert [json.loads(e["data"])["user"] for e in (missed, live)] == ["u2", "u3"]
            assert last < missed["id"] < live["id"]
            after = (await http.get("/v1/merchants/m1/visits", headers=auth["m1"])).json()["visits"]
            assert after[0] == before[0]  # the same id and event after the restart
