"""What the core emits: merchant visit events and coupon pushes.

Both are ``engine.state.Output`` subclasses (tagged union on ``"kind"``), so the outbox can store
them together. ``encode_output`` is the one JSON form used for MQTT payloads, the outbox and
replay's ``visits.jsonl`` / ``pushes.jsonl``: compact, ``kind`` first, then the fields in the fixed
declaration order below, so the same output always gives the same bytes (replay is byte for byte
reproducible). ``decode_output`` reads it back.

Each output has a stable ``out_id``, deterministic from the decision, that consumers and the
outbox deduplicate on:

* visit event: ``{visit_id}:{event}``, plus ``:{dwell_s}`` for a dwell (one dwell per threshold);
* push: its ``push_id``.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from engine.errors import DecodeError
from engine.state import Output

VisitEventKind: TypeAlias = Literal["enter", "dwell", "exit"]


class Coupon(msgspec.Struct, gc=False):
    """The offer a push carries (copied from the campaign at decision time)."""

    title: str
    value: float
    currency: str
    expires_in_s: int


class VisitEvent(Output, tag="visit", gc=False):
    """A merchant visit event: the user entered, dwelt in or left the store."""

    visit_id: str
    user: str
    store_id: str
    merchant_id: str
    event: VisitEventKind
    ts: float
    signal: str  # strongest signal of the visit so far: "gps" | "wifi" | "beacon" | "nfc"
    dwell_s: int | None = None  # the dwell threshold that fired (event == "dwell" only)
    # the user paid at this merchant before the visit began (a returning customer); else new
    returning: bool = False

    @property
    def out_id(self) -> str:
        if self.event == "dwell":
            return f"{self.visit_id}:dwell:{self.dwell_s}"
        return f"{self.visit_id}:{self.event}"


class Push(Output, tag="push", gc=False):
    """One coupon pushed to one user for one (visit, trigger)."""

    push_id: str
    user: str
    campaign_id: str
    store_id: str
    merchant_id: str
    visit_id: str
    trigger: str  # "enter" | "dwell" | "exit"
    ts: float
    coupon: Coupon

    @property
    def out_id(self) -> str:
        return self.push_id


AnyOutput: TypeAlias = VisitEvent | Push

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final[msgspec.json.Decoder[AnyOutput]] = msgspec.json.Decoder(AnyOutput)


def encode_output(o: Output) -> bytes:
    """Compact, byte-stable JSON: ``{"kind":..., fields in declaration order}``."""
    return _ENCODER.encode(o)


def decode_output(b: bytes | bytearray | memoryview | str) -> AnyOutput:
    """Read back what ``encode_output`` wrote; ``DecodeError`` (reason ``invalid_output``) else."""
    try:
        return _DECODER.decode(b)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise DecodeError("invalid_output", str(exc)) from exc


def out_id(o: Output) -> str:
    """The stable dedup id of any output."""
    if isinstance(o, VisitEvent | Push):
        return o.out_id
    raise TypeError(f"not a geopush output: {type(o).__name__}")
