"""Location events: the wire format, validated at the edge.

Every event is a msgspec ``Struct`` in a tagged union (tag field ``"type"``). msgspec was measured
the fastest validated JSON decoder here: about 0.3 µs per event for a Struct / tagged union,
against 0.9-1.1 µs for orjson plus hand checks and 1.6-1.9 µs for pydantic v2
(see ../shared/MEASUREMENTS.md). Ranges are ``msgspec.Meta`` constraints, so they are checked
inside the C decoder too; NaN and infinity can never pass (JSON has no NaN literal, and every
float field is bounded, so ``1e400`` -> inf is rejected as out of range).

Wire forms (one MQTT payload or one line of a trace):

* one event: ``{"type":"gps","user":U,"ts":T,...}`` (see the Struct classes below);
* a batch: ``{"type":"batch","user":U,"events":[...]}``. Inner events may omit ``user`` (they
  inherit the batch's) or repeat it; any other user rejects the whole batch (``wrong_user``).
  A batch is all or nothing: one bad inner event rejects it. Batches do not nest.

``decode`` raises ``engine.errors.DecodeError`` whose ``reason`` is one of ``REASONS``:

==================  ==========================================================================
too_large           payload over ``MAX_PAYLOAD_BYTES`` (64 KiB)
malformed_json      not JSON, not UTF-8, truncated, or not a JSON object
unknown_type        ``type`` is not one of the event types (or ``batch`` inside a batch)
missing_field       a required field is absent (``type`` included)
invalid_field       a field has the wrong JSON type, an empty/overlong string, or a bad BSSID
out_of_range        a number outside its range (table ``RANGES``), or a float overflowing to inf
wrong_user          the payload's user differs from the MQTT topic's user (or the batch's)
empty_batch         a batch with no events
too_deep            JSON nested deeper than the decoder can follow (an ignored extra field
                    nested ~1,000 levels raised ``RecursionError`` before)
==================  ==========================================================================

Normalisation on decode: BSSIDs to ``fences.store.bssid_key`` form (lower case, ``:``), which
must then be six hex octets; beacon UUIDs stripped and upper-cased, and 32 bare hex digits get
the canonical dashes (8-4-4-4-12) that store catalogs use. Unknown extra fields are
ignored (forward compatible). ``ts`` is epoch seconds (a float); millisecond timestamps are out of
range and the error says so.

OwnTracks messages (``owntracks/{user}/{device}``) go through ``decode_owntracks`` below; each
quirk and each fixture's outcome is documented in docs/events.md.

Build events with float values (``lon=24.9``, not ``24``) for byte-stable traces: ``encode_event``
writes an int as an int, and ``decode`` always returns floats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, TypeAlias, Union

import msgspec
from msgspec import Meta

from engine.errors import DecodeError
from fences.store import bssid_key

MAX_PAYLOAD_BYTES: Final = 65536

# Ranges, one place. Timestamps: epoch seconds after 1970 and before 2100-01-01.
TS_MAX: Final = 4102444800.0
RSSI_MIN: Final = -150.0
RSSI_MAX: Final = 0.0
ACC_MAX_M: Final = 100_000.0
AMOUNT_MAX: Final = 1e12
RANGES: Final[dict[str, tuple[float, float]]] = {
    "ts": (0.0, TS_MAX),  # exclusive at 0: a zero timestamp means "unset"
    "lon": (-180.0, 180.0),
    "lat": (-90.0, 90.0),
    "acc": (0.0, ACC_MAX_M),
    "rssi": (RSSI_MIN, RSSI_MAX),
    "major": (0, 65535),
    "minor": (0, 65535),
    "amount": (0.0, AMOUNT_MAX),
}

REASONS: Final = (
    "too_large",
    "malformed_json",
    "unknown_type",
    "missing_field",
    "invalid_field",
    "out_of_range",
    "wrong_user",
    "empty_batch",
    "too_deep",
)

Str: TypeAlias = Annotated[str, Meta(min_length=1, max_length=256)]
Ts: TypeAlias = Annotated[float, Meta(gt=0.0, le=TS_MAX)]
Lon: TypeAlias = Annotated[float, Meta(ge=-180.0, le=180.0)]
Lat: TypeAlias = Annotated[float, Meta(ge=-90.0, le=90.0)]
Acc: TypeAlias = Annotated[float, Meta(ge=0.0, le=ACC_MAX_M)]
Rssi: TypeAlias = Annotated[float, Meta(ge=RSSI_MIN, le=RSSI_MAX)]
U16: TypeAlias = Annotated[int, Meta(ge=0, le=65535)]
Amount: TypeAlias = Annotated[float, Meta(ge=0.0, le=AMOUNT_MAX)]
Tag: TypeAlias = Annotated[str, Meta(min_length=1, max_length=128)]

# gc=False: events hold no reference cycles; skipping GC tracking makes millions of them cheap.
_OPTS: Final[dict[str, Any]] = {"tag_field": "type", "gc": False}


class Ap(msgspec.Struct, gc=False):
    """One access point heard in a WiFi scan."""

    bssid: Str
    rssi: Rssi


class Gps(msgspec.Struct, tag="gps", **_OPTS):
    """A GPS fix: position in degrees (WGS84), accuracy radius in metres."""

    user: Str
    ts: Ts
    lon: Lon
    lat: Lat
    acc: Acc


class Wifi(msgspec.Struct, tag="wifi", **_OPTS):
    """A WiFi scan: the access points heard, each with its RSSI in dBm."""

    user: Str
    ts: Ts
    aps: list[Ap]


class Beacon(msgspec.Struct, tag="beacon", **_OPTS):
    """An iBeacon sighting (uuid/major/minor) at an RSSI in dBm."""

    user: Str
    ts: Ts
    uuid: Str
    major: U16
    minor: U16
    rssi: Rssi


class Nfc(msgspec.Struct, tag="nfc", **_OPTS):
    """An NFC tag tapped (the tag id as registered on the store)."""

    user: Str
    ts: Ts
    tag: Str


class Payment(msgspec.Struct, tag="payment", omit_defaults=True, **_OPTS):
    """A payment by the user at a merchant ("pay and follow"); ``code``: a coupon code the till
    took with it (redeems it, and attributes the payment to its push)."""

    user: Str
    ts: Ts
    merchant_id: Str
    amount: Amount
    code: Str | None = None


class Redeem(msgspec.Struct, tag="redeem", omit_defaults=True, **_OPTS):
    """A merchant's till asks to redeem a coupon code shown by the user (docs/events.md).
    ``request_id``: the till's id for the attempt; a retry with the same id gets the same
    answer (default: code and ts)."""

    user: Str
    ts: Ts
    merchant_id: Str
    code: Str
    request_id: Str | None = None


class ProfileEvent(msgspec.Struct, tag="profile", **_OPTS):
    """The user's profile: tags (replacing earlier ones) and the opt-out flag."""

    user: Str
    ts: Ts
    tags: list[Tag]
    opt_out: bool = False


Event: TypeAlias = Gps | Wifi | Beacon | Nfc | Payment | ProfileEvent | Redeem
EVENT_CLASSES: Final[tuple[type[Event], ...]] = (
    Gps, Wifi, Beacon, Nfc, Payment, ProfileEvent, Redeem
)
EVENT_TYPES: Final[dict[str, type[Event]]] = {
    str(c.__struct_config__.tag): c for c in EVENT_CLASSES
}
_TYPE_OF: Final[dict[type, str]] = {c: t for t, c in EVENT_TYPES.items()}


def event_type(ev: Event) -> str:
    """The event's wire ``type`` ("gps", "wifi", ...)."""
    return _TYPE_OF[type(ev)]


def event_user(ev: Event) -> str:
    return ev.user


# --- batches -------------------------------------------------------------------------------------
# Inside a batch, ``user`` is optional. Each public class gets a private twin with the same fields
# in the same order (``user`` defaulting to None, all keyword-only), so an inner event converts to
# the public class positionally from ``astuple`` without a dict.


def _inner_twin(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any, Any] | tuple[str, Any]] = []
    for f in msgspec.structs.fields(cls):
        if f.name == "user":
            fields.append(("user", Str | None, None))
        elif f.required:
            fields.append((f.name, f.type))
        else:
            fields.append((f.name, f.type, f.default))
    return msgspec.defstruct(
        f"Batched{cls.__name__}",
        fields,
        kw_only=True,
        tag=cls.__struct_config__.tag,
        tag_field="type",
        gc=False,
        module=__name__,
    )


_TWINS: Final[dict[type[msgspec.Struct], type[Event]]] = {_inner_twin(c): c for c in EVENT_CLASSES}
# A Union of the twins, built at import time (mypy cannot follow it; the decoder can).
_InnerUnion: Any = Union[tuple(_TWINS)]  # noqa: UP007
Batch: Final[type[msgspec.Struct]] = msgspec.defstruct(
    "Batch",
    [("user", Str), ("events", list[_InnerUnion])],
    tag="batch",
    tag_field="type",
    gc=False,
    module=__name__,
)


# --- decoding -----------------------------------------------------------------------------------

_DECODER: Final = msgspec.json.Decoder(Union[(*EVENT_CLASSES, Batch)])  # noqa: UP007
_ENCODER: Final = msgspec.json.Encoder()
_MAC_RE = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_MAC: Final = re.compile(_MAC_RE)
_HEX32: Final = re.compile(r"[0-9A-F]{32}")

Payload: TypeAlias = bytes | bytearray | memoryview


def decode(payload: Payload, *, topic_user: str | None = None) -> list[Event]:
    """Decode one wire message (an event or a batch) into events, validated and normalised.

    ``topic_user``: the user named by the MQTT topic; the payload must speak for that user only.
    Raises ``DecodeError`` with a ``reason`` from ``REASONS``.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        obj = _DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise _translate(exc) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError("malformed_json", str(exc)) from exc
    except RecursionError as exc:
        raise _too_deep(exc) from exc
    cls = type(obj)
    if cls is Batch:
        return _flatten(obj, topic_user)
    ev: Event = obj
    if topic_user is not None and ev.user != topic_user:
        raise DecodeError("wrong_user", f"payload user {ev.user!r} != topic user {topic_user!r}")
    fin = _FINISH.get(cls)
    if fin is not None:
        fin(ev, "")
    return [ev]


def _too_deep(exc: RecursionError) -> DecodeError:
    """msgspec follows nesting (even inside an ignored extra field) on the C stack, bounded by
    Python's recursion limit: ~1,000 levels of ``[`` or ``{"a":`` (2-4 KB) end in RecursionError."""
    return DecodeError(
        "too_deep", f"JSON nested too deeply ({exc}): a valid message nests 5 levels at most"
    )


def _flatten(batch: Any, topic_user: str | None) -> list[Event]:
    user: str = batch.user
    if topic_user is not None and user != topic_user:
        raise DecodeError("wrong_user", f"batch user {user!r} != topic user {topic_user!r}")
    if not batch.events:
        raise DecodeError("empty_batch", "a batch needs at least one event")
    out: list[Event] = []
    astuple = msgspec.structs.astuple
    for i, inner in enumerate(batch.events):
        vals = astuple(inner)
        u = vals[0]
        if u is None:
            vals = (user, *vals[1:])
        elif u != user:
            raise DecodeError("wrong_user", f"events[{i}].user {u!r} != batch user {user!r}")
        cls = _TWINS[type(inner)]
        ev = cls(*vals)
        fin = _FINISH.get(cls)
        if fin is not None:
            fin(ev, f"events[{i}].")
        out.append(ev)
    return out


# Normalised BSSIDs by raw spelling. The same access points are heard over and over, so a dict
# hit replaces the regex on the hot path; bounded so hostile input cannot grow it without limit.
_BSSID_CACHE: dict[str, str] = {}
_BSSID_CACHE_MAX: Final = 1 << 20


def _finish_wifi(ev: Any, where: str) -> None:
    cache = _BSSID_CACHE
    for ap in ev.aps:
        b = ap.bssid
        n = cache.get(b)
        if n is None:
            n = bssid_key(b)
            if _MAC.fullmatch(n) is None:
                i = ev.aps.index(ap)
                raise DecodeError(
                    "invalid_field", f"{where}aps[{i}].bssid: {b!r} is not a MAC address"
                )
            if len(cache) >= _BSSID_CACHE_MAX:
                cache.clear()
            cache[b] = n
        ap.bssid = n


def _finish_beacon(ev: Any, where: str) -> None:
    u = ev.uuid.strip().upper()
    if not u:
        raise DecodeError("invalid_field", f"{where}uuid: empty")
    if len(u) == 32 and _HEX32.fullmatch(u) is not None:
        # Some scanners print the UUID without dashes; catalogs hold the canonical 8-4-4-4-12.
        u = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
    ev.uuid = u


_FINISH: Final[dict[type, Callable[[Any, str], None]]] = {
    Wifi: _finish_wifi,
    Beacon: _finish_beacon,
}

_MISSING = re.compile(r"Object missing required field `([^`]*)`(?: - at `\$\.?(.*)`)?")
_AT = re.compile(r"(.*) - at `\$\.?(.*)`")
_RANGE = re.compile(r"Expected `\w+` (?:>=|<=|>|<) |Number out of range")


def _translate(exc: msgspec.ValidationError) -> DecodeError:
    """A msgspec validation message -> (reason, "field: message")."""
    msg = str(exc)
    m = _MISSING.fullmatch(msg)
    if m:
        where = f"{m.group(2)}." if m.group(2) else ""
        return DecodeError("missing_field", f"{where}{m.group(1)}")
    m = _AT.fullmatch(msg)
    text, path = (m.group(1), m.group(2)) if m else (msg, "")
    if path == "type" or path.endswith(".type"):
        return DecodeError("unknown_type", f"{path}: {text} (expected one of {_TYPE_LIST})")
    if _RANGE.match(text):
        hint = ""
        if path.endswith("ts"):
            hint = " (ts is epoch seconds, not milliseconds)"
        return DecodeError("out_of_range", f"{path}: {text}{hint}")
    if not path and text.startswith("Expected `object`"):
        return DecodeError("malformed_json", f"{text}: a message is one JSON object")
    return DecodeError("invalid_field", f"{path}: {text}" if path else text)


_TYPE_LIST: Final = ", ".join([*EVENT_TYPES, "batch"])


# --- encoding -----------------------------------------------------------------------------------


def encode_event(ev: Event) -> bytes:
    """The canonical wire JSON of one event: ``type`` first, then fields in declaration order.
    Byte-stable: the same event always gives the same bytes, and ``decode`` returns it equal."""
    return _ENCODER.encode(ev)


def encode_batch(user: str, events: Sequence[Event]) -> bytes:
    """A batch message whose inner events carry their user (all must be ``user``)."""
    for ev in events:
        if ev.user != user:
            raise ValueError(f"event user {ev.user!r} != batch user {user!r}")
    return _ENCODER.encode(Batch(user, list(events)))


# --- OwnTracks ----------------------------------------------------------------------------------
# OwnTracks phones publish to owntracks/{user}/{device}. The topic names the user and the device,
# so ``tid`` (a display label) is not needed. Quirks handled (fixtures in
# ../shared/data/formats/owntracks, outcomes in docs/events.md):
#   * numbers sent as strings ("52.1", "1514455575") are accepted;
#   * ``tst`` > 1e11 is milliseconds and is divided by 1000; ``tst`` 0 or absent is rejected;
#   * ``acc`` absent -> OWNTRACKS_DEFAULT_ACC_M (unknown accuracy: at the store's default
#     max_accuracy_m, so such a fix can place a user only in a permissive fence);
#   * a location with ``BSSID`` (the AP the phone is connected to) also yields a Wifi scan with
#     that single AP at OWNTRACKS_CONNECTED_RSSI (no RSSI is sent; being associated means strong);
#   * a JSON array of messages (HTTP mode) is accepted, all or nothing like a batch.

OWNTRACKS_DEFAULT_ACC_M: Final = 100.0
OWNTRACKS_CONNECTED_RSSI: Final = -60.0  # above the default -75 dBm WiFi presence threshold
OWNTRACKS_DEFAULT_BEACON_RSSI: Final = -70.0  # beacon message without rssi (or iOS's 0 = unknown)
OWNTRACKS_IGNORED: Final = frozenset(
    {
        "cmd",
        "card",
        "waypoint",
        "waypoints",
        "configuration",
        "lwt",
        "status",
        "steps",
        "request",
        "dump",
    }
)
OWNTRACKS_REASONS: Final = (*REASONS, "unsupported_encrypted", "ignored_type")


def decode_owntracks(payload: Payload, *, user: str, device: str) -> list[Event]:
    """Decode an OwnTracks message from ``owntracks/{user}/{device}`` into events.

    ``location`` -> Gps (+ Wifi when it names a BSSID); ``transition`` -> Gps at its position, or
    no event when it carries none; ``beacon`` -> Beacon. Raises ``DecodeError``: reasons of
    ``decode`` plus ``unsupported_encrypted`` (``_type: encrypted``; we hold no keys) and
    ``ignored_type`` (cmd, card, waypoint(s), configuration, lwt, status, steps, ...: valid
    OwnTracks traffic that carries no location, rejected so the daemon can count it).
    ``device`` is part of the signature for the daemon's logs and future per-device rules; the
    events do not carry it (presence is per user).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        obj = msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError("malformed_json", str(exc)) from exc
    except RecursionError as exc:
        raise _too_deep(exc) from exc
    if isinstance(obj, list):
        if not obj:
            raise DecodeError("empty_batch", "an empty array of OwnTracks messages")
        out: list[Event] = []
        for i, msg in enumerate(obj):
            try:
                out.extend(_owntracks_one(msg, user))
            except DecodeError as exc:
                raise DecodeError(exc.reason, f"[{i}] {exc.detail}") from exc
        return out
    return _owntracks_one(obj, user)


def _owntracks_one(msg: object, user: str) -> list[Event]:
    if not isinstance(msg, dict):
        raise DecodeError("malformed_json", "an OwnTracks message is a JSON object")
    kind = msg.get("_type")
    if not isinstance(kind, str):
        raise DecodeError("unknown_type", "no _type string: not an OwnTracks message")
    if kind == "encrypted":
        raise DecodeError("unsupported_encrypted", "encrypted OwnTracks payloads are not supported")
    if kind in OWNTRACKS_IGNORED:
        raise DecodeError("ignored_type", f"OwnTracks _type {kind!r} carries no location")
    if kind not in ("location", "transition", "beacon"):
        raise DecodeError("unknown_type", f"OwnTracks _type {kind!r}")
    topic = msg.get("topic")
    if isinstance(topic, str):
        parts = topic.split("/")
        if len(parts) >= 3 and parts[-2] != user:
            raise DecodeError("wrong_user", f"topic {topic!r} names another user than {user!r}")
    ts = _ot_ts(msg)
    if kind == "beacon":
        if msg.get("uuid") is None:
            raise DecodeError("missing_field", "uuid")
        rssi = _ot_num(msg, "rssi", OWNTRACKS_DEFAULT_BEACON_RSSI) or OWNTRACKS_DEFAULT_BEACON_RSSI
        return [
            event_from_dict(
                {
                    "type": "beacon",
                    "user": user,
                    "ts": ts,
                    "uuid": msg.get("uuid"),
                    "major": _ot_int(msg, "major"),
                    "minor": _ot_int(msg, "minor"),
                    "rssi": rssi,
                }
            )
        ]
    if kind == "transition" and ("lat" not in msg or "lon" not in msg):
        return []  # a region enter/leave without a position places nobody anywhere
    gps = event_from_dict(
        {
            "type": "gps",
            "user": user,
            "ts": ts,
            "lon": _ot_num(msg, "lon"),
            "lat": _ot_num(msg, "lat"),
            "acc": _ot_num(msg, "acc", OWNTRACKS_DEFAULT_ACC_M),
        }
    )
    bssid = msg.get("BSSID") if kind == "location" else None
    if not bssid:
        return [gps]
    wifi = event_from_dict(
        {
            "type": "wifi",
            "user": user,
            "ts": ts,
            "aps": [{"bssid": bssid, "rssi": OWNTRACKS_CONNECTED_RSSI}],
        }
    )
    return [gps, wifi]


def event_from_dict(fields: dict[str, Any]) -> Event:
    """Validate and normalise an event given as a dict with ``type`` (as the wire JSON would be
    decoded): same ranges, reasons and normalisation as ``decode``. For importers and tools."""
    cls = EVENT_TYPES.get(fields.get("type"))  # type: ignore[arg-type]
    if cls is None:
        if "type" not in fields:
            raise DecodeError("missing_field", "type")
        raise DecodeError(
            "unknown_type", f"type: {fields['type']!r} (expected one of {_TYPE_LIST})"
        )
    try:
        # convert() to one concrete class: a Union target is ~25x slower (no cached plan).
        ev: Event = msgspec.convert(fields, cls)
    except msgspec.ValidationError as exc:
        raise _translate(exc) from exc
    fin = _FINISH.get(type(ev))
    if fin is not None:
        fin(ev, "")
    return ev


def _ot_ts(msg: dict[str, Any]) -> float:
    if "tst" not in msg:
        raise DecodeError("missing_field", "tst")
    tst = _ot_num(msg, "tst")
    if tst == 0:
        raise DecodeError("out_of_range", "tst: 0 (unset timestamp)")
    return tst / 1000.0 if tst > 1e11 else tst  # milliseconds, as some apps and waypoints send


def _ot_num(msg: dict[str, Any], key: str, default: float | None = None) -> float:
    """A number that may arrive as a JSON number or a numeric string."""
    v = msg.get(key)
    if v is None:
        if default is None:
            raise DecodeError("missing_field", key)
        return default
    if isinstance(v, bool):
        raise DecodeError("invalid_field", f"{key}: expected a number, got a boolean")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            pass
    raise DecodeError("invalid_field", f"{key}: expected a number, got {v!r}")


def _ot_int(msg: dict[str, Any], key: str) -> int:
    v = _ot_num(msg, key)
    if v != v or v in (float("inf"), float("-inf")) or v != int(v):
        raise DecodeError("invalid_field", f"{key}: expected an integer, got {msg.get(key)!r}")
    return int(v)


# --- micro-benchmark (python -m engine.events) --------------------------------------------------


def bench(n: int = 100_000) -> list[tuple[str, float, float]]:
    """(operation, µs per event, ratio to the bare msgspec decode) — best of 5 repeats."""
    import timeit

    user = "user-123456"
    gps = Gps(user, 1700000000.5, 24.9384, 60.1699, 12.0)
    p_gps = encode_event(gps)
    aps = [Ap(f"aa:bb:cc:dd:ee:{i:02x}", -60.0) for i in range(5)]
    p_wifi = encode_event(Wifi(user, 1700000000.5, aps))
    batch = [Gps(user, 1700000000.5 + i, 24.9384, 60.1699, 12.0) for i in range(50)]
    p_batch = encode_batch(user, batch)
    p_ot = b'{"_type":"location","tst":1700000000,"lat":60.1,"lon":24.9,"acc":5,"tid":"xx"}'
    bare: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)

    def best(fn: Callable[[], object], number: int, per: int = 1) -> float:
        return min(timeit.repeat(fn, number=number, repeat=5)) / number / per * 1e6

    rows = [
        ("bare msgspec.json.Decoder(Event), gps (baseline)", best(lambda: bare.decode(p_gps), n)),
        ("decode(gps)", best(lambda: decode(p_gps), n)),
        ("decode(gps, topic_user=...)", best(lambda: decode(p_gps, topic_user=user), n)),
        ("decode(wifi, 5 APs)", best(lambda: decode(p_wifi), n // 2)),
        ("decode(batch of 50 gps), per event", best(lambda: decode(p_batch), n // 50, 50)),
        ("encode_event(gps)", best(lambda: encode_event(gps), n)),
        (
            "decode_owntracks(location)",
            best(lambda: decode_owntracks(p_ot, user="u", device="d"), n // 10),
        ),
    ]
    base = rows[0][1]
    return [(name, us, us / base) for name, us in rows]


if __name__ == "__main__":
    for name, us, ratio in bench():
        print(f"| {name} | {us:.2f} | {ratio:.1f}x |")
