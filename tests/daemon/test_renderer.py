"""The daemon's output rendering (engine.daemon.pipeline.Renderer): the per-type fast path
gives the same rows (out_id, topic, payload) as the obviously right one, for every kind of
output, any prefix and any ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.daemon.pipeline import Renderer, Topics
from engine.outputs import (
    Coupon,
    Holdout,
    Order,
    Push,
    RedeemResult,
    VisitEvent,
    encode_output,
    out_id,
)
from engine.state import Output

ids = st.text(min_size=1, max_size=12)
ts = st.floats(0, 4e9, allow_nan=False)
outputs = st.one_of(
    st.builds(VisitEvent, visit_id=ids, user=ids, store_id=ids, merchant_id=ids,
              event=st.sampled_from(["enter", "dwell", "exit"]), ts=ts, signal=st.just("gps"),
              dwell_s=st.none() | st.integers(0, 9999), returning=st.booleans()),
    st.builds(Push, push_id=ids, user=ids, campaign_id=ids, store_id=ids, merchant_id=ids, visit_id=ids,
              trigger=st.just("enter"), ts=ts, coupon=st.just(Coupon("t", 1.0, "EUR", 60)), code=ids),
    st.builds(Holdout, push_id=ids, user=ids, campaign_id=ids, store_id=ids, merchant_id=ids,
              visit_id=ids, trigger=st.just("dwell"), ts=ts),
    st.builds(RedeemResult, request_id=ids, user=ids, merchant_id=ids, code=ids, ts=ts,
              status=st.sampled_from(["ok", "not_found"]), push_ref=st.none() | ids,
              campaign_id=st.none() | ids),
    st.builds(Order, user=ids, merchant_id=ids, ts=ts, amount=st.floats(0, 1e6), push_ref=ids,
              campaign_id=ids, held_out=st.booleans(), via=st.just("window"), first=st.booleans(),
              new_customer=st.booleans(), new_follower=st.booleans()),
)  # fmt: skip


def _oracle(topics: Topics, o: Output) -> tuple[str, str, bytes]:
    """Where docs/events.md says each kind goes, under its stable id, as encode_output writes it."""
    if isinstance(o, Push):
        topic = topics.push(o.user)
    elif isinstance(o, VisitEvent):
        topic = topics.visits(o.merchant_id)
    elif isinstance(o, RedeemResult):
        topic = topics.redemptions(o.merchant_id, o.user)
    else:
        assert isinstance(o, Order | Holdout)
        topic = topics.outcomes(o.merchant_id)
    return out_id(o), topic, encode_output(o)


@settings(max_examples=300)
@given(st.sampled_from(["geopush", "shop", "a/b"]), outputs)
def test_rows_are_what_the_oracle_says(prefix: str, o: Output) -> None:
    topics = Topics(prefix=prefix)
    render = Renderer(topics)
    row = render(o)
    assert (row.out_id, row.topic, row.payload) == _oracle(topics, o)
    slow = render.render_slow(o)
    assert (slow.out_id, slow.topic, slow.payload) == _oracle(topics, o)


def test_an_output_of_another_type_is_refused() -> None:
    with pytest.raises(TypeError):
        Renderer(Topics())(Output())
