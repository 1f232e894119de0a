"""Closing the loop through the daemon: a push's code redeemed over MQTT, exactly once, the
answers on the redemptions topic, the attributed order on the merchant's outcomes topic."""

from __future__ import annotations

import json
from types import SimpleNamespace

from engine.loop import display_code
from fences.catalog import dump_catalog
from fences.store import Store

from .conftest import Collector, publish_all, running_service

T0 = 1_780_000_000.0
OUT = ["geopush/push/#", "geopush/redemptions/#", "geopush/outcomes/#"]


def _files(tmp_path):  # type: ignore[no-untyped-def]
    fences = tmp_path / "stores.geojson"
    dump_catalog([Store(store_id="A", merchant_id="m-A", center=(24.94, 60.17), radius_m=50.0)], fences)
    camps = tmp_path / "campaigns.json"
    coupon = {"title": "t", "value": 1, "currency": "EUR", "expires_in_s": 3600}
    camps.write_text(json.dumps([{"id": "a", "merchant_id": "m-A", "trigger": "enter", "coupon": coupon}]))
    return SimpleNamespace(fences=fences, campaigns=camps)


def _msg(ev: dict) -> tuple[str, bytes]:  # type: ignore[type-arg]
    return f"geopush/events/{ev['user']}", json.dumps(ev).encode()


async def test_redeem_over_mqtt(broker, tmp_path):
    gps = {"type": "gps", "user": "u1", "ts": T0, "lon": 24.94, "lat": 60.17, "acc": 5.0}
    async with Collector(broker.url, OUT) as col, running_service(
        broker.url, tmp_path / "s.db", world=_files(tmp_path)  # type: ignore[arg-type]
    ) as svc:
        await publish_all(broker.url, [_msg(gps)])
        await col.wait_for(lambda c: len(c.on("geopush/push/u1")) == 1)
        push = col.json_on("geopush/push/u1")[0]
        code = display_code(push["code"]).lower()  # as a cashier might type it
        red = {"type": "redeem", "user": "u1", "merchant_id": "m-A", "code": code}
        await publish_all(broker.url, [
            _msg({**red, "ts": T0 + 60, "request_id": "till-1"}),
            _msg({**red, "ts": T0 + 61, "request_id": "till-2"}),
            _msg({"type": "payment", "user": "u1", "ts": T0 + 62, "merchant_id": "m-A", "amount": 4.5}),
        ])  # fmt: skip
        await col.wait_for(lambda c: len(c.on("geopush/outcomes/m-A")) == 1)
        answers = col.json_on("geopush/redemptions/m-A/u1")
        assert [(a["request_id"], a["status"]) for a in answers] == [
            ("till-1", "ok"), ("till-2", "already_redeemed")
        ]  # fmt: skip
        assert answers[0]["push_ref"] == push["push_id"]
        (order,) = col.json_on("geopush/outcomes/m-A")
        assert (order["kind"], order["push_ref"], order["via"], order["amount"]) == (
            "order", push["push_id"], "redeemed", 4.5
        )  # fmt: skip
        assert svc.totals["visits"] == 1 and svc.totals["pushes"] == 1  # answers are not visits
