"""End to end: `geopush run --http` with the real core and a real broker. A store's fence moved
through the API while events flow decides the very next fix, and survives a restart."""

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
A = (24.9400, 60.1700)  # the store's place in the catalog file
B = (24.9500, 60.1700)  # ~550 m east: where the API moves it
FAR = (25.5000, 60.5000)  # where the background user walks
OUT = ["geopush/visits/#", "geopush/push/#"]


class Files:
    def __init__(self, folder: Path) -> None:
        self.fences = folder / "fences.geojson"
        self.campaigns = folder / "campaigns.json"
        self.fences.write_text(json.dumps(collection(circle("s1", "m1", *A, r=30))))
        coupon = {"title": "10%", "value": 10, "currency": "EUR", "expires_in_s": 3600}
        self.campaigns.write_text(json.dumps({"campaigns": [
            {"id": "c1", "merchant_id": "m1", "trigger": "enter", "coupon": coupon},
        ]}))  # fmt: skip


def _enters(col: Collector, user: str) -> list[dict]:
    return [d for d in col.json_on("geopush/visits/") if d["user"] == user and d["event"] == "enter"]


async def _committed(svc, user: str, ts: float) -> None:
    """Wait until the daemon committed ``user``'s fix at ``ts``."""
    for _ in range(1500):
        st = svc.store.all_users().get(user)
        if st is not None and st.last_ts >= ts:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{user}'s fix at {ts} was not processed")


async def test_a_fence_moved_through_the_api_decides_the_next_fix_and_survives_a_restart(broker, tmp_path):  # noqa: F811
    files = Files(tmp_path)
    state = tmp_path / "state.db"
    st = ApiState(state)
    _info, token = st.create_token("operator")
    st.close()
    auth = {"Authorization": f"Bearer {token}"}

    async with Collector(broker.url, OUT) as col:
        async with running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc:  # type: ignore[arg-type]
            url = f"http://127.0.0.1:{svc.api.port}"

            async with events_flowing(broker.url, "walker", T0, FAR[1], FAR[0]):  # throughout
                await publish_all(broker.url, [("geopush/events/u1", gps("u1", T0 + 1, B[1], B[0]))])
                await _committed(svc, "u1", T0 + 1)
                assert _enters(col, "u1") == []  # B is outside the file's fence
                async with httpx.AsyncClient(base_url=url, headers=auth) as http:
                    r = await http.put("/v1/stores/s1", json=circle("s1", "m1", *B, r=30))
                    assert r.status_code == 200, r.text
                await publish_all(broker.url, [("geopush/events/u1", gps("u1", T0 + 20, B[1], B[0]))])
                await col.wait_for(lambda c: len(_enters(c, "u1")) == 1)
                await col.wait_for(lambda c: any(t == "geopush/push/u1" for t, _ in c.messages))
            assert _enters(col, "u1")[0]["store_id"] == "s1"

        # a restart: the file still says A; the state file says B
        async with running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc:  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api.port}", headers=auth) as http:
                r = await http.get("/v1/stores/s1")
                assert r.json()["geometry"]["coordinates"] == list(B)
            await publish_all(broker.url, [("geopush/events/u2", gps("u2", T0 + 30, B[1], B[0]))])
            await col.wait_for(lambda c: len(_enters(c, "u2")) == 1)


async def test_a_reload_keeps_the_api_changes_even_those_made_while_it_loads(broker, tmp_path):  # noqa: F811
    """SIGHUP reloads the files: the API's changes are laid over them again, including a change
    that lands while the files load (in a thread, the loop serving the API meanwhile)."""
    from engine.daemon.loading import load_fences_and_campaigns

    files = Files(tmp_path)
    state = tmp_path / "state.db"
    st = ApiState(state)
    _info, token = st.create_token("operator")
    st.close()
    auth = {"Authorization": f"Bearer {token}"}
    C = (24.9600, 60.1700)
    async with running_service(broker.url, state, world=files, http="127.0.0.1:0") as svc:  # type: ignore[arg-type]
        url = f"http://127.0.0.1:{svc.api.port}"
        async with httpx.AsyncClient(base_url=url, headers=auth) as http:
            r = await http.put("/v1/stores/s2", json=circle("s2", "m1", *C, r=30))
            assert r.status_code == 201

        def reloader():
            fresh = load_fences_and_campaigns(svc.settings)
            # a change made after the files (and the state) were read, before the swap
            r = httpx.put(f"{url}/v1/stores/s1", json=circle("s1", "m1", *B, r=30), headers=auth)
            assert r.status_code == 200
            return fresh

        svc.reloader = reloader
        old_index = svc.core.index
        svc.request_reload()
        for _ in range(1000):
            if svc.totals["reloads"] or svc.totals["reload_errors"]:
                break
            await asyncio.sleep(0.01)
        assert svc.totals["reloads"] == 1
        index = svc.core.index
        assert index is not old_index
        assert index.catalog.get("s1").center == B
        assert index.catalog.get("s2").center == C
