"""Closing the loop: coupon codes, redemptions, attribution (against a brute-force oracle),
holdouts, and the user record that holds them."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
from _corekit import T0, World, campaign, campaigns, circle, gps, pay
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import loop
from engine.core import CoreConfig
from engine.decisions import decide, push_id_for
from engine.errors import CampaignError, DecodeError
from engine.events import Payment, Redeem, decode, encode_event
from engine.outputs import Coupon, Holdout, Order, Push, RedeemResult
from engine.state import MemoryStore, UserState, Visit, decode_user, encode_user

SECRET = b"test-secret"

# --- codes ---------------------------------------------------------------------------------------


def test_code_format_and_normalisation() -> None:
    code = loop.coupon_code(SECRET, "p1")
    assert len(code) == loop.CODE_LEN == 11
    assert set(code) <= set(loop.ALPHABET)
    assert loop.normalise_code(code) == code
    shown = loop.display_code(code)
    assert shown[10] == "-"
    assert loop.normalise_code(shown.lower()) == code
    # I and L read as 1, O as 0 (Crockford): a code with 1 or 0 typed with the look-alikes
    typed = code.replace("1", "l").replace("0", "O")
    assert loop.normalise_code(typed) == code
    for bad in ("", code[:-1], code + "0", code[:5] + "U" + code[6:], code[:5] + "!" + code[6:]):
        assert loop.normalise_code(bad) is None


def test_codes_depend_on_the_secret_and_do_not_collide() -> None:
    assert loop.coupon_code(SECRET, "p1") != loop.coupon_code(b"other", "p1")
    assert loop.coupon_code(SECRET, "p1") == loop.coupon_code(SECRET, "p1")
    codes = {loop.coupon_code(SECRET, f"push-{i}") for i in range(50_000)}
    assert len(codes) == 50_000
    # the first character is not stuck (the 50 bits are spread over all 10 data characters)
    assert len({c[0] for c in codes}) == 32


@given(st.text(alphabet=loop.ALPHABET, min_size=10, max_size=10), st.integers(0, 9), st.integers(1, 31))
def test_check_character_catches_one_wrong_character(data: str, pos: int, delta: int) -> None:
    code = loop.coupon_code(SECRET, data)  # a real code, then one character changed
    vals = [loop.ALPHABET.index(c) for c in code]
    vals[pos] = (vals[pos] + delta) % 32
    assert loop.normalise_code("".join(loop.ALPHABET[v] for v in vals)) is None


@given(st.text(min_size=1, max_size=30), st.integers(0, 9))
def test_check_character_catches_adjacent_swaps(pid: str, pos: int) -> None:
    code = loop.coupon_code(SECRET, pid)
    swapped = code[:pos] + code[pos + 1] + code[pos] + code[pos + 2 :]
    # Luhn mod N misses the one swap of 0 and N-1 (here "0" and "Z"), as Luhn misses 09 <-> 90
    if swapped != code and {code[pos], code[pos + 1]} != {"0", "Z"}:
        assert loop.normalise_code(swapped) is None


def _normalise_oracle(text: str) -> str | None:
    """Obviously right: drop dashes and spaces, read each character (ASCII, either case, I/L as
    1, O as 0), require 11 of them with a right Luhn mod 32 check character (factors 2, 1, 2,
    ... from the right of the 10 data characters), and spell them in the canonical alphabet."""
    value = {c: i for i, c in enumerate(loop.ALPHABET)} | {"I": 1, "L": 1, "O": 0}
    value |= {c.lower(): v for c, v in value.items()}
    vals = [value.get(c) for c in text if c not in "- "]
    if len(vals) != 11 or None in vals:
        return None
    total = 0
    for i, v in enumerate(reversed(vals[:10])):
        a = v * (2 if i % 2 == 0 else 1)  # type: ignore[operator]
        total += a // 32 + a % 32
    if (32 - total % 32) % 32 != vals[10]:
        return None
    return "".join(loop.ALPHABET[v] for v in vals)  # type: ignore[index]


_CODE_CHARS = loop.ALPHABET + loop.ALPHABET.lower() + "IiLlOoUu- !é\u0130\u0131"


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(alphabet=_CODE_CHARS, max_size=14),
        st.text(alphabet=loop.ALPHABET, min_size=11, max_size=11),
        st.builds(lambda pid, i, c: (lambda k: k[:i] + c + k[i + 1 :])(loop.coupon_code(SECRET, pid)),
                  st.text(max_size=8), st.integers(0, 10), st.sampled_from(_CODE_CHARS)),  # fmt: skip
        st.builds(lambda pid: loop.coupon_code(SECRET, pid), st.text(max_size=8)),
    )
)
def test_normalise_code_agrees_with_a_character_by_character_oracle(text: str) -> None:
    assert loop.normalise_code(text) == _normalise_oracle(text)


# --- holdouts --------------------------------------------------------------------------------------


def test_holdout_is_deterministic_and_about_its_share() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    held = [u for u in users if loop.in_holdout(u, "c1", 10.0)]
    assert held == [u for u in users if loop.in_holdout(u, "c1", 10.0)]
    assert 0.09 < len(held) / len(users) < 0.11
    other = {u for u in users if loop.in_holdout(u, "c2", 10.0)}
    assert 0.07 < len(set(held) & other) / len(held) < 0.13  # campaigns draw independently
    assert not any(loop.in_holdout(u, "c1", 0.0) for u in users[:1000])
    assert {u for u in users if loop.in_holdout(u, "c1", 20.0)} >= set(held)  # nested shares


def test_holdout_pct_is_validated() -> None:
    with pytest.raises(CampaignError) as exc:
        campaigns(campaign("c", "m", holdout_pct=100), campaign("d", "m", holdout_pct=-1))
    text = str(exc.value)
    assert "campaigns[0] (id 'c').holdout_pct" in text
    assert "campaigns[1] (id 'd').holdout_pct" in text
    assert "percent of eligible users held out" in text
    assert campaigns(campaign("c", "m", holdout_pct=12.5)).campaigns[0].holdout_pct == 12.5


def _visit(user: str, n: int = 1) -> Visit:
    return Visit(visit_id=f"{user}:v{n}", store_id="s1", merchant_id="m", enter_ts=T0, last_seen_ts=T0, signal="gps")


def test_a_held_out_user_is_decided_without_caps_or_inventory() -> None:
    camps = campaigns(
        campaign("c", "m", holdout_pct=30, inventory=1000, caps={"per_user": 1, "period_s": 86400})
    )
    store = MemoryStore()
    held = pushed = 0
    for i in range(400):
        u = f"u{i}"
        stt = UserState(user=u)
        out = decide(campaigns=camps, store=store, st=stt, tags=(), opt_out=False, visit=_visit(u),
                     store_tz="UTC", trigger="enter", dwell_s=None, ts=T0)  # fmt: skip
        if loop.in_holdout(u, "c", 30):
            assert isinstance(out, Holdout)
            assert stt.push_times is None and stt.day_pushes is None  # no cap spent
            held += 1
        else:
            assert isinstance(out, Push)
            pushed += 1
    assert store.inventory() == {"c": 1000 - pushed}
    assert 80 < held < 160


# --- redemption through the core ---------------------------------------------------------------------

STORES = [circle("A", 0, 0, 50, merchant_id="m-A"), circle("B", 900, 0, 50, merchant_id="m-B")]


def _world(**camp: object) -> World:
    camps = campaigns(campaign("a-in", "m-A", **camp), campaign("b-in", "m-B"))
    return World(STORES, camps, CoreConfig(coupon_secret="s3cret", attribution_window_s=3600.0))


def _redeem(user: str, ts: float, merchant: str, code: str, req: str | None = None) -> Redeem:
    return Redeem(user=user, ts=ts, merchant_id=merchant, code=code, request_id=req)


def test_redeem_answers() -> None:
    w = _world()
    w.run([gps("u1", T0, 0, 0), gps("u1", T0 + 60, 900, 0)])
    (pa, pb) = w.pushes()
    assert pa.code == loop.coupon_code(b"s3cret", pa.push_id)
    shown = loop.display_code(pa.code).lower()
    outs = w.run(
        [
            _redeem("u1", T0 + 20, "m-A", "0000000000-0"),  # well formed (check ok), unknown
            _redeem("u1", T0 + 21, "m-A", "not a code"),
            _redeem("u1", T0 + 22, "m-B", pa.code),  # A's code at B's till
            _redeem("u1", T0 + 23, "m-A", shown, req="till-1"),
            _redeem("u1", T0 + 24, "m-A", pa.code, req="till-1"),  # a retry: same answer
            _redeem("u1", T0 + 25, "m-A", pa.code, req="till-2"),
            _redeem("u1", T0 + 60 + 3601, "m-B", pb.code),  # one second past expires_in_s
            _redeem("u2", T0 + 30, "m-B", pb.code),  # another user's code
        ]
    )
    res = [o for o in outs if isinstance(o, RedeemResult)]
    assert [r.status for r in res] == [
        "not_found", "invalid_code", "other_merchant", "ok", "ok", "already_redeemed", "expired",
        "not_found",
    ]  # fmt: skip
    assert res[3].push_ref == pa.push_id and res[3].campaign_id == "a-in" and res[3].code == pa.code
    assert res[3].out_id == res[4].out_id  # consumers dedupe the retry's answer
    assert w.core.stats.redemptions_by_status == {
        "not_found": 2, "invalid_code": 1, "other_merchant": 1, "ok": 2, "already_redeemed": 1,
        "expired": 1,
    }  # fmt: skip


def test_redemption_survives_the_state_blob() -> None:
    """Exactly once across restarts: the redemption is in the user's record as stored."""
    w = _world()
    w.run([gps("u1", T0, 0, 0)])
    (p,) = w.pushes()
    w.run([_redeem("u1", T0 + 5, "m-A", p.code)])
    st0 = w.store.user("u1")
    st1 = decode_user(encode_user(st0))
    assert st1 == st0
    r = loop.redeem(st1, "m-A", p.code, T0 + 6, "again")
    assert r.status == "already_redeemed"


def test_a_retry_without_request_id_answers_ok_after_the_record_is_stored() -> None:
    """The default request id (``{code}@{ts}``) is not stored in the record, but derived: a
    till's retry of the same redemption (same code, same time) answers ok again, across a
    restart; another attempt is already_redeemed."""
    w = _world()
    w.run([gps("u1", T0, 0, 0)])
    (p,) = w.pushes()
    (r0,) = w.run([_redeem("u1", T0 + 5, "m-A", p.code)])
    assert isinstance(r0, RedeemResult) and r0.status == "ok" and r0.request_id == f"{p.code}@{T0 + 5!r}"
    st1 = decode_user(encode_user(w.store.user("u1")))
    assert st1.offers is not None and st1.offers[p.code].redeem_req is None
    retry = loop.redeem(st1, "m-A", loop.display_code(p.code), T0 + 5, None)
    assert (retry.status, retry.out_id) == ("ok", r0.out_id)
    assert loop.redeem(st1, "m-A", p.code, T0 + 5, f"{p.code}@{T0 + 5!r}").status == "ok"
    assert loop.redeem(st1, "m-A", p.code, T0 + 6, None).status == "already_redeemed"
    assert loop.redeem(st1, "m-A", p.code, T0 + 5, "till-9").status == "already_redeemed"


def test_payment_attribution_through_the_core() -> None:
    w = _world()
    w.run([gps("u1", T0, 0, 0), gps("u2", T0, 0, 0), gps("u1", T0 + 60, 900, 0)])
    pa = next(p for p in w.pushes() if p.user == "u1" and p.merchant_id == "m-A")
    outs = w.run(
        [
            pay("u1", T0 + 100, "m-A", 20.0),  # window: latest push of m-A
            pay("u1", T0 + 200, "m-A", 5.0),  # again: not the first order any more
            Payment(user="u2", ts=T0 + 300, merchant_id="m-A", amount=7.0, code="bad"),
            pay("u1", T0 + 5000, "m-A", 1.0),  # outside the 3600 s window
            pay("u3", T0 + 100, "m-A", 1.0),  # never pushed
        ]
    )
    orders = [o for o in outs if isinstance(o, Order)]
    assert [(o.user, o.push_ref, o.via, o.first, o.new_customer, o.new_follower, o.amount) for o in orders] == [
        ("u1", pa.push_id, "window", True, True, True, 20.0),
        ("u1", pa.push_id, "window", False, False, False, 5.0),
        ("u2", orders[2].push_ref, "window", True, True, True, 7.0),
    ]
    assert [o.status for o in outs if isinstance(o, RedeemResult)] == ["invalid_code"]
    offer = w.store.user("u1").offers[pa.code]  # type: ignore[index]
    assert (offer.order_ts, offer.order_value) == (T0 + 100, 20.0)
    assert w.core.stats.attributed_orders == 3


def test_a_payment_carrying_a_code_redeems_and_attributes_to_it() -> None:
    w = _world()
    w.run([gps("u1", T0, 0, 0), gps("u1", T0 + 60, 900, 0), gps("u1", T0 + 120, 0, 0)])
    first = w.pushes()[0]
    assert first.merchant_id == "m-A"
    outs = w.run([Payment(user="u1", ts=T0 + 130, merchant_id="m-A", amount=9.0, code=first.code)])
    (r,) = [o for o in outs if isinstance(o, RedeemResult)]
    (o,) = [o for o in outs if isinstance(o, Order)]
    assert r.status == "ok"
    assert (o.push_ref, o.via) == (first.push_id, "code")


def test_a_dwell_due_before_a_redemption_is_decided_first() -> None:
    """A dwell push due at enter + 600 s, not yet fired (no later location event, no sweep yet),
    and the user redeems its code at the till a minute later in the same batch: the dwell is
    decided before the redemption is looked up, so the code is found (found by the simulated
    week: such redemptions answered not_found and their payments went unattributed)."""
    camps = campaigns(campaign("a-stay", "m-A", "dwell", dwell_s=600))
    w = World(STORES, camps, CoreConfig(coupon_secret="s3cret", attribution_window_s=3600.0))
    w.run([gps("u1", T0, 0, 0)])
    code = loop.coupon_code(b"s3cret", push_id_for("u1", "a-stay", w.visits()[0].visit_id, "dwell:600"))
    outs = w.run([_redeem("u1", T0 + 660, "m-A", code, "till-1"), pay("u1", T0 + 700, "m-A")])
    (push,) = [o for o in outs if isinstance(o, Push)]
    assert (push.ts, push.code) == (T0 + 600, code)
    (r,) = [o for o in outs if isinstance(o, RedeemResult)]
    (o,) = [o for o in outs if isinstance(o, Order)]
    assert (r.status, r.push_ref) == ("ok", push.push_id)
    assert (o.push_ref, o.via) == (push.push_id, "redeemed")
    assert outs.index(push) < outs.index(r)


def test_offers_stay_bounded() -> None:
    """A user pushed every day for a year keeps the offers that can still change, not all."""
    stt = UserState(user="u")
    cp = Coupon("t", 1.0, "EUR", 3600)
    day = 86400.0
    for i in range(365):
        pid = f"p{i}"
        p = Push(push_id=pid, user="u", campaign_id="c", store_id="s", merchant_id="m", visit_id="v",
                 trigger="enter", ts=T0 + i * day, coupon=cp, code=loop.coupon_code(SECRET, pid))  # fmt: skip
        loop.record_offer(stt, p, 3600.0, 7 * day)
        if i == 10:
            assert loop.redeem(stt, "m", p.code, T0 + i * day + 60, None).status == "ok"
    assert stt.offers is not None and len(stt.offers) <= loop.PRUNE_AT + 1
    assert stt.offers.get(loop.coupon_code(SECRET, "p364")) is not None
    # redeemed on day 10: still answers already_redeemed for 90 days, then may be forgotten
    assert loop.coupon_code(SECRET, "p10") not in stt.offers


def test_new_containers_stay_none_and_old_blobs_read() -> None:
    assert UserState(user="u").offers is None
    old = msgspec.msgpack.encode({"user": "u", "last_ts": 5.0})  # a record from before offers
    st0 = decode_user(old)
    assert st0.offers is None and st0.last_ts == 5.0
    assert b"offers" not in encode_user(UserState(user="u"))


def test_redeem_wire_format() -> None:
    raw = b'{"type":"redeem","user":"u1","ts":1700000000.0,"merchant_id":"m1","code":"ABCDEFGHJK-0"}'
    (ev,) = decode(raw, topic_user="u1")
    assert ev == Redeem(user="u1", ts=1700000000.0, merchant_id="m1", code="ABCDEFGHJK-0")
    assert encode_event(ev) == raw
    with pytest.raises(DecodeError) as exc:
        decode(b'{"type":"redeem","user":"u1","ts":1700000000.0,"merchant_id":"m1"}')
    assert exc.value.reason == "missing_field"
    pay_raw = b'{"type":"payment","user":"u1","ts":1700000004.0,"merchant_id":"m1","amount":12.5}'
    assert encode_event(decode(pay_raw)[0]) == pay_raw  # a payment without code: bytes unchanged


# --- attribution against a brute-force oracle ------------------------------------------------------

W = 100.0  # attribution window in the oracle test


@dataclass
class _Off:
    push_id: str
    code: str
    merchant: str
    campaign: str
    ts: float
    expires: float
    held: bool


def _oracle(actions: list[tuple]) -> list[tuple]:  # type: ignore[type-arg]
    """Recompute every answer from the whole history, with no state kept between events except
    the list of what happened."""
    offers: list[_Off] = []
    redemptions: list[tuple[str, float, str]] = []  # (push_id, ts, request id)
    orders: list[tuple[str, float]] = []  # (push_id, ts)
    answers: list[tuple] = []  # type: ignore[type-arg]

    def do_redeem(merchant: str, text: str, ts: float, req: str) -> tuple:  # type: ignore[type-arg]
        code = loop.normalise_code(text)
        if code is None:
            return ("redeem", "invalid_code", None)
        o = next((o for o in offers if o.code == code and not o.held), None)
        if o is None:
            return ("redeem", "not_found", None)
        if o.merchant != merchant:
            return ("redeem", "other_merchant", o.push_id)
        done = [r for r in redemptions if r[0] == o.push_id]
        if done:
            return ("redeem", "ok" if done[0][2] == req else "already_redeemed", o.push_id)
        if ts > o.expires:
            return ("redeem", "expired", o.push_id)
        redemptions.append((o.push_id, ts, req))
        return ("redeem", "ok", o.push_id)

    for a in actions:
        kind, ts = a[0], a[1]
        if kind == "offer":
            _, _, pid, merchant, campaign_id, held, exp = a
            code = "" if held else loop.coupon_code(SECRET, pid)
            offers.append(_Off(pid, code, merchant, campaign_id, ts, ts + exp, held))
        elif kind == "redeem":
            _, _, merchant, text = a
            answers.append(do_redeem(merchant, text, ts, _req(ts) or f"{loop.normalise_code(text) or text}@{ts!r}"))
        else:
            _, _, merchant, text = a
            target = None
            via = ""
            if text is not None:
                ans = do_redeem(merchant, text, ts, f"pay@{ts}")
                answers.append(ans)
                code = loop.normalise_code(text)
                o = next((o for o in offers if code and o.code == code and not o.held), None)
                if o is not None and o.merchant == merchant and any(r[0] == o.push_id for r in redemptions):
                    target, via = o, "code"
            if target is None:
                red = [
                    (r[1], o.push_id, o)
                    for o in offers
                    for r in redemptions
                    if r[0] == o.push_id and o.merchant == merchant and ts - W <= r[1] <= ts
                    and not any(p == o.push_id for p, _ in orders)
                ]
                if red:
                    target, via = max(red, key=lambda x: (x[0], x[1]))[2], "redeemed"
            if target is None:
                win = [o for o in offers if o.merchant == merchant and ts - W <= o.ts <= ts]
                if win:
                    target, via = max(win, key=lambda o: (o.ts, o.push_id)), "window"
            if target is None:
                answers.append(("order", None))
            else:
                first = not any(p == target.push_id for p, _ in orders)
                orders.append((target.push_id, ts))
                answers.append(("order", target.push_id, via, first, target.held))
    return answers


@st.composite
def _histories(draw: st.DrawFn) -> list[tuple]:  # type: ignore[type-arg]
    n = draw(st.integers(1, 40))
    actions: list[tuple] = []  # type: ignore[type-arg]
    ts = 0.0
    pids: list[tuple[str, bool]] = []
    for i in range(n):
        ts += draw(st.sampled_from([0.0, 1.0, 7.0, 30.0, 90.0, 150.0]))
        k = draw(st.sampled_from(["offer", "offer", "redeem", "pay", "pay"]))
        merchant = draw(st.sampled_from(["A", "B"]))
        if k == "offer":
            held = draw(st.booleans())
            pid = f"p{i}"
            pids.append((pid, held))
            actions.append(("offer", ts, pid, merchant, draw(st.sampled_from(["c1", "c2"])), held,
                            draw(st.sampled_from([20.0, 60.0, 500.0]))))  # fmt: skip
        else:
            choice = draw(st.integers(0, len(pids) + 1))
            if choice < len(pids):
                text: str | None = loop.coupon_code(SECRET, pids[choice][0])
            elif choice == len(pids):
                text = "ZZZZZZZZZZ-" if k == "redeem" else None
            else:
                text = None if k == "pay" else "garbage"
            actions.append((k, ts, merchant, text if k == "pay" else (text or "garbage")))
    return actions


def _req(ts: float) -> str | None:
    """The till's request id of a redemption in the oracle test: none (the default one) for half
    of them."""
    return None if int(ts) % 2 == 0 else f"r@{ts}"


def _run_impl(actions: list[tuple]) -> tuple[list[tuple], list[float]]:  # type: ignore[type-arg]
    """The implementation, its record stored and read back after every action (as across
    restarts)."""
    stt = UserState(user="u")
    answers: list[tuple] = []  # type: ignore[type-arg]
    times: list[float] = []
    cp = Coupon("t", 1.0, "EUR", 60)
    for a in actions:
        kind, ts = a[0], a[1]
        if kind == "offer":
            _, _, pid, merchant, campaign_id, held, exp = a
            if held:
                out: Push | Holdout = Holdout(push_id=pid, user="u", campaign_id=campaign_id, store_id="s",
                                              merchant_id=merchant, visit_id="v", trigger="enter", ts=ts)  # fmt: skip
            else:
                out = Push(push_id=pid, user="u", campaign_id=campaign_id, store_id="s", merchant_id=merchant,
                           visit_id="v", trigger="enter", ts=ts, coupon=cp, code=loop.coupon_code(SECRET, pid))  # fmt: skip
            loop.record_offer(stt, out, 0.0 if held else exp, W)
        elif kind == "redeem":
            _, _, merchant, text = a
            r = loop.redeem(stt, merchant, text, ts, _req(ts))  # None: the default request id
            answers.append(("redeem", r.status, r.push_ref))
            times.append(ts)
        else:
            _, _, merchant, text = a
            code = None
            if text is not None:
                r = loop.redeem(stt, merchant, text, ts, f"pay@{ts}")
                answers.append(("redeem", r.status, r.push_ref))
                times.append(ts)
                code = r.code
            o = loop.attribute(stt, merchant, ts, 1.0, code, W, False, False)
            answers.append(("order", None) if o is None else ("order", o.push_ref, o.via, o.first, o.held_out))
            times.append(ts)
        stt = decode_user(encode_user(stt))
    return answers, times


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_histories())
def test_attribution_and_redemption_match_the_oracle(actions: list[tuple]) -> None:  # type: ignore[type-arg]
    want = _oracle(actions)
    got, times = _run_impl(actions)
    assert len(got) == len(want)
    offers = {a[2]: a for a in actions if a[0] == "offer"}
    for g, w_, now in zip(got, want, times, strict=True):
        if g == w_:
            continue
        # The one allowed difference: an unredeemed push is forgotten (its code: not_found)
        # once it can neither be redeemed (expired) nor attributed (window passed).
        assert g[:2] == ("redeem", "not_found") and w_[1] in ("expired", "other_merchant"), (g, w_)
        o = offers[w_[2]]
        assert now > o[1] + max(W, o[6])


def test_oracle_sees_every_rule() -> None:
    """A hand-written history through window, redeemed, code and holdout attribution."""
    c1 = loop.coupon_code(SECRET, "p1")
    hist = [
        ("offer", 0.0, "p1", "A", "c1", False, 500.0),
        ("offer", 5.0, "p2", "A", "c2", True, 500.0),
        ("pay", 6.0, "A", None),  # window -> the holdout p2 (latest)
        ("redeem", 7.0, "A", c1),
        ("pay", 8.0, "A", None),  # the redeemed p1 beats the later holdout
        ("pay", 9.0, "A", c1),  # the code
        ("pay", 200.0, "A", None),  # nothing within W
    ]
    got, _ = _run_impl(hist)
    assert got == _oracle(hist)
    assert got == [
        ("order", "p2", "window", True, True),
        ("redeem", "ok", "p1"),
        ("order", "p1", "redeemed", True, False),
        ("redeem", "already_redeemed", "p1"),
        ("order", "p1", "code", False, False),
        ("order", None),
    ]
