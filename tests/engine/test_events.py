"""Wire events: decode, reasons, ranges, batches, normalisation, OwnTracks fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.errors import DecodeError
from engine.events import (
    MAX_PAYLOAD_BYTES,
    OWNTRACKS_CONNECTED_RSSI,
    OWNTRACKS_DEFAULT_ACC_M,
    OWNTRACKS_DEFAULT_BEACON_RSSI,
    Ap,
    Beacon,
    Gps,
    Nfc,
    Payment,
    ProfileEvent,
    Wifi,
    decode,
    decode_owntracks,
    encode_batch,
    encode_event,
    event_type,
    event_user,
)

GPS = {"type": "gps", "user": "u1", "ts": 1700000000.5, "lon": 24.94, "lat": 60.17, "acc": 12.0}
WIFI = {
    "type": "wifi",
    "user": "u1",
    "ts": 1700000001.0,
    "aps": [{"bssid": "aa:bb:cc:dd:ee:ff", "rssi": -60}],
}
BEACON = {
    "type": "beacon",
    "user": "u1",
    "ts": 1700000002.0,
    "uuid": "f7826da6-4fa2-4e98-8024-bc5b71e0893e",
    "major": 1,
    "minor": 65535,
    "rssi": -70,
}
NFC = {"type": "nfc", "user": "u1", "ts": 1700000003.0, "tag": "nfc-42"}
PAYMENT = {"type": "payment", "user": "u1", "ts": 1700000004.0, "merchant_id": "m1", "amount": 12.5}
PROFILE = {"type": "profile", "user": "u1", "ts": 1700000005.0, "tags": ["coffee"], "opt_out": True}
ALL = [GPS, WIFI, BEACON, NFC, PAYMENT, PROFILE]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def reason_of(payload: bytes, **kw: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode(payload, **kw)
    return info.value.reason


@pytest.mark.parametrize("msg", ALL, ids=lambda m: m["type"])
def test_each_type_decodes_and_round_trips(msg: dict[str, Any]) -> None:
    [ev] = decode(dumps(msg))
    assert event_type(ev) == msg["type"]
    assert event_user(ev) == "u1"
    wire = encode_event(ev)
    assert json.loads(wire)["type"] == msg["type"]
    assert decode(wire) == [ev]
    assert encode_event(decode(wire)[0]) == wire  # byte-stable


def test_decoded_values() -> None:
    assert decode(dumps(GPS)) == [Gps("u1", 1700000000.5, 24.94, 60.17, 12.0)]
    assert decode(dumps(NFC)) == [Nfc("u1", 1700000003.0, "nfc-42")]
    assert decode(dumps(PAYMENT)) == [Payment("u1", 1700000004.0, "m1", 12.5)]
    assert decode(dumps(PROFILE)) == [ProfileEvent("u1", 1700000005.0, ["coffee"], True)]
    no_opt = {k: v for k, v in PROFILE.items() if k != "opt_out"}
    assert decode(dumps(no_opt))[0].opt_out is False  # type: ignore[union-attr]


def test_canonical_encoding_is_field_order_and_has_type_first() -> None:
    ev = Gps("u", 1.5, 2.5, 3.5, 4.0)
    assert encode_event(ev) == b'{"type":"gps","user":"u","ts":1.5,"lon":2.5,"lat":3.5,"acc":4.0}'


def test_normalises_bssid_and_uuid() -> None:
    msg = dict(
        WIFI,
        aps=[
            {"bssid": " AA-BB-CC-DD-EE-0F ", "rssi": -50},
            {"bssid": "00:11:22:33:44:55", "rssi": -90},
        ],
    )
    [ev] = decode(dumps(msg))
    assert isinstance(ev, Wifi)
    assert [ap.bssid for ap in ev.aps] == ["aa:bb:cc:dd:ee:0f", "00:11:22:33:44:55"]
    [b] = decode(dumps(dict(BEACON, uuid=" f7826da6-4fa2-4e98-8024-bc5b71e0893e ")))
    assert isinstance(b, Beacon)
    assert b.uuid == "F7826DA6-4FA2-4E98-8024-BC5B71E0893E"
    [b] = decode(dumps(dict(BEACON, uuid="daf246ce836311e4b116123b93f75cba")))
    assert b.uuid == "DAF246CE-8363-11E4-B116-123B93F75CBA"  # type: ignore[union-attr]


def test_ints_are_accepted_for_floats_and_extra_fields_ignored() -> None:
    [ev] = decode(dumps(dict(GPS, lon=24, lat=60, acc=10, ts=1700000000, extra={"x": 1})))
    assert ev == Gps("u1", 1700000000.0, 24.0, 60.0, 10.0)
    assert isinstance(ev.lon, float)  # type: ignore[union-attr]


# --- reasons ---------------------------------------------------------------------------------------

BAD: list[tuple[str, bytes, str]] = [
    ("not json", b"{not json", "malformed_json"),
    ("truncated", b'{"type":"gps"', "malformed_json"),
    ("not utf8", b'{"type":"gps","user":"\xff"}', "malformed_json"),
    ("nan literal", dumps(GPS).replace(b"24.94", b"NaN"), "malformed_json"),
    ("array", b"[1,2]", "malformed_json"),
    ("string", b'"gps"', "malformed_json"),
    ("empty", b"", "malformed_json"),
    ("unknown type", dumps(dict(GPS, type="teleport")), "unknown_type"),
    ("type not a string", dumps(dict(GPS, type=3)), "unknown_type"),
    ("no type", dumps({k: v for k, v in GPS.items() if k != "type"}), "missing_field"),
    ("no user", dumps({k: v for k, v in GPS.items() if k != "user"}), "missing_field"),
    ("no lat", dumps({k: v for k, v in GPS.items() if k != "lat"}), "missing_field"),
    ("no aps", dumps({k: v for k, v in WIFI.items() if k != "aps"}), "missing_field"),
    ("lat as string", dumps(dict(GPS, lat="60.1")), "invalid_field"),
    ("acc bool", dumps(dict(GPS, acc=True)), "invalid_field"),
    ("empty user", dumps(dict(GPS, user="")), "invalid_field"),
    ("long user", dumps(dict(GPS, user="x" * 300)), "invalid_field"),
    ("major float", dumps(dict(BEACON, major=1.5)), "invalid_field"),
    ("bad bssid", dumps(dict(WIFI, aps=[{"bssid": "not-a-mac", "rssi": -50}])), "invalid_field"),
    (
        "short bssid",
        dumps(dict(WIFI, aps=[{"bssid": "aa:bb:cc:dd:ee", "rssi": -50}])),
        "invalid_field",
    ),
    ("blank uuid", dumps(dict(BEACON, uuid="   ")), "invalid_field"),
    ("tags not list", dumps(dict(PROFILE, tags="coffee")), "invalid_field"),
    ("lon 180.5", dumps(dict(GPS, lon=180.5)), "out_of_range"),
    ("lon -181", dumps(dict(GPS, lon=-181)), "out_of_range"),
    ("lat 91", dumps(dict(GPS, lat=91)), "out_of_range"),
    ("lat -90.01", dumps(dict(GPS, lat=-90.01)), "out_of_range"),
    ("acc negative", dumps(dict(GPS, acc=-1)), "out_of_range"),
    ("acc huge", dumps(dict(GPS, acc=1e6)), "out_of_range"),
    ("lon overflow inf", dumps(GPS).replace(b"24.94", b"1e400"), "out_of_range"),
    ("ts zero", dumps(dict(GPS, ts=0)), "out_of_range"),
    ("ts negative", dumps(dict(GPS, ts=-5)), "out_of_range"),
    ("ts milliseconds", dumps(dict(GPS, ts=1700000000000)), "out_of_range"),
    ("rssi positive", dumps(dict(BEACON, rssi=5)), "out_of_range"),
    (
        "rssi -200",
        dumps(dict(WIFI, aps=[{"bssid": "aa:bb:cc:dd:ee:ff", "rssi": -200}])),
        "out_of_range",
    ),
    ("major 65536", dumps(dict(BEACON, major=65536)), "out_of_range"),
    ("minor -1", dumps(dict(BEACON, minor=-1)), "out_of_range"),
    ("amount negative", dumps(dict(PAYMENT, amount=-1)), "out_of_range"),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [(p, r) for _, p, r in BAD], ids=[n for n, _, _ in BAD]
)
def test_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(payload)
    assert info.value.reason == reason
    assert info.value.detail  # a human detail, never empty


def test_detail_names_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        decode(dumps(dict(GPS, lat=91)))
    assert info.value.detail.startswith("lat:")
    with pytest.raises(DecodeError) as info:
        decode(dumps(dict(GPS, ts=1700000000000)))
    assert "milliseconds" in info.value.detail
    with pytest.raises(DecodeError) as info:
        decode(dumps({k: v for k, v in GPS.items() if k != "acc"}))
    assert info.value.detail == "acc"


def test_range_edges_are_inclusive() -> None:
    for lon, lat in [(-180, -90), (180, 90)]:
        decode(dumps(dict(GPS, lon=lon, lat=lat)))
    decode(dumps(dict(GPS, acc=0)))
    decode(dumps(dict(BEACON, major=0, minor=65535, rssi=0)))
    decode(dumps(dict(BEACON, rssi=-150)))


def test_too_large() -> None:
    big = dumps(dict(PROFILE, tags=["t" * 100] * 700))
    assert len(big) > MAX_PAYLOAD_BYTES
    assert reason_of(big) == "too_large"
    just = dumps(dict(NFC, pad="x" * (MAX_PAYLOAD_BYTES - len(dumps(NFC)) - 20)))
    assert len(just) <= MAX_PAYLOAD_BYTES
    decode(just)


def test_wrong_user_against_topic() -> None:
    assert decode(dumps(GPS), topic_user="u1")[0].user == "u1"
    assert reason_of(dumps(GPS), topic_user="u2") == "wrong_user"


# --- batches -------------------------------------------------------------------------------------


def test_batch_flattens_in_order_and_inherits_user() -> None:
    inner = [{k: v for k, v in m.items() if k != "user"} for m in ALL]
    inner[1]["user"] = "u1"  # repeating the batch's user is fine
    evs = decode(dumps({"type": "batch", "user": "u1", "events": inner}), topic_user="u1")
    assert [event_type(e) for e in evs] == [m["type"] for m in ALL]
    assert all(e.user == "u1" for e in evs)
    assert evs == [decode(dumps(m))[0] for m in ALL]


def test_batch_normalises_inner_events() -> None:
    inner = [dict(WIFI, aps=[{"bssid": "AA-BB-CC-DD-EE-FF", "rssi": -1}]), dict(BEACON, uuid="abc")]
    w, b = decode(dumps({"type": "batch", "user": "u1", "events": inner}))
    assert w.aps[0].bssid == "aa:bb:cc:dd:ee:ff"  # type: ignore[union-attr]
    assert b.uuid == "ABC"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        ({"type": "batch", "user": "u1", "events": []}, "empty_batch"),
        ({"type": "batch", "user": "u1", "events": [dict(GPS, user="u2")]}, "wrong_user"),
        ({"type": "batch", "user": "u2", "events": [GPS]}, "wrong_user"),
        ({"type": "batch", "events": [GPS]}, "missing_field"),
        ({"type": "batch", "user": "u1"}, "missing_field"),
        ({"type": "batch", "user": "u1", "events": [GPS, dict(GPS, lat=95)]}, "out_of_range"),
        (
            {
                "type": "batch",
                "user": "u1",
                "events": [GPS, {"type": "batch", "user": "u1", "events": [GPS]}],
            },
            "unknown_type",
        ),
        ({"type": "batch", "user": "u1", "events": [{"ts": 1}]}, "missing_field"),
        (
            {
                "type": "batch",
                "user": "u1",
                "events": [dict(WIFI, aps=[{"bssid": "x", "rssi": -1}])],
            },
            "invalid_field",
        ),
        ({"type": "batch", "user": "u1", "events": GPS}, "invalid_field"),
    ],
)
def test_batch_errors(batch: dict[str, Any], reason: str) -> None:
    assert reason_of(dumps(batch)) == reason


def test_batch_topic_user() -> None:
    payload = dumps({"type": "batch", "user": "u1", "events": [GPS]})
    assert reason_of(payload, topic_user="u9") == "wrong_user"
    assert len(decode(payload, topic_user="u1")) == 1


def test_batch_error_detail_says_which_event() -> None:
    with pytest.raises(DecodeError) as info:
        decode(dumps({"type": "batch", "user": "u1", "events": [GPS, GPS, dict(GPS, lat=95)]}))
    assert info.value.detail.startswith("events[2].lat")


def test_encode_batch_round_trips() -> None:
    evs = [Gps("u1", 1.0, 2.0, 3.0, 4.0), Wifi("u1", 2.0, [Ap("aa:bb:cc:dd:ee:ff", -40.0)])]
    assert decode(encode_batch("u1", evs)) == evs
    with pytest.raises(ValueError):
        encode_batch("u2", evs)


# --- OwnTracks -----------------------------------------------------------------------------------

# Expected outcome of every fixture in ../shared/data/formats/owntracks, decoded as if published to
# owntracks/user/device: a list of events, or the DecodeError reason.
G = "gps"
OWNTRACKS_EXPECTED: dict[str, list[str] | str] = {
    "card_message_with_face.json": "ignored_type",
    "card_message_with_tid.json": "ignored_type",
    "cmd_invalid_action.json": "ignored_type",
    "cmd_report_location.json": "ignored_type",
    "cmd_set_configuration.json": "ignored_type",
    "cmd_set_waypoints.json": "ignored_type",
    "cmd_status.json": "ignored_type",
    "configuration_message.json": "ignored_type",
    "encrypted_message.json": "unsupported_encrypted",
    # The MQTT topic names user and device, so a missing tid does not matter to us.
    "invalid_location_message_missing_tid_and_topic.json": [G],
    "invalid_location_message_zero_timestamp.json": "out_of_range",
    "location_beacon_trigger.json": [G],
    "location_deserialize_extended.json": [G],
    "location_empty.json": "missing_field",
    "location_encrypted_decrypted.json": [G],
    "location_multiple_messages.json": [G, G],
    "location_timer_trigger.json": [G],
    "location_with_created_at.json": [G, "wifi"],
    "transition_message.json": [G],
    "unknown_message.json": "unknown_type",
    "valid_card_message.json": "ignored_type",
    "valid_location_message.json": [G],
    "valid_location_message_with_topic.json": [G],
    "waypoint_message.json": "ignored_type",
}


def test_owntracks_table_covers_every_fixture(shared_data: Path) -> None:
    names = {p.name for p in (shared_data / "formats" / "owntracks").glob("*.json")}
    assert names == set(OWNTRACKS_EXPECTED)


@pytest.mark.parametrize("name", sorted(OWNTRACKS_EXPECTED))
def test_owntracks_fixture(shared_data: Path, name: str) -> None:
    payload = (shared_data / "formats" / "owntracks" / name).read_bytes()
    expected = OWNTRACKS_EXPECTED[name]
    if isinstance(expected, str):
        with pytest.raises(DecodeError) as info:
            decode_owntracks(payload, user="user", device="device")
        assert info.value.reason == expected
        return
    evs = decode_owntracks(payload, user="user", device="device")
    assert [event_type(e) for e in evs] == expected
    for ev in evs:
        assert ev.user == "user"
        assert decode(encode_event(ev)) == [ev]  # everything produced is valid on the wire


def test_owntracks_values(shared_data: Path) -> None:
    d = shared_data / "formats" / "owntracks"
    gps, wifi = decode_owntracks(
        (d / "location_with_created_at.json").read_bytes(), user="al", device="ph"
    )
    assert gps == Gps("al", 1709037003.0, 0.0, 51.0, 5.0)  # tst, not created_at
    assert wifi == Wifi("al", 1709037003.0, [Ap("00:13:10:85:fe:01", OWNTRACKS_CONNECTED_RSSI)])
    [t] = decode_owntracks((d / "transition_message.json").read_bytes(), user="al", device="ph")
    assert t == Gps("al", 1603209966.0, -1.61234123, 52.71234, 3.0)


def ot(**fields: Any) -> bytes:
    return dumps({"_type": "location", **fields})


def test_owntracks_quirks() -> None:
    # numeric strings and millisecond timestamps
    [g] = decode_owntracks(
        ot(lat="52.5", lon=" 13.4", acc="7", tst="1514455575000"), user="u", device="d"
    )
    assert g == Gps("u", 1514455575.0, 13.4, 52.5, 7.0)
    # missing acc -> documented default
    [g] = decode_owntracks(ot(lat=1, lon=2, tst=1514455575), user="u", device="d")
    assert g.acc == OWNTRACKS_DEFAULT_ACC_M  # type: ignore[union-attr]
    # transition without a position -> nothing
    assert (
        decode_owntracks(
            dumps({"_type": "transition", "event": "enter", "tst": 1514455575}),
            user="u",
            device="d",
        )
        == []
    )
    # beacon message, with and without rssi (0 = unknown on iOS)
    b = {
        "_type": "beacon",
        "uuid": "abc-def",
        "major": "3",
        "minor": 4,
        "tst": 1514455575,
        "rssi": -55,
    }
    assert decode_owntracks(dumps(b), user="u", device="d") == [
        Beacon("u", 1514455575.0, "ABC-DEF", 3, 4, -55.0)
    ]
    for rssi in (None, 0):
        [bb] = decode_owntracks(dumps(dict(b, rssi=rssi)), user="u", device="d")
        assert bb.rssi == OWNTRACKS_DEFAULT_BEACON_RSSI  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (ot(lat="north", lon=1, tst=1514455575), "invalid_field"),
        (ot(lat=True, lon=1, tst=1514455575), "invalid_field"),
        (ot(lat=91, lon=1, tst=1514455575), "out_of_range"),
        (ot(lat="nan", lon=1, tst=1514455575), "out_of_range"),
        (ot(lat=1, lon="inf", tst=1514455575), "out_of_range"),
        (ot(lat=1, tst=1514455575), "missing_field"),
        (ot(lat=1, lon=1), "missing_field"),
        (ot(lat=1, lon=1, tst=0), "out_of_range"),
        (ot(lat=1, lon=1, tst=1514455575, BSSID="zz"), "invalid_field"),
        (ot(lat=1, lon=1, tst=1514455575, topic="owntracks/mallory/phone"), "wrong_user"),
        (
            dumps({"_type": "beacon", "uuid": "a", "major": 1.5, "minor": 1, "tst": 1514455575}),
            "invalid_field",
        ),
        (
            dumps({"_type": "beacon", "uuid": "a", "major": 70000, "minor": 1, "tst": 1514455575}),
            "out_of_range",
        ),
        (dumps({"_type": "beacon", "major": 1, "minor": 1, "tst": 1514455575}), "missing_field"),
        (dumps({"_type": "lwt", "tst": 1514455575}), "ignored_type"),
        (dumps({"_type": "teleport"}), "unknown_type"),
        (b"[]", "empty_batch"),
        (b"[1]", "malformed_json"),
        (b"42", "malformed_json"),
        (b"{", "malformed_json"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), "too_large"),
    ],
)
def test_owntracks_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_owntracks(payload, user="u", device="d")
    assert info.value.reason == reason


def test_owntracks_topic_of_own_user_is_fine() -> None:
    [g] = decode_owntracks(
        ot(lat=1, lon=1, tst=1514455575, topic="owntracks/u/d"), user="u", device="d"
    )
    assert g.user == "u"


def test_bssid_cache_is_consistent_and_never_caches_bad_ones() -> None:
    msg = dumps(dict(WIFI, aps=[{"bssid": "AA-BB-CC-DD-EE-01", "rssi": -50}]))
    for _ in range(3):  # first call fills the cache, later ones hit it
        [ev] = decode(msg)
        assert ev.aps[0].bssid == "aa:bb:cc:dd:ee:01"  # type: ignore[union-attr]
    bad = dumps(
        dict(WIFI, aps=[{"bssid": "aa:bb:cc:dd:ee:01", "rssi": -50}, {"bssid": "xx", "rssi": -50}])
    )
    for _ in range(2):
        with pytest.raises(DecodeError) as info:
            decode(bad)
        assert info.value.detail.startswith("aps[1].bssid")


def test_bytes_like_payloads() -> None:
    raw = dumps(GPS)
    assert decode(bytearray(raw)) == decode(memoryview(raw)) == decode(raw)
    assert reason_of(bytes(bytearray(MAX_PAYLOAD_BYTES + 1))) == "too_large"
    assert reason_of(memoryview(bytes(MAX_PAYLOAD_BYTES + 1))) == "too_large"  # type: ignore[arg-type]
