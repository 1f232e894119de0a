"""Stored user records (engine.state.encode_user): defaults are left out of the blob, and a blob
written with every field (as before ``omit_defaults``), offers as maps (as before they were
arrays), reads back to the same record."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.state import Offer, UserState, Visit, decode_user, encode_user

finite = st.floats(-1e9, 1e9)
visits = st.dictionaries(
    st.text(min_size=1, max_size=5),
    st.builds(
        Visit, visit_id=st.text(max_size=8), store_id=st.text(max_size=8),
        merchant_id=st.text(max_size=8), enter_ts=finite, last_seen_ts=finite,
        signal=st.sampled_from(["gps", "wifi", "beacon", "nfc"]),
        dwell_fired=st.lists(st.integers(0, 10_000), max_size=3), returning=st.booleans(),
    ),
    max_size=3,
)  # fmt: skip
opt_finite = st.none() | finite
offers = st.dictionaries(
    st.text(min_size=1, max_size=11),
    st.builds(
        Offer, push_id=st.text(max_size=8), campaign_id=st.text(max_size=4),
        merchant_id=st.text(max_size=4), ts=finite, expires_ts=finite, held_out=st.booleans(),
        redeemed_ts=opt_finite, redeem_req=st.none() | st.text(max_size=8), order_ts=opt_finite,
        order_value=opt_finite,
    ),
    max_size=3,
)  # fmt: skip
records = st.builds(
    UserState, user=st.text(min_size=1, max_size=12), last_ts=finite,
    last_fix=st.none() | st.tuples(finite, finite, finite), visits=visits,
    visit_seq=st.integers(0, 1000), tags=st.none() | st.lists(st.text(max_size=5), max_size=3),
    opt_out=st.booleans(), payments=st.none() | st.dictionaries(st.text(max_size=4), st.integers(0, 9)),
    near=st.none() | st.dictionaries(st.text(max_size=4), st.lists(finite, min_size=2, max_size=2)),
    claim_store=st.text(max_size=6), claim_rank=st.integers(-1, 3), version=st.integers(0, 99),
    offers=st.none() | offers,
)  # fmt: skip


def _every_field(x: Any) -> Any:
    """The record as the encoder wrote it before: every field, defaults included, every struct
    (offers too) a map."""
    if isinstance(x, msgspec.Struct):
        return {f: _every_field(getattr(x, f)) for f in x.__struct_fields__}
    if isinstance(x, dict):
        return {k: _every_field(v) for k, v in x.items()}
    return x


@settings(max_examples=200, deadline=None)
@given(records)
def test_blobs_with_and_without_defaults_read_back_the_same(rec: UserState) -> None:
    assert decode_user(encode_user(rec)) == rec
    old = msgspec.msgpack.encode(_every_field(rec))
    assert decode_user(old) == rec
    assert len(encode_user(rec)) <= len(old)


def test_a_new_users_blob_holds_little_more_than_its_id() -> None:
    blob = encode_user(UserState(user="u1"))
    assert decode_user(blob) == UserState(user="u1")
    assert len(blob) < 12, blob  # {"user": "u1"}: the defaults are not written
