"""What the core emits: merchant visit events and coupon pushes, and (closing the loop,
engine/loop.py) holdout decisions, redemption answers and attributed orders.

Both are ``engine.state.Output`` subclasses (tagged union on ``"kind"``), so the outbox can store
them together. ``encode_output`` is the one JSON form used for MQTT payloads, the outbox and
replay's ``visits.jsonl`` / ``pushes.jsonl``: compact, ``kind`` first, then the fields in the fixed
declaration order below, so the same output always gives the same bytes (replay is byte for byte
reproducible). ``decode_output`` reads it back.

Each output has a stable ``out_id``, deterministic from the decision, that consumers and the
outbox deduplicate on:

* visit event: ``{visit_id}:{event}``, plus ``:{dwell_s}`` for a dwell (one dwell per threshold);
* push and holdout: its ``push_id``;
* redemption answer: ``redeem:{user}:{code}:{request_id}``;
* order: ``order:{user}:{merchant_id}:{ts}:{push_ref}``.

Only pushes and holdouts have a ``push_id`` (stores record every output's ``push_id`` as a
decision made); answers and orders name their push by ``push_ref``.
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
    returning: bool = False  # the user had paid at the merchant before the visit began

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
    code: str = ""  # the coupon code to redeem (engine/loop.py); "" in outputs of older versions

    @property
    def out_id(self) -> str:
        return self.push_id


class Holdout(Output, tag="holdout", gc=False):
    """A decision a campaign's holdout kept back: the push that would have been sent, not sent
    (no caps, no inventory spent). Same ``push_id`` as the push would have had."""

    push_id: str
    user: str
    campaign_id: str
    store_id: str
    merchant_id: str
    visit_id: str
    trigger: str
    ts: float

    @property
    def out_id(self) -> str:
        return self.push_id


RedeemStatus: TypeAlias = Literal[
    "ok", "invalid_code", "not_found", "other_merchant", "expired", "already_redeemed"
]


class RedeemResult(Output, tag="redeem", gc=False):
    """The answer to a ``redeem`` event (or a payment carrying a code)."""

    request_id: str
    user: str
    merchant_id: str  # the merchant that asked
    code: str  # as normalised (upper case, no separators)
    ts: float
    status: RedeemStatus
    push_ref: str | None = None  # push_id of the code's push (None: invalid_code, not_found)
    campaign_id: str | None = None

    @property
    def out_id(self) -> str:
        return f"redeem:{self.user}:{self.code}:{self.request_id}"


class Order(Output, tag="order", gc=False):
    """A payment attributed to a push (or, for lift, to a holdout decision): engine/loop.py."""

    user: str
    merchant_id: str
    ts: float
    amount: float
    push_ref: str  # push_id of the push (or holdout decision) the payment is attributed to
    campaign_id: str
    held_out: bool  # attributed to a holdout decision (counterfactual), not to a push
    via: str  # "code" | "redeemed" | "window"
    first: bool  # the push's first attributed order
    new_customer: bool  # the user's first payment ever at the merchant
    new_follower: bool  # the payment made the user a follower ("pay and follow")

    @property
    def out_id(self) -> str:
        return f"order:{self.user}:{self.merchant_id}:{self.ts!r}:{self.push_ref}"


AnyOutput: TypeAlias = VisitEvent | Push | Holdout | RedeemResult | Order

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
    if isinstance(o, VisitEvent | Push | Holdout | RedeemResult | Order):
        return o.out_id
    raise TypeError(f"not a geopush output: {type(o).__name__}")
