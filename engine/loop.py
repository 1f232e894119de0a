"""Closing the loop: coupon codes, redemptions, attribution of payments, holdout buckets.

Plain functions over a ``UserState`` (no I/O); the core calls them (engine/core.py), the report
reads what they emit (engine/report.py). Rules, in docs/architecture.md ("Closing the loop"):

* **Codes.** A push's code is keyed BLAKE2b of the push id (``blake2b(push_id, key=secret)``, a
  MAC by design, RFC 7693; ~2x cheaper here than HMAC-SHA256): its first 50 bits as 10 Crockford
  base32 characters, then one Luhn mod 32 check character (11 characters, e.g. ``7MZ4K0Q2XH-R``
  shown with a dash, typed in any case; I/L read as 1 and O as 0). Unguessable without the
  secret (a random guess hits one given push with probability 2^-50), and a typo is caught by
  the check character before any look-up (``invalid_code``): any one wrong character, and any
  swap of two neighbours except "0Z" <-> "Z0".
* **Where a code is resolved.** The till publishes the ``redeem`` event on the user's events topic,
  so the user's state owner (the one worker that owns the user, exactly as for pushes) decides it
  against the user's ``offers`` (code -> ``Offer``): one dict look-up, no scan, and the answer
  commits atomically with the user record, so a redemption happens exactly once across crashes
  and workers.
* **Attribution.** A payment at merchant M is attributed to: the push whose code it carries (when
  that code is M's and valid or redeemed); else M's latest redeemed offer not yet attributed,
  redeemed within the window before the payment; else M's latest offer (a push, or a holdout
  decision, so that both arms of a lift are measured alike) decided within the window before it.
"""

from __future__ import annotations

import hashlib
from typing import Final

from engine.outputs import Holdout, Order, Push, RedeemResult, RedeemStatus
from engine.state import Offer, UserState

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_DATA_CHARS: Final = 10  # 50 bits of the MAC
CODE_LEN: Final = CODE_DATA_CHARS + 1
DEFAULT_REPLAY_SECRET: Final = "geopush-replay-not-secret"
ATTRIBUTION_WINDOW_S: Final = 7 * 86400.0
_VALUE: Final = {c: i for i, c in enumerate(ALPHABET)}
_VALUE.update({"I": 1, "L": 1, "O": 0})
for _c in list(_VALUE):
    _VALUE[_c.lower()] = _VALUE[_c]


def _luhn32(values: list[int]) -> int:
    """Luhn mod 32 check value: detects every single-character error and every transposition
    of two adjacent characters but one ("0Z" <-> "Z0", as decimal Luhn misses "09" <-> "90")."""
    total = 0
    factor = 2
    for v in reversed(values):
        a = factor * v
        total += a // 32 + a % 32
        factor = 1 if factor == 2 else 2
    return (32 - total % 32) % 32


def coupon_code(secret: bytes, push_id: str) -> str:
    """The push's coupon code (11 characters, canonical: upper case, no dash)."""
    mac = hashlib.blake2b(push_id.encode(), key=secret, digest_size=8).digest()  # keyed: a MAC
    n = int.from_bytes(mac, "big") >> 14  # the first 50 bits
    # five 10-bit pairs of characters, each with its share of the Luhn sum (tables below)
    p0 = _PAIRS[n >> 40]
    p1 = _PAIRS[(n >> 30) & 1023]
    p2 = _PAIRS[(n >> 20) & 1023]
    p3 = _PAIRS[(n >> 10) & 1023]
    p4 = _PAIRS[n & 1023]
    total = p0[1] + p1[1] + p2[1] + p3[1] + p4[1]
    return p0[0] + p1[0] + p2[0] + p3[0] + p4[0] + ALPHABET[(32 - total % 32) % 32]


def _pair(v: int) -> tuple[str, int]:
    """Characters of the 10-bit value ``v`` and their share of the Luhn mod 32 sum. With 10 data
    characters the factors from the right are 2, 1, 2, 1, ...: 1 on the first of a pair, 2 on
    the second."""
    a, b = v >> 5, v & 31
    return ALPHABET[a] + ALPHABET[b], a + (2 * b) // 32 + (2 * b) % 32


_PAIRS: Final = tuple(_pair(v) for v in range(1024))
_PAIR_SHARE: Final = {chars: share for chars, share in _PAIRS}  # canonical pair -> Luhn share
_CANONICAL: Final = {c: i for i, c in enumerate(ALPHABET)}


def display_code(code: str) -> str:
    """``XXXXXXXXXX-C``: the code as shown to people (the dash is optional when typed)."""
    return f"{code[:CODE_DATA_CHARS]}-{code[CODE_DATA_CHARS:]}"


def normalise_code(text: str) -> str | None:
    """The canonical code typed as ``text`` (any case, dashes and spaces ignored, I/L -> 1,
    O -> 0), or None when it is not a well-formed code (wrong length, a foreign character or a
    failing check character)."""
    if len(text) == CODE_LEN:
        # The common case, a code as the engine wrote it (a till scanning the QR code, a wallet
        # passing it on): five canonical pairs, each with its share of the check sum, and the
        # check character; ~5x cheaper than the character loop below, same answers.
        shares = _PAIR_SHARE
        p0 = shares.get(text[0:2])
        p1 = shares.get(text[2:4])
        p2 = shares.get(text[4:6])
        p3 = shares.get(text[6:8])
        p4 = shares.get(text[8:10])
        last = _CANONICAL.get(text[10])
        if p0 is not None and p1 is not None and p2 is not None and p3 is not None and p4 is not None and last is not None:  # fmt: skip
            total = p0 + p1 + p2 + p3 + p4
            return text if (32 - total % 32) % 32 == last else None
    return _normalise_typed(text)


def _normalise_typed(text: str) -> str | None:
    """``normalise_code`` for any spelling: character by character."""
    vals: list[int] = []
    for ch in text:
        if ch in "- ":
            continue
        v = _VALUE.get(ch)
        if v is None:
            return None
        vals.append(v)
    if len(vals) != CODE_LEN or _luhn32(vals[:-1]) != vals[-1]:
        return None
    return "".join(ALPHABET[v] for v in vals)


def secret_bytes(secret: str) -> bytes:
    """The MAC key of a coupon secret: its UTF-8 bytes (a BLAKE2b key holds at most 64 bytes; a
    longer secret is hashed down to 64)."""
    raw = secret.encode("utf-8")
    return raw if len(raw) <= 64 else hashlib.blake2b(raw).digest()


# --- holdouts -------------------------------------------------------------------------------------


def holdout_bucket(user: str, campaign_id: str) -> float:
    """A uniform number in [0, 1) fixed by (user, campaign): the user is held out of the
    campaign when it is below ``holdout_pct / 100``. No secret: anyone can recompute it."""
    h = hashlib.blake2b(f"{user}\x1f{campaign_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 18446744073709551616.0


def in_holdout(user: str, campaign_id: str, holdout_pct: float) -> bool:
    return holdout_pct > 0.0 and holdout_bucket(user, campaign_id) * 100.0 < holdout_pct


# --- records --------------------------------------------------------------------------------------


PRUNE_AT: Final = 8  # offers in a record before stale ones are looked for
REDEEMED_KEEP_S: Final = 90 * 86400.0  # how long a redeemed code still answers already_redeemed


def _keep_until(o: Offer, window_s: float) -> float:
    """Until when an offer is kept: an unredeemed one while it can be redeemed or attributed
    (afterwards its code answers ``not_found``, no longer ``expired``); a redeemed one for
    ``REDEEMED_KEEP_S`` (or the window) after its redemption, so that a code used twice keeps
    answering ``already_redeemed``."""
    r = o.redeemed_ts
    if r is not None:
        return r + max(window_s, REDEEMED_KEEP_S)
    return max(o.ts + window_s, o.expires_ts)


def record_offer(st: UserState, out: Push | Holdout, expires_in_s: float, window_s: float) -> None:
    """Remember a push (by its code) or a holdout decision (by its push_id) in the user's record.
    Once the record holds ``PRUNE_AT`` offers, those that can no longer change (``_keep_until``
    passed) are forgotten: a record never holds more than that many stale ones, and the common
    case (a user with a few offers) pays no scan."""
    held = type(out) is Holdout
    key = out.push_id if held else out.code  # type: ignore[union-attr]
    offers = st.offers
    if offers is None:
        offers = st.offers = {}
    elif len(offers) >= PRUNE_AT:
        now = out.ts
        for k in [k for k, o in offers.items() if _keep_until(o, window_s) < now]:
            del offers[k]
    offers[key] = Offer(
        push_id=out.push_id,
        campaign_id=out.campaign_id,
        merchant_id=out.merchant_id,
        ts=out.ts,
        expires_ts=out.ts + expires_in_s,
        held_out=held,
    )


def redeem(
    st: UserState, merchant_id: str, code_text: str, ts: float, request_id: str | None
) -> RedeemResult:
    """Check and (when ok) redeem a code for the user; the answer says which.

    Order of checks: well-formed (``invalid_code``), the user's push (``not_found``; holdout
    decisions have no code), this merchant's (``other_merchant``), not redeemed before
    (``already_redeemed``; a retry with the redemption's own request id answers ``ok`` again),
    not expired at ``ts`` (``expired``: ``ts`` past the push's ts + ``expires_in_s``)."""
    code = normalise_code(code_text)
    req = request_id if request_id is not None else f"{code or code_text}@{ts!r}"
    status: RedeemStatus
    o = None
    if code is None:
        status = "invalid_code"
    else:
        o = st.offers.get(code) if st.offers is not None else None
        if o is None or o.held_out:
            o = None
            status = "not_found"
        elif o.merchant_id != merchant_id:
            status = "other_merchant"
        elif o.redeemed_ts is not None:
            first = o.redeem_req if o.redeem_req is not None else f"{code}@{o.redeemed_ts!r}"
            status = "ok" if first == req else "already_redeemed"
        elif ts > o.expires_ts:
            status = "expired"
        else:
            status = "ok"
            o.redeemed_ts = ts
            # the default request id is not stored (the record stays smaller): it is derived
            o.redeem_req = None if req == f"{code}@{ts!r}" else req
    return RedeemResult(
        request_id=req,
        user=st.user,
        merchant_id=merchant_id,
        code=code if code is not None else code_text[:64],
        ts=ts,
        status=status,
        push_ref=o.push_id if o is not None else None,
        campaign_id=o.campaign_id if o is not None else None,
    )


def attribute(
    st: UserState,
    merchant_id: str,
    ts: float,
    amount: float,
    code: str | None,
    window_s: float,
    new_customer: bool,
    new_follower: bool,
) -> Order | None:
    """The attributed order for a payment, or None (rules in the module docstring). Records the
    first attributed order on the offer."""
    offers = st.offers
    if not offers:
        return None
    best: Offer | None = None
    via = ""
    if code is not None:
        o = offers.get(code)
        if o is not None and not o.held_out and o.merchant_id == merchant_id and o.redeemed_ts is not None:
            best, via = o, "code"
    if best is None:
        lo = ts - window_s
        redeemed: Offer | None = None
        latest: Offer | None = None
        for o in offers.values():
            if o.merchant_id != merchant_id:
                continue
            r = o.redeemed_ts
            if (
                r is not None
                and o.order_ts is None
                and lo <= r <= ts
                and (redeemed is None or (r, o.push_id) > (redeemed.redeemed_ts, redeemed.push_id))
            ):
                redeemed = o
            if lo <= o.ts <= ts and (latest is None or (o.ts, o.push_id) > (latest.ts, latest.push_id)):
                latest = o
        if redeemed is not None:
            best, via = redeemed, "redeemed"
        elif latest is not None:
            best, via = latest, "window"
    if best is None:
        return None
    first = best.order_ts is None
    if first:
        best.order_ts = ts
        best.order_value = amount
    return Order(
        user=st.user,
        merchant_id=merchant_id,
        ts=ts,
        amount=amount,
        push_ref=best.push_id,
        campaign_id=best.campaign_id,
        held_out=best.held_out,
        via=via,
        first=first,
        new_customer=new_customer,
        new_follower=new_follower,
    )
