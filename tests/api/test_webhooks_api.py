"""/v1/merchants/{merchant_id}/webhooks over real HTTP: registration, scoping by token, errors."""

from __future__ import annotations

from engine.daemon.webhooks import EVENT_TYPES


async def test_a_merchant_registers_lists_and_deletes_its_webhooks(api):
    async with api.client("m1") as m1:
        r = await m1.post("/v1/merchants/m1/webhooks", json={"url": "https://h.example/a", "events": ["push"]})
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["secret"].startswith("whsec_") and made["events"] == ["push"]
        assert made["merchant_id"] == "m1" and made["paused"] is None and made["pending"] == 0
        r = await m1.post("/v1/merchants/m1/webhooks", json={"url": "http://127.0.0.1:9/b"})
        assert r.json()["events"] == list(EVENT_TYPES)  # no filter: everything
        listed = (await m1.get("/v1/merchants/m1/webhooks")).json()
        assert [e["url"] for e in listed] == ["https://h.example/a", "http://127.0.0.1:9/b"]
        assert all("secret" not in e for e in listed)  # shown once, at creation
        one = await m1.get(f"/v1/merchants/m1/webhooks/{made['endpoint_id']}")
        assert one.status_code == 200 and one.json()["url"] == "https://h.example/a"
        assert (await m1.delete(f"/v1/merchants/m1/webhooks/{made['endpoint_id']}")).status_code == 204
        assert (await m1.get(f"/v1/merchants/m1/webhooks/{made['endpoint_id']}")).status_code == 404
        assert len((await m1.get("/v1/merchants/m1/webhooks")).json()) == 1
        r = await m1.post(f"/v1/merchants/m1/webhooks/{listed[1]['endpoint_id']}/resume")
        assert r.status_code == 200 and r.json()["paused"] is None


async def test_webhooks_are_scoped_to_the_tokens_merchant(api):
    async with api.client("m1") as m1, api.client("m2") as m2, api.client("op") as op, api.client(None) as anon:
        mine = (await m1.post("/v1/merchants/m1/webhooks", json={"url": "https://h.example/m1"})).json()
        r = await m2.post("/v1/merchants/m1/webhooks", json={"url": "https://evil.example/"})
        assert r.status_code == 403 and "limited to merchant 'm2'" in r.json()["detail"]
        assert (await m2.get("/v1/merchants/m1/webhooks")).status_code == 403
        # another merchant's endpoint under one's own merchant: not found
        r = await m2.delete(f"/v1/merchants/m2/webhooks/{mine['endpoint_id']}")
        assert r.status_code == 404
        assert (await anon.get("/v1/merchants/m1/webhooks")).status_code == 401
        # an operator manages any merchant's
        assert len((await op.get("/v1/merchants/m1/webhooks")).json()) == 1
        r = await op.post("/v1/merchants/m2/webhooks", json={"url": "https://h.example/m2"})
        assert r.status_code == 201
        assert [e["merchant_id"] for e in (await m2.get("/v1/merchants/m2/webhooks")).json()] == ["m2"]


async def test_an_invalid_webhook_is_refused_with_what_to_fix(api):
    async with api.client("m1") as m1:
        r = await m1.post("/v1/merchants/m1/webhooks", json={"url": "ftp:/x", "events": ["visit.enter", "pushes"]})
        assert r.status_code == 422
        reasons = [p["reason"] for p in r.json()["problems"]]
        assert any("absolute http(s) URL" in x for x in reasons)
        assert any("unknown event type(s) ['pushes']" in x and "visit.dwell" in x for x in reasons)
        r = await m1.post("/v1/merchants/m1/webhooks", json={"url": "https://h.example/", "events": []})
        assert r.status_code == 422 and "omit it" in r.json()["problems"][0]["reason"]
        assert (await m1.get("/v1/merchants/m1/webhooks")).json() == []
