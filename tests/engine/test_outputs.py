"""Outputs: byte-stable JSON, exact round trip, stable ids."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import DecodeError
from engine.outputs import Coupon, Push, VisitEvent, decode_output, encode_output, out_id

COUPON = Coupon(title="10% off", value=10.0, currency="EUR", expires_in_s=3600)


def visit(event: str = "enter", dwell_s: int | None = None) -> VisitEvent:
    return VisitEvent(
        visit_id="u1:s1:1", user="u1", store_id="s1", merchant_id="m1", event=event,  # type: ignore[arg-type]
        ts=1700000000.25, signal="wifi", dwell_s=dwell_s,
    )  # fmt: skip


def push() -> Push:
    return Push(
        push_id="p-abc", user="u1", campaign_id="c1", store_id="s1", merchant_id="m1",
        visit_id="u1:s1:1", trigger="dwell", ts=1700000300.0, coupon=COUPON,
    )  # fmt: skip


def test_visit_event_exact_bytes() -> None:
    assert encode_output(visit()) == (
        b'{"kind":"visit","visit_id":"u1:s1:1","user":"u1","store_id":"s1","merchant_id":"m1",'
        b'"event":"enter","ts":1700000000.25,"signal":"wifi","dwell_s":null,"returning":false}'
    )


def test_push_exact_bytes() -> None:
    assert encode_output(push()) == (
        b'{"kind":"push","push_id":"p-abc","user":"u1","campaign_id":"c1","store_id":"s1",'
        b'"merchant_id":"m1","visit_id":"u1:s1:1","trigger":"dwell","ts":1700000300.0,'
        b'"coupon":{"title":"10% off","value":10.0,"currency":"EUR","expires_in_s":3600}}'
    )


@pytest.mark.parametrize("o", [visit(), visit("dwell", 300), visit("exit"), push()])
def test_round_trip(o: VisitEvent | Push) -> None:
    b = encode_output(o)
    back = decode_output(b)
    assert back == o
    assert type(back) is type(o)
    assert encode_output(back) == b
    assert json.loads(b)["kind"] in ("visit", "push")


def test_out_ids() -> None:
    assert visit().out_id == "u1:s1:1:enter"
    assert visit("exit").out_id == "u1:s1:1:exit"
    assert visit("dwell", 300).out_id == "u1:s1:1:dwell:300"
    assert visit("dwell", 600).out_id != visit("dwell", 300).out_id
    assert push().out_id == "p-abc"
    assert out_id(push()) == "p-abc"
    assert len({o.out_id for o in (visit(), visit("exit"), visit("dwell", 60), push())}) == 4


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"[]",
        b'{"kind":"teleport"}',
        b'{"kind":"visit"}',
        b'{"kind":"visit","visit_id":"v","user":"u","store_id":"s","merchant_id":"m","event":"party","ts":1,"signal":"gps"}',
    ],
)
def test_decode_output_errors(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_output(payload)


text = st.text(max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        VisitEvent,
        visit_id=text,
        user=text,
        store_id=text,
        merchant_id=text,
        event=st.sampled_from(["enter", "dwell", "exit"]),
        ts=st.floats(0, 4e9),
        signal=text,
        dwell_s=st.none() | st.integers(0, 10**6),
    )  # fmt: skip
    | st.builds(
        Push,
        push_id=text,
        user=text,
        campaign_id=text,
        store_id=text,
        merchant_id=text,
        visit_id=text,
        trigger=text,
        ts=st.floats(0, 4e9),
        coupon=st.builds(Coupon, text, st.floats(0, 1e9), text, st.integers(0, 10**9)),
    )  # fmt: skip
)
def test_round_trip_property(o: VisitEvent | Push) -> None:
    b = encode_output(o)
    assert decode_output(b) == o
    assert encode_output(decode_output(b)) == b
