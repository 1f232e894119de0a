"""The stores API over real HTTP: tenants, validation, live index changes, persistence."""

from __future__ import annotations

import json

from engine.api.live import overlay
from engine.api.state import read_store_changes
from engine.cli import main as geopush
from fences.catalog import load_catalog, store_from_feature
from fences.errors import CatalogError

from .conftest import SEED, circle, collection, square


def _ids(fc):
    return [f["properties"]["store_id"] for f in fc["features"]]


async def test_no_token_unknown_token_and_revoked_token_are_refused(api):
    async with api.client(None) as anon:
        r = await anon.get("/v1/stores")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "geopush tokens create" in r.json()["detail"]
        r = await anon.get("/v1/stores", headers={"Authorization": "Bearer gp_nope"})
        assert r.status_code == 401
    async with api.client("m1") as m1:
        assert (await m1.get("/v1/stores")).status_code == 200
        # revoked by the CLI, on the state file the running API uses: refused at once
        assert geopush(["tokens", "revoke", api.token_ids["m1"], "--state", str(api.state)]) == 0
        r = await m1.get("/v1/stores")
        assert r.status_code == 401
        assert r.json()["detail"] == "unknown or revoked API token"


async def test_operator_sees_everything_a_merchant_only_its_own(api):
    async with api.client("op") as op, api.client("m1") as m1, api.client("m2") as m2:
        assert _ids((await op.get("/v1/stores")).json()) == ["s1", "s2", "s3"]
        assert _ids((await m1.get("/v1/stores")).json()) == ["s1", "s2"]
        assert _ids((await m2.get("/v1/stores")).json()) == ["s3"]
        assert _ids((await op.get("/v1/stores", params={"merchant_id": "m2"})).json()) == ["s3"]
        # another merchant's store does not exist for m2, to read or to delete
        assert (await m2.get("/v1/stores/s1")).status_code == 404
        assert (await m2.delete("/v1/stores/s1")).status_code == 404
        assert api.index.catalog.slot_of("s1") is not None
        assert (await m2.get("/v1/stores", params={"merchant_id": "m1"})).status_code == 403
        # nor can m2 put a store under m1, or take m1's store_id
        r = await m2.put("/v1/stores/s9", json=circle("s9", "m1", 24.0, 60.0))
        assert r.status_code == 403
        assert "merchant 'm2'" in r.json()["detail"]
        r = await m2.put("/v1/stores/s1", json=circle("s1", "m2", 24.0, 60.0))
        assert r.status_code == 409
        assert api.index.catalog.get("s1").merchant_id == "m1"
        # tokens are the operator's business
        assert (await m1.get("/v1/tokens")).status_code == 403
        assert (await m1.post("/v1/tokens", json={"role": "operator"})).status_code == 403
    assert read_store_changes(api.state) == []  # nothing refused was written


async def test_an_invalid_feature_gets_422_with_every_problem_as_fences_check_says(api):
    bad = square("s9", "m1", 24.0, 60.0)
    bad["geometry"]["coordinates"][0].pop()  # not closed, 4 positions left
    bad["properties"]["tz"] = "Mars/Olympus"
    with_problems = None
    try:
        store_from_feature(bad)
    except CatalogError as exc:
        with_problems = [p.reason for p in exc.problems]
    assert with_problems and len(with_problems) == 2
    async with api.client("op") as op:
        r = await op.put("/v1/stores/s9", json=bad)
        assert r.status_code == 422
        body = r.json()
        assert [p["reason"] for p in body["problems"]] == with_problems
        assert all(p["store_id"] == "s9" for p in body["problems"])
        # not JSON; a repeated member (refused by `fences check` too)
        r = await op.put("/v1/stores/s9", content=b'{"type": "Feature",')
        assert r.status_code == 422
        assert r.json()["problems"][0]["reason"].startswith("not valid JSON")
        r = await op.put("/v1/stores/s9", content=b'{"type": "Feature", "type": "Feature"}')
        assert r.status_code == 422
        assert "twice" in r.json()["problems"][0]["reason"]
        # the URL and the body disagree
        r = await op.put("/v1/stores/s8", json=circle("s9", "m1", 24.0, 60.0))
        assert r.status_code == 422
        # a BSSID another live store claims
        r = await op.put("/v1/stores/s9", json=circle("s9", "m1", 24.0, 60.0, wifi=["A4-2B-B0-C1-D2-E3"]))
        assert r.status_code == 422
        assert "claimed by live store 's1'" in r.json()["problems"][0]["reason"]
    assert api.index.catalog.slot_of("s9") is None
    assert read_store_changes(api.state) == []


async def test_put_get_list_bbox_delete_change_the_live_index_and_persist(api):
    far = (24.9700, 60.1900)  # ~2 km from every seeded store
    assert api.index.query(*far) == []
    async with api.client("m1") as m1:
        r = await m1.put("/v1/stores/s9", json=circle("s9", "m1", *far, r=40, name="Kiosk"))
        assert r.status_code == 201
        assert r.json()["properties"]["name"] == "Kiosk"
        hits = api.index.query(*far)  # live at once, no rebuild
        assert [api.index.store(slot).store_id for slot, _d in hits] == ["s9"]
        r = await m1.get("/v1/stores/s9")
        assert r.status_code == 200
        assert r.json() == {
            "type": "Feature",
            "properties": {"store_id": "s9", "merchant_id": "m1", "name": "Kiosk", "radius_m": 40.0},
            "geometry": {"type": "Point", "coordinates": [far[0], far[1]]},
        }
        # replace: the fence moves
        r = await m1.put("/v1/stores/s9", json=circle("s9", "m1", 24.9800, 60.1900, r=40))
        assert r.status_code == 200
        assert api.index.query(*far) == []
        # bbox: around the new place only
        box = {"bbox": "24.975,60.185,24.985,60.195"}
        assert _ids((await m1.get("/v1/stores", params=box)).json()) == ["s9"]
        assert _ids((await m1.get("/v1/stores", params={"bbox": "24.93,60.16,24.96,60.18"})).json()) == ["s1", "s2"]
        assert (await m1.get("/v1/stores", params={"bbox": "1,2,3"})).status_code == 422
        # pages
        p1 = (await m1.get("/v1/stores", params={"limit": 2})).json()
        assert _ids(p1) == ["s1", "s2"]
        p2 = (await m1.get("/v1/stores", params={"limit": 2, "cursor": p1["next_cursor"]})).json()
        assert _ids(p2) == ["s9"] and "next_cursor" not in p2
        # delete a store of the file: gone from matching, the core told
        assert (await m1.delete("/v1/stores/s1")).status_code == 204
        assert (await m1.get("/v1/stores/s1")).status_code == 404
        assert api.index.query(24.9400, 60.1700) == []
        assert api.removed == ["s1"]
    # durable: the state holds the changes; laid over the file they give the live catalog
    changes = {c.store_id: c for c in read_store_changes(api.state)}
    assert set(changes) == {"s9", "s1"} and changes["s1"].feature is None
    fresh = load_catalog(api.state.parent / "fences.geojson")
    assert overlay(fresh, list(changes.values())) == []
    assert sorted(s.store_id for _, s in fresh.alive()) == ["s2", "s3", "s9"]
    assert fresh.get("s9").center == (24.98, 60.19)


async def test_bulk_import_reports_created_updated_unchanged_all_or_nothing(api):
    moved = circle("s1", "m1", 24.9410, 60.1700, wifi=["a4:2b:b0:c1:d2:e3"])
    new = circle("s7", "m1", 24.9600, 60.1800, wifi=["00:11:22:33:44:55"])
    same = SEED["features"][1]
    body = collection(moved, same, new)
    async with api.client("m1") as m1, api.client("m2") as m2:
        r = await m1.post("/v1/stores/import", params={"dry_run": "true"}, json=body)
        assert r.status_code == 200
        assert r.json() == {"created": ["s7"], "updated": ["s1"], "unchanged": ["s2"], "dry_run": True}
        assert api.index.catalog.slot_of("s7") is None
        r = await m1.post("/v1/stores/import", json=body)
        assert r.json() == {"created": ["s7"], "updated": ["s1"], "unchanged": ["s2"], "dry_run": False}
        assert api.index.catalog.get("s1").center == (24.941, 60.17)
        assert api.index.catalog.by_bssid("00:11:22:33:44:55") == api.index.catalog.slot_of("s7")
        # the BSSID moves from s7 to s1 and back in one import: both look-ups stay right
        swap = collection(
            circle("s1", "m1", 24.9410, 60.1700, wifi=["00:11:22:33:44:55"]),
            circle("s7", "m1", 24.9600, 60.1800, wifi=["a4:2b:b0:c1:d2:e3"]),
        )
        r = await m1.post("/v1/stores/import", json=swap)
        assert r.json()["updated"] == ["s1", "s7"]
        cat = api.index.catalog
        assert cat.by_bssid("00:11:22:33:44:55") == cat.slot_of("s1")
        assert cat.by_bssid("a4:2b:b0:c1:d2:e3") == cat.slot_of("s7")
        before = read_store_changes(api.state)
        # one bad feature: nothing applied, every problem listed with its position
        bad = collection(circle("s8", "m1", 24.0, 60.0), circle("s5", "m1", 24.0, 99.0))
        r = await m1.post("/v1/stores/import", json=bad)
        assert r.status_code == 422
        assert [p["index"] for p in r.json()["problems"]] == [1]
        assert cat.slot_of("s8") is None
        # another merchant's stores are refused whole
        r = await m2.post("/v1/stores/import", json=collection(circle("s8", "m2", 24.0, 60.0), moved))
        assert r.status_code == 422
        assert [p["store_id"] for p in r.json()["problems"]] == ["s1"]
        assert cat.slot_of("s8") is None
    assert read_store_changes(api.state) == before


async def test_tokens_over_the_api_and_the_docs(api):
    async with api.client("op") as op:
        r = await op.post("/v1/tokens", json={"role": "merchant", "merchant_id": "m3", "name": "shop"})
        assert r.status_code == 201
        made = r.json()
        assert made["token"].startswith("gp_")
        listed = (await op.get("/v1/tokens")).json()
        assert made["token_id"] in [t["token_id"] for t in listed]
        assert all("token" not in t for t in listed)
        assert (await op.post("/v1/tokens", json={"role": "merchant"})).status_code == 422
        async with api.client(None) as m3:
            m3.headers["Authorization"] = f"Bearer {made['token']}"
            r = await m3.put("/v1/stores/x1", json=circle("x1", "m3", 25.0, 60.2))
            assert r.status_code == 201
            assert (await op.delete(f"/v1/tokens/{made['token_id']}")).json()["revoked"] is not None
            assert (await m3.get("/v1/stores")).status_code == 401
        assert (await op.delete("/v1/tokens/tok_nope")).status_code == 404
        spec = (await op.get("/openapi.json")).json()
        assert {"/v1/stores", "/v1/stores/{store_id}", "/v1/stores/import", "/v1/tokens"} <= set(spec["paths"])
        assert (await op.get("/docs")).status_code == 200
        assert (await op.get("/v1/health")).json() == {"status": "ok", "stores": 4, "streams": 0}


async def test_a_state_file_that_cannot_be_written_is_a_503_and_the_index_stays(api):
    import sqlite3

    other = sqlite3.connect(api.state, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the file
    try:
        async with api.client("op") as op:
            r = await op.put("/v1/stores/s1", json=circle("s1", "m1", 24.9800, 60.1900))
            assert r.status_code == 503
            assert r.json()["error"] == "StateError"
            cat = api.index.catalog
            assert cat.get("s1").center == (24.94, 60.17)  # undone, identifiers too
            assert cat.by_bssid("a4:2b:b0:c1:d2:e3") == cat.slot_of("s1")
            assert (await op.delete("/v1/stores/s2")).status_code == 503
            assert cat.slot_of("s2") is not None and api.removed == []
            r = await op.put("/v1/stores/s8", json=circle("s8", "m1", 24.9800, 60.1900))
            assert r.status_code == 503 and cat.slot_of("s8") is None
            assert api.index.query(24.9800, 60.1900) == []
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with api.client("op") as op:
        r = await op.put("/v1/stores/s1", json=circle("s1", "m1", 24.9800, 60.1900))
        assert r.status_code == 200


async def test_stores_export_writes_the_file_with_the_api_changes_laid_over(api, capsys):
    async with api.client("op") as op:
        assert (await op.put("/v1/stores/s9", json=circle("s9", "m2", 24.98, 60.19))).status_code == 201
        assert (await op.delete("/v1/stores/s2")).status_code == 204
    out = api.state.parent / "live.geojson"
    fences = api.state.parent / "fences.geojson"
    assert geopush(["stores", "export", "--fences", str(fences), "--state", str(api.state), "-o", str(out)]) == 0
    assert "2 change(s)" in capsys.readouterr().out
    exported = load_catalog(out)
    assert sorted(s.store_id for _, s in exported.alive()) == ["s1", "s3", "s9"]
    assert json.loads(out.read_text())["features"][-1]["properties"]["merchant_id"] == "m2"
