"""Property tests of the decoders: they never raise anything but DecodeError, and every valid event
round-trips exactly through the canonical wire form."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import DecodeError
from engine.events import (
    EVENT_TYPES,
    OWNTRACKS_REASONS,
    REASONS,
    RSSI_MAX,
    RSSI_MIN,
    TS_MAX,
    Ap,
    Beacon,
    Event,
    Gps,
    Nfc,
    Payment,
    ProfileEvent,
    Wifi,
    decode,
    decode_owntracks,
    encode_batch,
    encode_event,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_decode(payload: bytes, **kw: Any) -> list[Event] | None:
    try:
        return decode(payload, **kw)
    except DecodeError as exc:
        assert exc.reason in REASONS, exc.reason
        assert exc.detail
        return None


def _check_owntracks(payload: bytes) -> None:
    try:
        decode_owntracks(payload, user="u", device="d")
    except DecodeError as exc:
        assert exc.reason in OWNTRACKS_REASONS, exc.reason


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(payload: bytes) -> None:
    _check_decode(payload)
    _check_owntracks(payload)


# JSON-ish values biased towards our field names and types, so the fuzzer reaches deep checks.
KEYS = st.sampled_from(
    ["type", "user", "ts", "lon", "lat", "acc", "aps", "bssid", "rssi", "uuid", "major", "minor",
     "tag", "merchant_id", "amount", "tags", "opt_out", "events", "_type", "tst", "BSSID", "topic", "x"]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            *EVENT_TYPES,
            "batch",
            "location",
            "beacon",
            "transition",
            "cmd",
            "encrypted",
            "aa:bb:cc:dd:ee:ff",
            "u",
        ]
    )
)
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=8),
    max_leaves=25,
)


@FUZZ
@given(JSONISH)
def test_arbitrary_json(value: Any) -> None:
    payload = json.dumps(value).encode()
    _check_decode(payload)
    _check_decode(payload, topic_user="u")
    _check_owntracks(payload)


def _mutations(d: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An event dict with one field replaced, dropped, or an extra one added."""
    keys = sorted(d)
    return st.one_of(
        st.builds(lambda k, v: {**d, k: v}, st.sampled_from(keys), SCALARS),
        st.builds(lambda k: {x: y for x, y in d.items() if x != k}, st.sampled_from(keys)),
        st.builds(lambda k, v: {**d, k: v}, KEYS, JSONISH),
    )


# --- valid events --------------------------------------------------------------------------------

users = st.text(min_size=1, max_size=30)
ts = st.floats(min_value=1e-3, max_value=TS_MAX)
rssi = st.floats(min_value=RSSI_MIN, max_value=RSSI_MAX)
u16 = st.integers(0, 65535)
names = st.text(min_size=1, max_size=40)
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda bs: ":".join(f"{b:02x}" for b in bs)
)
# Canonical UUIDs, or other non-blank ids that normalisation leaves alone (not 32 bare hex digits).
uuids = st.uuids().map(lambda u: str(u).upper()) | st.text(
    alphabet="0123456789ABCDEF-", min_size=1, max_size=31
)

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(Gps, users, ts, st.floats(-180, 180), st.floats(-90, 90), st.floats(0, 100_000)),
    st.builds(Wifi, users, ts, st.lists(st.builds(Ap, macs, rssi), max_size=8)),
    st.builds(Beacon, users, ts, uuids, u16, u16, rssi),
    st.builds(Nfc, users, ts, names),
    st.builds(Payment, users, ts, names, st.floats(0, 1e12)),
    st.builds(
        ProfileEvent,
        users,
        ts,
        st.lists(st.text(min_size=1, max_size=20), max_size=5),
        st.booleans(),
    ),
)


@FUZZ
@given(events)
def test_valid_events_round_trip_exactly(ev: Event) -> None:
    wire = encode_event(ev)
    assert decode(wire) == [ev]
    assert decode(wire, topic_user=ev.user) == [ev]
    assert encode_event(decode(wire)[0]) == wire


@FUZZ
@given(st.lists(events, min_size=1, max_size=10))
def test_valid_batches_round_trip(evs: list[Event]) -> None:
    user = evs[0].user
    evs = [type(e)(user, *[getattr(e, f) for f in e.__struct_fields__[1:]]) for e in evs]
    assert decode(encode_batch(user, evs), topic_user=user) == evs


@FUZZ
@given(events.flatmap(lambda ev: _mutations(json.loads(encode_event(ev)))))
def test_mutated_events(d: dict[str, Any]) -> None:
    out = _check_decode(json.dumps(d).encode())
    if out is not None:  # whatever is accepted is valid and canonical
        [ev] = out
        assert decode(encode_event(ev)) == [ev]
        for name in ("lon", "lat", "acc", "ts", "rssi", "amount"):
            v = getattr(ev, name, None)
            assert v is None or math.isfinite(v)


# --- OwnTracks-shaped input ------------------------------------------------------------------------

OT_BASE = [
    {"_type": "location", "tst": 1514455575, "lat": 52.3, "lon": 5.04, "acc": 15, "tid": "s5"},
    {"_type": "location", "tst": 1709037003, "lat": 51.0, "lon": 0.0, "BSSID": "00:13:10:85:fe:01"},
    {"_type": "transition", "tst": 1603209966, "lat": 52.7, "lon": -1.6, "event": "leave"},
    {"_type": "beacon", "tst": 1514455575, "uuid": "abc", "major": 1, "minor": 2, "rssi": -60},
]
OT_VALUES = (
    SCALARS | st.floats(allow_nan=True, allow_infinity=True).map(str) | st.integers().map(str)
)


@FUZZ
@given(
    st.sampled_from(OT_BASE).flatmap(
        lambda m: st.builds(
            lambda k, v: {**m, k: v}, st.sampled_from([*m, "topic", "BSSID"]), OT_VALUES
        )
    )
)
def test_owntracks_mutations(msg: dict[str, Any]) -> None:
    try:
        evs = decode_owntracks(json.dumps(msg).encode(), user="u", device="d")
    except DecodeError as exc:
        assert exc.reason in OWNTRACKS_REASONS, exc.reason
        return
    for ev in evs:  # whatever is accepted is a valid wire event of the topic's user
        assert ev.user == "u"
        assert decode(encode_event(ev)) == [ev]


# --- deep nesting: RecursionError in the decoder used to escape as a crash ------------------------

_VALID_WIRE = {
    "gps": {"type": "gps", "user": "u", "ts": 5.0, "lon": 1.0, "lat": 1.0, "acc": 5.0},
    "wifi": {"type": "wifi", "user": "u", "ts": 5.0, "aps": [{"bssid": "aa:bb:cc:dd:ee:ff", "rssi": -50}]},
    "beacon": {"type": "beacon", "user": "u", "ts": 5.0, "uuid": "x", "major": 1, "minor": 2, "rssi": -60},
    "nfc": {"type": "nfc", "user": "u", "ts": 5.0, "tag": "t"},
    "payment": {"type": "payment", "user": "u", "ts": 5.0, "merchant_id": "m", "amount": 1.0},
    "profile": {"type": "profile", "user": "u", "ts": 5.0, "tags": ["a"], "opt_out": False},
    "redeem": {"type": "redeem", "user": "u", "ts": 5.0, "merchant_id": "m", "code": "ABCDEFGHJK-1"},
}  # fmt: skip
assert set(_VALID_WIRE) == set(EVENT_TYPES)
_NEST = "\x00NEST\x00"


def _nested(depth: int, kind: str) -> bytes:
    return (b'{"a":' * depth + b"1" + b"}" * depth) if kind == "object" else b"[" * depth + b"]" * depth


def _with_nest(d: dict[str, Any], depth: int, kind: str) -> bytes:
    return json.dumps(d).encode().replace(json.dumps(_NEST).encode(), _nested(depth, kind))


def _positions(d: dict[str, Any]) -> list[dict[str, Any]]:
    """``d`` with the nest in each field's place, as an extra field, and inside the first item of
    each list field."""
    out = [{**d, k: _NEST} for k in d] + [{**d, "x": _NEST}]
    for k, v in d.items():
        if isinstance(v, list) and v:
            first = {**v[0], "x": _NEST} if isinstance(v[0], dict) else _NEST
            out.append({**d, k: [first, *v[1:]]})
    return out


@pytest.mark.parametrize("depth", [1000, 2500, 5000])
@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("etype", sorted(_VALID_WIRE))
def test_deep_nesting_in_every_position_is_a_decode_error(etype: str, kind: str, depth: int) -> None:
    base = _VALID_WIRE[etype]
    inner = {k: v for k, v in base.items() if k != "user"}
    cases = [
        *_positions(base),
        *({"type": "batch", "user": "u", "events": [p]} for p in _positions(inner)),
    ]
    for case in cases:
        _check_decode(_with_nest(case, depth, kind), topic_user="u")
    # an ignored extra field is skipped, not validated: there the decoder went deepest
    with pytest.raises(DecodeError) as exc:
        decode(_with_nest({**base, "x": _NEST}, depth, kind))
    assert exc.value.reason == "too_deep"
    for ot in OT_BASE:
        for case in [{**ot, k: _NEST} for k in ot] + [{**ot, "x": _NEST}]:
            _check_owntracks(_with_nest(case, depth, kind))
