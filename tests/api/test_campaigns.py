"""/v1/campaigns over real HTTP (uvicorn + httpx) against a real core: versions with their
authors, validation as the campaign file, tenants, changes that reach the core's decisions
without resetting inventory, durable layering over the file, and what-if forecasts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.api import forecast as forecast_mod
from engine.api.campaigns import campaign_to_raw, overlay_campaigns_state
from engine.api.live import FenceTarget
from engine.api.server import ApiServer
from engine.api.state import ApiState
from engine.campaigns import load_campaigns, parse_campaign, parse_campaigns
from engine.core import Core
from engine.daemon.loading import campaign_target
from engine.daemon.pipeline import Renderer, Topics
from engine.events import Gps
from engine.outputs import Push
from engine.stores.sqlite_store import SQLiteStore
from fences.catalog import load_catalog
from fences.index import FenceIndex

from .conftest import SEED

T0 = 1_700_000_000.0
S1 = (24.9400, 60.1700)  # store s1 of m1 (a 30 m circle)
COUPON = {"title": "10% off", "value": 10, "currency": "EUR", "expires_in_s": 3600}


def campaign(cid: str = "c1", merchant: str = "m1", **over: Any) -> dict[str, Any]:
    return {"id": cid, "merchant_id": merchant, "trigger": "enter", "coupon": dict(COUPON), **over}


FILE = {"campaigns": [campaign("file1", "m1", inventory=5), campaign("file2", "m2")]}


@dataclass
class World:
    url: str
    core: Core
    store: SQLiteStore
    state: Path
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)
    users: int = 0

    def client(self, who: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url + "/v1", headers={"Authorization": f"Bearer {self.tokens[who]}"},
            timeout=30.0,
        )  # fmt: skip

    def visit(self) -> list[Push]:
        """A new user walks into s1 (and is processed by the core, as the daemon would): the
        pushes it got."""
        self.users += 1
        user = f"u{self.users}"
        ev = Gps(user=user, ts=T0 + self.users, lon=S1[0], lat=S1[1], acc=5.0)
        outs = self.core.process([ev])
        self.store.commit(outs)
        return [o for o in outs if isinstance(o, Push)]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    fences = tmp_path / "fences.geojson"
    fences.write_text(json.dumps(SEED))
    index = FenceIndex(load_catalog(fences))
    state = tmp_path / "state.db"
    st = ApiState(state)
    made = {
        "op": st.create_token("operator", name="ops"),
        "m1": st.create_token("merchant", "m1", name="Cafe One"),
        "m2": st.create_token("merchant", "m2"),
    }
    st.close()
    store = SQLiteStore(state, render=Renderer(Topics()))  # the daemon's state store
    core = Core(index, parse_campaigns(FILE), store)
    w = World("", core, store, state)
    for who, (info, secret) in made.items():
        w.tokens[who] = secret
        w.token_ids[who] = info.token_id
    server = ApiServer("127.0.0.1:0", state, FenceTarget(lambda: index, campaigns=campaign_target(core)))
    await server.start()
    w.url = f"http://127.0.0.1:{server.port}"
    try:
        yield w
    finally:
        await server.stop()
        store.close()


async def test_put_get_list_and_history_with_authors(world: World) -> None:
    async with world.client("op") as op, world.client("m1") as m1:
        r = await op.put("/campaigns/c1", json=campaign())
        assert r.status_code == 201, r.text
        assert r.json()["version"] == 1 and r.json()["status"] == "active"
        r = await m1.put("/campaigns/c1", json=campaign(priority=3))
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2
        # the same campaign again: no new version
        r = await m1.put("/campaigns/c1", json=campaign(priority=3))
        assert r.status_code == 200 and r.json()["version"] == 2

        r = await m1.get("/campaigns/c1")
        assert r.json()["campaign"]["priority"] == 3 and r.json()["source"] == "api"
        r = await m1.get("/campaigns/file1")  # the file's, never changed: version 0
        assert r.json()["source"] == "file" and r.json()["version"] == 0
        assert parse_campaign(r.json()["campaign"]) == world.core.campaigns.get("file1")

        r = await op.get("/campaigns", params={"merchant_id": "m1"})
        assert [c["id"] for c in r.json()["campaigns"]] == ["c1", "file1"]

        assert (await m1.post("/campaigns/c1/pause")).json()["status"] == "paused"
        assert (await op.delete("/campaigns/c1")).status_code == 204
        assert (await op.get("/campaigns/c1")).status_code == 404

        r = await op.get("/campaigns/c1/history")
        versions = r.json()["versions"]
        assert [v["action"] for v in versions] == ["create", "update", "pause", "delete"]
        assert [v["version"] for v in versions] == [1, 2, 3, 4]
        assert versions[0]["author"] == {
            "token_id": world.token_ids["op"], "name": "ops", "role": "operator", "merchant_id": None,
        }  # fmt: skip
        assert versions[1]["author"]["token_id"] == world.token_ids["m1"]
        assert versions[1]["author"]["merchant_id"] == "m1"
        assert versions[1]["campaign"]["priority"] == 3
        assert versions[3]["campaign"] is None and versions[3]["status"] == "deleted"
        assert all(v["time"] > 1.7e9 for v in versions)


async def test_an_invalid_campaign_is_422_with_every_problem(world: World) -> None:
    async with world.client("op") as op:
        bad = {"id": "c1", "merchant_id": "m1", "trigger": "dwell", "coupn": {}}
        r = await op.put("/campaigns/c1", json=bad)
        assert r.status_code == 422
        reasons = [p["reason"] for p in r.json()["problems"]]
        assert any("coupon: Field required" in x for x in reasons), reasons
        assert any("did you mean 'coupon'" in x for x in reasons), reasons
        assert any("needs dwell_s" in x for x in reasons), reasons
        r = await op.put("/campaigns/c2", json=campaign("c1"))
        assert r.status_code == 422 and "differs from the URL" in r.text
        r = await op.put("/campaigns/c2", content=b"{nope")
        assert r.status_code == 422 and "not valid JSON" in r.text
        assert (await op.get("/campaigns/c1")).status_code == 404  # nothing was saved


async def test_a_merchant_sees_and_changes_only_its_own_campaigns(world: World) -> None:
    async with world.client("m1") as m1, world.client("m2") as m2, world.client("op") as op:
        assert (await m1.put("/campaigns/c1", json=campaign(stores=["s1"]))).status_code == 201
        assert (await m2.get("/campaigns/c1")).status_code == 404
        assert (await m2.get("/campaigns/c1/history")).status_code == 404
        assert (await m2.post("/campaigns/c1/pause")).status_code == 404
        assert (await m2.delete("/campaigns/c1")).status_code == 404
        # another merchant's campaign id
        r = await m2.put("/campaigns/c1", json=campaign("c1", "m2"))
        assert r.status_code == 409, r.text
        # a campaign for another merchant
        r = await m2.put("/campaigns/c9", json=campaign("c9", "m1"))
        assert r.status_code == 403 and 'set "merchant_id": "m2"' in r.json()["detail"]
        # a campaign on another merchant's store, or on a store that does not exist
        r = await m2.put("/campaigns/c9", json=campaign("c9", "m2", stores=["s1"]))
        assert r.status_code == 422 and "belongs to another merchant" in r.text
        r = await m2.put("/campaigns/c9", json=campaign("c9", "m2", stores=["s404"]))
        assert r.status_code == 422 and "not a live store of merchant 'm2'" in r.text
        # even an operator cannot list m1's store in m2's campaign
        r = await op.put("/campaigns/c9", json=campaign("c9", "m2", stores=["s1"]))
        assert r.status_code == 422 and "belongs to merchant 'm1'" in r.text
        r = await m2.get("/campaigns", params={"merchant_id": "m1"})
        assert r.status_code == 403
        assert [c["id"] for c in (await m2.get("/campaigns")).json()["campaigns"]] == ["file2"]
        ids = [c["id"] for c in (await op.get("/campaigns")).json()["campaigns"]]
        assert ids == ["c1", "file1", "file2"]


async def test_changes_reach_the_core_and_never_resell_spent_inventory(world: World) -> None:
    async with world.client("m1") as m1:
        # m1's file campaign pushes; the API's campaign (higher priority) takes over at once
        assert [p.campaign_id for p in world.visit()] == ["file1"]
        r = await m1.put("/campaigns/c1", json=campaign(priority=5, inventory=2))
        assert r.status_code == 201
        assert [p.campaign_id for p in world.visit()] == ["c1"]
        # an edit (new title, same inventory): the one coupon spent stays spent
        r = await m1.put("/campaigns/c1", json=campaign(priority=5, inventory=2, coupon={**COUPON, "title": "new"}))
        assert r.status_code == 200
        pushes = world.visit()
        assert [(p.campaign_id, p.coupon.title) for p in pushes] == [("c1", "new")]
        assert world.store.inventory_left("c1", 2) == 0
        # sold out: the next visit falls back to the file campaign, even after more edits
        await m1.put("/campaigns/c1", json=campaign(priority=6, inventory=2))
        assert [p.campaign_id for p in world.visit()] == ["file1"]
        # more inventory: exactly the difference sells (2 spent of 3), and less than was spent
        # sells nothing, even after a delete and re-create of the id
        await m1.put("/campaigns/c1", json=campaign(priority=6, inventory=3))
        assert [p.campaign_id for p in world.visit()] == ["c1"]
        assert [p.campaign_id for p in world.visit()] == ["file1"]
        await m1.delete("/campaigns/c1")
        await m1.put("/campaigns/c1", json=campaign(priority=6, inventory=1))
        assert world.store.inventory_left("c1", 1) == -2  # 3 spent of 1
        assert [p.campaign_id for p in world.visit()] == ["file1"]
        await m1.put("/campaigns/c1", json=campaign(priority=6, inventory=4))
        assert world.store.inventory_left("c1", 4) == 1
        await m1.delete("/campaigns/c1")
        # pause: gone from the decisions; resume: back
        await m1.put("/campaigns/c2", json=campaign("c2", priority=9))
        await m1.post("/campaigns/c2/pause")
        assert [p.campaign_id for p in world.visit()] == ["file1"]
        await m1.post("/campaigns/c2/resume")
        assert [p.campaign_id for p in world.visit()] == ["c2"]
        # a file campaign paused, then deleted through the API
        await m1.delete("/campaigns/c2")
        await m1.post("/campaigns/file1/pause")
        assert world.visit() == []
        assert (await m1.get("/campaigns/file1")).json()["status"] == "paused"


async def test_the_api_changes_are_laid_over_the_file_at_each_load(world: World, tmp_path: Path) -> None:
    async with world.client("op") as op:
        await op.put("/campaigns/c1", json=campaign())
        await op.put("/campaigns/file1", json=campaign("file1", inventory=7))
        await op.post("/campaigns/file2/pause")
        await op.put("/campaigns/c3", json=campaign("c3"))
        await op.delete("/campaigns/c3")
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps(FILE))
    merged, seq = overlay_campaigns_state(load_campaigns(path), world.state)
    assert sorted(c.id for c in merged.campaigns) == ["c1", "file1"]
    got = merged.get("file1")
    assert got is not None and got.inventory == 7
    assert seq == 5
    assert sorted(c.id for c in world.core.campaigns.campaigns) == ["c1", "file1"]
    # catching up: nothing after the last change read
    assert overlay_campaigns_state(merged, world.state, after=seq)[1] == seq


def test_a_campaign_as_json_parses_back_to_itself() -> None:
    for c in load_campaigns(Path(__file__).parents[2] / "examples" / "campaigns.yaml").campaigns:
        assert parse_campaign(json.loads(json.dumps(campaign_to_raw(c)))) == c


def _trace(n: int, user: str = "t") -> bytes:
    lines = [
        json.dumps({"type": "gps", "user": f"{user}{i}", "ts": T0 + i, "lon": S1[0], "lat": S1[1], "acc": 5})
        for i in range(n)
    ]
    return "\n".join(lines).encode() + b"\n"


async def test_a_forecast_counts_pushes_and_binding_caps_without_touching_live_state(world: World) -> None:
    async with world.client("m1") as m1:
        await m1.put("/campaigns/c1", json=campaign(priority=5, inventory=3))
        r = await m1.post("/campaigns/c1/forecast", content=_trace(10))
        assert r.status_code == 200, r.text
        f = r.json()
        assert f["version"] == 1
        assert (f["pushes"], f["distinct_users"], f["decisions"]) == (3, 3, 10)
        assert f["inventory"] == {"limit": 3, "used": 3, "left": 0}
        assert f["caps_binding"]["inventory"] == 7
        assert f["pushes_all_campaigns"] == 8  # the file campaign (inventory 5) takes 5 others
        # a proposed version (first line), with a per-user cap: one user seen 4 times
        proposed = campaign(priority=5, caps={"per_user": 1, "period_s": 86400})
        again = b"".join(
            json.dumps({"type": "gps", "user": "same", "ts": T0 + 1000 * i + dt, "lon": lon, "lat": S1[1], "acc": 5}).encode() + b"\n"
            for i in range(4) for dt, lon in ((0, S1[0]), (500, S1[0] - 0.01))
        )  # fmt: skip
        body = b"\n" + json.dumps({"campaign": proposed}, indent=None, separators=(", ", ": ")).encode() + b"\n" + again
        r = await m1.post("/campaigns/c1/forecast", content=body)
        assert r.status_code == 200, r.text
        f = r.json()
        assert f["version"] == "proposed" and f["inventory"] is None
        assert (f["pushes"], f["distinct_users"]) == (1, 1)
        assert f["caps_binding"]["per_user"] == 3
        assert f["refused"]["outranked"] == 0
        # nothing live changed: no version, no coupon taken, no push id
        assert (await m1.get("/campaigns/c1")).json()["version"] == 1
        assert world.store.inventory_left("c1", 3) == 3
        assert [p.campaign_id for p in world.visit()] == ["c1"]
        # a proposed campaign is checked as a PUT is
        bad = json.dumps({"campaign": campaign("c1", "m2")}).encode() + b"\n" + _trace(1)
        assert (await m1.post("/campaigns/c1/forecast", content=bad)).status_code == 403


async def test_a_bad_or_oversized_trace_is_refused(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world.client("op") as op:
        r = await op.post("/campaigns/file1/forecast", content=_trace(2) + b'{"type": "gps"}\n')
        assert r.status_code == 422
        assert r.json()["problems"][0]["reason"].startswith("line 3:")
        r = await op.post("/campaigns/file1/forecast", content=b"")
        assert r.status_code == 422 and "no events" in r.text
        assert (await op.post("/campaigns/nope/forecast", content=_trace(1))).status_code == 404
        monkeypatch.setattr(forecast_mod, "MAX_TRACE_BYTES", 100)
        r = await op.post("/campaigns/file1/forecast", content=_trace(5))
        assert r.status_code == 413 and "larger than" in r.text
