"""End to end: `geopush run --http` with the real core and a real broker. A campaign PUT while
events flow pushes at the next qualifying visit; paused it pushes no more, resumed it pushes
again; it survives a reload (even a change made while the files load) and a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from daemon.conftest import (  # noqa: F401  (broker: the daemon's real-broker fixture)
    Collector,
    broker,
    events_flowing,
    gps,
    publish_all,
    running_service,
)

from engine.api.state import ApiState

from .conftest import circle, collection

T0 = 1_700_000_000.0
A = (24.9400, 60.1700)  # store s1 of m1
FAR = (25.5000, 60.5000)  # where the background user walks
OUT = ["geopush/visits/#", "geopush/push/#"]
COUPON = {"title": "10%", "value": 10, "currency": "EUR", "expires_in_s": 3600}


class Files:
    def __init__(self, folder: Path) -> None:
        self.fences = folder / "fences.geojson"
        self.campaigns = folder / "campaigns.json"
        self.fences.write_text(json.dumps(collection(circle("s1", "m1", *A, r=30))))
        # the file has no campaign for m1: only the API's will push at s1
        self.campaigns.write_text(json.dumps({"campaigns": [
            {"id": "other", "merchant_id": "m9", "trigger": "enter", "coupon": COUPON},
        ]}))  # fmt: skip


def _pushes(col: Collector, user: str) -> list[dict]:
    return [json.loads(p) for t, p in col.messages if t == f"geopush/push/{user}"]


def _entered(col: Collector, user: str) -> bool:
    return any(d["user"] == user and d["event"] == "enter" for d in col.json_on("geopush/visits/"))


async def _visit(broker_url: str, col: Collector, user: str, ts: float) -> None:
    """``user`` walks into s1; returns once the daemon published the visit's enter."""
    await publish_all(broker_url, [(f"geopush/events/{user}", gps(user, ts, A[1], A[0]))])
    await col.wait_for(lambda c: _entered(c, user))


async def test_a_campaign_put_paused_and_resumed_while_events_flow_survives_reload_and_restart(broker, tmp_path):  # noqa: F811
    from engine.daemon.loading import load_fences_and_campaigns

    files = Files(tmp_path)
    state = tmp_path / "state.db"
    st = ApiState(state)
    _info, token = st.create_token("merchant", "m1", name="Cafe One")
    st.close()
    auth = {"Authorization": f"Bearer {token}"}
    c1 = {"id": "c1", "merchant_id": "m1", "trigger": "enter", "coupon": COUPON}

    async with Collector(broker.url, OUT) as col:
        async with running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc:  # type: ignore[arg-type]
            url = f"http://127.0.0.1:{svc.api.port}/v1"
            async with events_flowing(broker.url, "walker", T0, FAR[1], FAR[0]), httpx.AsyncClient(base_url=url, headers=auth) as http:
                await _visit(broker.url, col, "u1", T0 + 1)  # no campaign of m1 yet
                r = await http.put("/campaigns/c1", json=c1)
                assert r.status_code == 201, r.text
                await _visit(broker.url, col, "u2", T0 + 2)
                await col.wait_for(lambda c: len(_pushes(c, "u2")) == 1)
                assert _pushes(col, "u2")[0]["campaign_id"] == "c1"

                assert (await http.post("/campaigns/c1/pause")).json()["status"] == "paused"
                await _visit(broker.url, col, "u3", T0 + 3)
                assert (await http.post("/campaigns/c1/resume")).json()["status"] == "active"
                await _visit(broker.url, col, "u4", T0 + 4)
                await col.wait_for(lambda c: len(_pushes(c, "u4")) == 1)
                # u3's visit was published (and decided) before u4's: it got no push
                assert _pushes(col, "u1") == [] and _pushes(col, "u3") == []

                # SIGHUP: the file is loaded again and the API's campaigns laid over it, also
                # a change made while the files load
                def reloader():
                    fresh = load_fences_and_campaigns(svc.settings)
                    c2 = {**c1, "id": "c2", "trigger": "exit"}
                    r = httpx.put(f"{url}/campaigns/c2", json=c2, headers=auth)
                    assert r.status_code == 201, r.text
                    return fresh

                svc.reloader = reloader
                svc.request_reload()
                for _ in range(1000):
                    if svc.totals["reloads"] or svc.totals["reload_errors"]:
                        break
                    await asyncio.sleep(0.01)
                assert svc.totals["reloads"] == 1
                assert sorted(c.id for c in svc.core.campaigns.campaigns) == ["c1", "c2", "other"]

        # a restart: the file still has no campaign of m1; the state file has c1 (resumed)
        async with running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc:  # type: ignore[arg-type]
            url = f"http://127.0.0.1:{svc.api.port}/v1"
            async with httpx.AsyncClient(base_url=url, headers=auth) as http:
                got = (await http.get("/campaigns/c1")).json()
                assert (got["status"], got["version"]) == ("active", 3)
                history = (await http.get("/campaigns/c1/history")).json()["versions"]
                assert [v["action"] for v in history] == ["create", "pause", "resume"]
                assert {v["author"]["name"] for v in history} == {"Cafe One"}
            await _visit(broker.url, col, "u5", T0 + 5)
            await col.wait_for(lambda c: len(_pushes(c, "u5")) == 1)
