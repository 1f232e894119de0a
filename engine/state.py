"""The engine's mutable state, as plain data, behind a small store interface.

The core (presence + decisions) reads and changes ``UserState`` records and global counters
through a ``StateStore``. Backends:

* ``MemoryStore`` (here): replay, tests, benchmarks.
* ``engine.stores.sqlite_store.SQLiteStore``: the daemon's durable default (a file, no server).
* a Redis store (scale-out, later).

Durability contract, which makes "no accepted event lost, no push repeated" possible:
the core processes a micro-batch of events against the store, then calls
``store.commit(outputs)``. A durable store writes every user record touched since the last commit,
the counters changed, and the outputs (the outbox) in ONE atomic transaction. Nothing the batch did
is visible after a crash unless the whole batch is. Outputs are then published from the outbox and
marked sent with ``store.mark_sent(ids)``; unsent outbox rows are re-published on restart, and
consumers dedupe by ``push_id`` / ``visit event id`` (deterministic), so a crash between publish
and mark_sent repeats a message with the same id, never a new decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import msgspec


class Visit(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True):
    """One open stay of one user in one store. (``gc=False``: it holds no reference back to
    anything that holds it, so it can never be part of a reference cycle.)"""

    visit_id: str
    store_id: str
    merchant_id: str
    enter_ts: float
    last_seen_ts: float  # last event time anything placed the user in the store
    signal: str  # strongest signal seen so far: "gps" | "wifi" | "beacon" | "nfc"
    dwell_fired: list[int] = msgspec.field(default_factory=list)  # dwell_s thresholds fired
    # Added by the core (issue 3): paid at this merchant before the visit began ("returning").
    returning: bool = False


class Offer(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True, array_like=True):
    """One push (or holdout decision) remembered in the user's record for redemption and
    attribution (engine/loop.py). Kept until its coupon expired and the attribution window
    after it (and after its redemption) passed; see ``engine.loop.record_offer``.

    Stored as an array (``array_like``: the field values in this order), not a map: a record
    is encoded and written at every commit that touches its user, and the field names were ~45%
    of a redeemed offer's bytes. Records written with offers as maps
    (before 2026-12-07 evening) still read back the same (``decode_user``). New fields go at the
    end, with defaults."""

    push_id: str
    campaign_id: str
    merchant_id: str
    ts: float  # decision time
    expires_ts: float  # the coupon's expiry (ts + expires_in_s)
    held_out: bool = False  # decided but not pushed (campaign holdout)
    redeemed_ts: float | None = None
    # request id of the redemption (a retry with it answers ok again); None for the default one,
    # ``{code}@{redeemed_ts!r}`` (engine.loop.redeem)
    redeem_req: str | None = None
    order_ts: float | None = None  # first attributed order
    order_value: float | None = None


class UserState(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True):
    """Everything the core knows about one user. Owned by the core; stores only persist it.

    Lean by design: a million-user replay creates a record for most users it sees, and most
    users never pay, get a push or see a beacon. The containers that only some users need are
    ``None`` until first written (the writers create them), so a new record is one small
    object instead of eight; ``visits`` is always a dict (the hot path reads it on every
    event). ``gc=False``: records never reference each other or themselves, so they can never
    be part of a reference cycle and the collector need not track them. ``omit_defaults``: the
    stored blob leaves out fields at their defaults (a typical record: 255 -> ~100 bytes; the
    daemon's commit encodes and writes one per touched user, ~25% less commit time measured);
    blobs written with every field still read back the same.
    """

    user: str
    last_ts: float = float("-inf")  # newest event time processed (out-of-order guard)
    last_fix: tuple[float, float, float] | None = None  # (lon, lat, ts) of last accepted GPS fix
    visits: dict[str, Visit] = msgspec.field(default_factory=dict)  # store_id -> open visit
    visit_seq: int = 0
    tags: list[str] | None = None
    opt_out: bool = False
    payments: dict[str, int] | None = None  # merchant_id -> count
    follows: list[str] | None = None  # merchant_ids
    push_times: dict[str, list[float]] | None = None  # campaign -> ts
    day_pushes: dict[str, int] | None = None  # "YYYY-MM-DD" -> count
    version: int = 0  # bumped on every commit; lets a shared store detect concurrent writers
    # Added by the core (issue 3), see engine/presence.py: the WiFi/near-field "claim" that
    # arbitrates overlapping fences, smoothed beacon RSSI per store, and the newest profile event.
    claim_store: str = ""
    claim_ts: float = float("-inf")
    claim_rank: int = -1
    claim_rssi: float = float("-inf")
    near: dict[str, list[float]] | None = None  # store -> [rssi, ts]
    profile_ts: float = float("-inf")
    # Added by the closing-the-loop issue (engine/loop.py): pushes and holdout decisions still
    # redeemable or attributable, by coupon code (pushes) or push_id (holdouts).
    offers: dict[str, Offer] | None = None


class Output(msgspec.Struct, kw_only=True, tag_field="kind"):
    """Base of what the core emits."""


_USER_ENCODER = msgspec.msgpack.Encoder()
_USER_DECODER = msgspec.msgpack.Decoder(UserState)


def encode_user(state: UserState) -> bytes:
    return _USER_ENCODER.encode(state)


def decode_user(blob: bytes) -> UserState:
    try:
        return _USER_DECODER.decode(blob)
    except msgspec.ValidationError:
        return _decode_map_offers(blob)


_OFFER_FIELDS: tuple[str, ...] = Offer.__struct_fields__
_OFFER_DEFAULTS: dict[str, object] = dict(
    zip(_OFFER_FIELDS[len(_OFFER_FIELDS) - len(Offer.__struct_defaults__) :], Offer.__struct_defaults__, strict=True)
)  # fmt: skip


def _decode_map_offers(blob: bytes) -> UserState:
    """A record written while offers were stored as maps (field name -> value): its offers as
    arrays, then decoded as usual. Anything else raises the original validation error."""
    raw = msgspec.msgpack.decode(blob)
    offers = raw.get("offers") if isinstance(raw, dict) else None
    if not isinstance(offers, dict) or not all(
        isinstance(o, dict) and all(f in o or f in _OFFER_DEFAULTS for f in _OFFER_FIELDS)
        for o in offers.values()
    ):
        return _USER_DECODER.decode(blob)  # (raises the error again)
    default = _OFFER_DEFAULTS.get
    raw["offers"] = {k: [o[f] if f in o else default(f) for f in _OFFER_FIELDS] for k, o in offers.items()}
    return _USER_DECODER.decode(msgspec.msgpack.encode(raw))


class StateStore(Protocol):
    """What the core needs from a state backend."""

    # True when every user record lives in this process for good (the same object on every
    # look-up, nothing to load): the core then skips loading hints and keeps record references.
    in_memory: bool

    def user(self, user: str) -> UserState:
        """The user's record, created empty if unknown. The core mutates it in place; the store
        remembers it as touched until the next commit."""
        ...

    def users(self, users: Iterable[str]) -> None:
        """Hint: load these users now (one round trip for a micro-batch). May be a no-op."""
        ...

    def inventory_left(self, campaign_id: str, total: int | None) -> int | None:
        """Coupons left for a campaign (None = unlimited). ``total`` seeds a new counter."""
        ...

    def take_coupon(self, campaign_id: str, total: int | None) -> bool:
        """Atomically take one coupon; False when none are left. Never goes below zero."""
        ...

    def seen_push(self, push_id: str) -> bool:
        """True when this push_id was already decided (replayed or redelivered decision)."""
        ...

    def commit(self, outputs: Sequence[Output]) -> None:
        """Persist touched users, counters, push ids and the outputs atomically (see module doc)."""
        ...


class _Records(dict[str, UserState]):
    """User records by user; a missing one is created empty on first look-up."""

    def __missing__(self, user: str) -> UserState:
        st = self[user] = UserState(user=user)
        return st


class MemoryStore:
    """All state in dicts. ``commit`` only records the outputs' push ids."""

    in_memory = True

    def __init__(self) -> None:
        self._users: dict[str, UserState] = _Records()
        self._inventory: dict[str, int] = {}
        self._push_ids: set[str] = set()
        # The core looks a user up on every event: bind the dict's own look-up (which creates
        # missing records through ``_Records.__missing__``) so no Python frame runs per hit;
        # not in a subclass that overrides ``user`` (the binding would hide its method).
        if type(self).user is MemoryStore.user:
            self.user = self._users.__getitem__  # type: ignore[method-assign,assignment]

    def user(self, user: str) -> UserState:
        """The user's record, created empty if unknown (by ``_Records.__missing__``). Shadowed
        per instance by the bound ``dict.__getitem__`` (see ``__init__``): same behaviour."""
        return self._users[user]

    def users(self, users: Iterable[str]) -> None:
        return None

    def inventory_left(self, campaign_id: str, total: int | None) -> int | None:
        if total is None:
            return None
        return self._inventory.setdefault(campaign_id, total)

    def take_coupon(self, campaign_id: str, total: int | None) -> bool:
        if total is None:
            return True
        left = self._inventory.setdefault(campaign_id, total)
        if left <= 0:
            return False
        self._inventory[campaign_id] = left - 1
        return True

    def seen_push(self, push_id: str) -> bool:
        return push_id in self._push_ids

    def commit(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            pid = getattr(out, "push_id", None)
            if pid is not None:
                self._push_ids.add(pid)

    # Introspection for tests and summaries.
    def all_users(self) -> dict[str, UserState]:
        return self._users

    def inventory(self) -> dict[str, int]:
        return dict(self._inventory)
