"""POST /v1/redemptions and GET /v1/merchants/{id}/report, end to end: `geopush run --http`,
the real core, a real broker. A till's redemption goes through the engine's event path (the
answers on MQTT are the same), exactly once; the report has `geopush report`'s figures."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
from daemon.conftest import (  # noqa: F401  (broker: the daemon's real-broker fixture)
    Collector,
    broker,
    gps,
    publish_all,
    running_service,
)

from engine.loop import display_code
from engine.report import build_report, load_delivered, load_outputs

from .conftest import circle, collection, tokens

A = (24.9400, 60.1700)


def files(folder: Path) -> SimpleNamespace:
    fences = folder / "fences.geojson"
    fences.write_text(json.dumps(collection(circle("s1", "m1", *A, r=30), circle("s3", "m2", 23.76, 61.498))))
    camps = folder / "campaigns.json"
    coupon = {"title": "2 for 1", "value": 3, "currency": "EUR", "expires_in_s": 3600}
    camps.write_text(json.dumps([{"id": "c1", "merchant_id": "m1", "trigger": "enter", "coupon": coupon}]))
    return SimpleNamespace(fences=fences, campaigns=camps)


async def test_a_till_redeems_through_the_engine_exactly_once_and_the_report_counts_it(broker, tmp_path):  # noqa: F811
    state = tmp_path / "state.db"
    auth = tokens(state)
    t0 = time.time()
    async with (
        Collector(broker.url, ["geopush/push/#", "geopush/redemptions/#"]) as col,
        running_service(broker.url, state, world=files(tmp_path), http="127.0.0.1:0") as svc,  # type: ignore[arg-type]
    ):
        await publish_all(broker.url, [("geopush/events/u1", gps("u1", t0, A[1], A[0]))])
        await col.wait_for(lambda c: len(c.on("geopush/push/u1")) == 1)
        push = col.json_on("geopush/push/u1")[0]
        code = display_code(push["code"]).lower()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api.port}/v1", timeout=30) as http:
            # another merchant's till: the engine says so
            r = await http.post("/redemptions", json={"user": "u1", "code": code}, headers=auth["m2"])
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "other_merchant"
            # a typo: caught by the check character
            r = await http.post("/redemptions", json={"user": "u1", "code": "0000000000-1"}, headers=auth["m1"])
            assert r.json()["status"] == "invalid_code"
            ok = await http.post(
                "/redemptions", json={"user": "u1", "code": code, "request_id": "till-1"}, headers=auth["m1"]
            )
            assert ok.status_code == 200, ok.text
            body = ok.json()
            assert (body["status"], body["push_ref"], body["campaign_id"]) == ("ok", push["push_id"], "c1")
            # the till's retry of the same attempt: ok again; any other attempt: already redeemed
            again = await http.post(
                "/redemptions", json={"user": "u1", "code": code, "request_id": "till-1"}, headers=auth["m1"]
            )
            assert again.json()["status"] == "ok"
            other = await http.post("/redemptions", json={"user": "u1", "code": code}, headers=auth["m1"])
            assert other.json()["status"] == "already_redeemed"
            # a merchant token speaks only for its own merchant; an operator must name one
            r = await http.post(
                "/redemptions", json={"user": "u1", "code": code, "merchant_id": "m2"}, headers=auth["m1"]
            )
            assert r.status_code == 403
            r = await http.post("/redemptions", json={"user": "u1", "code": code}, headers=auth["op"])
            assert r.status_code == 422 and "merchant_id" in r.json()["detail"]
            # the same answers went out on MQTT, as for a till on the broker
            await col.wait_for(lambda c: len(c.on("geopush/redemptions/m1/u1")) == 4)
            assert [a["status"] for a in col.json_on("geopush/redemptions/m1/u1")] == [
                "invalid_code", "ok", "ok", "already_redeemed"
            ]  # fmt: skip

            await publish_all(broker.url, [("geopush/events/u1", json.dumps(
                {"type": "payment", "user": "u1", "ts": t0 + 5, "merchant_id": "m1", "amount": 7.5}
            ).encode())])  # fmt: skip
            for _ in range(200):
                rep = (await http.get("/merchants/m1/report", headers=auth["m1"])).json()
                if rep["orders"] == 1:
                    break

                await asyncio.sleep(0.05)
            assert (rep["visits"], rep["pushes"], rep["redemptions"], rep["orders"], rep["revenue"]) == (
                {"new": 1, "returning": 0}, 1, 1, 1, 7.5
            )  # fmt: skip
            assert rep["campaigns"][0]["campaign_id"] == "c1"
            assert rep["campaigns"][0]["lift"]["status"] == "not enough data"
            # a window before everything: nothing
            early = (await http.get(f"/merchants/m1/report?to={t0 - 10}", headers=auth["op"])).json()
            assert (early["pushes"], early["orders"]) == (0, 0)
            assert (await http.get("/merchants/m1/report", headers=auth["m2"])).status_code == 403
            bad = await http.get("/merchants/m1/report?from=yesterday", headers=auth["m1"])
            assert bad.status_code == 422
        await col.wait_for(lambda c: len(c.on("geopush/push/u1")) == 1)
    # the same figures as `geopush report` over the state file
    cli = build_report(load_outputs(state), delivered=load_delivered(state))
    (m1,) = [m for m in cli["merchants"] if m["merchant_id"] == "m1"]
    keys = ("visits", "pushes", "delivered", "held_out", "redemptions", "orders", "revenue",
            "new_customers", "new_followers", "lift", "campaigns")  # fmt: skip
    assert {k: rep[k] for k in keys} == {k: m1[k] for k in keys}


async def test_without_the_engine_connection_a_redemption_is_refused_and_nothing_is_redeemed(api):  # type: ignore[no-untyped-def]
    # the API served alone (no daemon link): the broker never got the event
    async with api.client("m1") as http:
        r = await http.post("/v1/redemptions", json={"user": "u1", "code": "7MZ4K0Q2XH-R"})
    assert r.status_code == 503
    assert "retry" in r.json()["detail"]
