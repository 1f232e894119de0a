"""Redemptions over HTTP: a till's ``POST /v1/redemptions`` goes through the engine's own event
path, so the single-writer rules of the ``redeem`` event apply unchanged.

**How.** The API publishes the ``redeem`` event (QoS 1) on the user's events topic,
``{prefix}/events/{user}``, over the daemon's own MQTT connection (``publish``: from the API's
process, relayed by the daemon, engine/api/process.py), exactly as a till logged in to the
broker would, with ``merchant_id`` taken from the caller's merchant token. The broker
hands it back to the daemon (or, in a worker group, to the worker owning the user), which
decides it against the user's record (engine/loop.py ``redeem``) and commits the answer, a
``RedeemResult``, with the record, in one transaction. ``RedemptionDesk.answered`` gets that
answer (the daemon finds it among each commit's outbox rows and passes it to the API's
process; in-process, ``committed`` takes the rows) and resolves the request waiting for it (by
user and ``request_id``).

**Exactly once across crashes.** Nothing is redeemed before that commit. Once the broker has
acknowledged the publish the event is the broker's (persisted, redelivered to the engine after a
crash); if the answer does not come within the timeout the API says so (504) and the till retries
with the same ``request_id``: the engine answers ``ok`` again for the redemption it already made
with that id (same ``out_id``), ``already_redeemed`` for any other attempt. Without a
``request_id`` the API makes one (``api-`` + 128 random bits) and returns it.

No FastAPI here.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from engine.api.errors import ApiError

ANSWER_TIMEOUT_S = 10.0

Publish = Callable[[str, bytes], Awaitable[None]]

DETAILS: dict[str, str] = {
    "ok": "redeemed now (exactly once): give the customer the offer",
    "invalid_code": "not a coupon code (a typo?): check the 11 characters and retry",
    "not_found": "no push to this user has this code (another user's, or an old one)",
    "other_merchant": "the code is for another merchant's offer",
    "already_redeemed": "this code was redeemed before",
    "expired": "the coupon has expired",
}


class Unavailable(ApiError):
    status = 503


class AnswerTimeout(ApiError):
    status = 504


class _Row(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


class RedemptionDesk:
    """Publishes redeem events and waits for their committed answers."""

    def __init__(self, prefix: str = "geopush", timeout: float = ANSWER_TIMEOUT_S) -> None:
        self.prefix = prefix
        self.answers = f"{prefix}/redemptions/"
        self.timeout = timeout
        self.publish: Publish | None = None  # the daemon's link, set once it exists
        self._waiting: dict[tuple[str, str], list[asyncio.Future[dict[str, Any]]]] = {}

    def committed(self, rows: Sequence[_Row]) -> None:
        """A batch's outbox rows, just committed (on the event loop, never waits)."""
        if not self._waiting:
            return
        n = len(self.answers)
        for r in rows:
            if r.topic[:n] == self.answers:
                self.answered(json.loads(r.payload))

    def answered(self, data: dict[str, Any]) -> None:
        """The engine's committed answer to a redemption (a RedeemResult's JSON): to the requests
        waiting for it (the API's process gets these from the engine: engine/api/process.py)."""
        futs = self._waiting.pop((str(data.get("user")), str(data.get("request_id"))), None)
        for f in futs or ():
            if not f.done():
                f.set_result(data)

    async def redeem(
        self, user: str, merchant_id: str, code: str, request_id: str | None
    ) -> dict[str, Any]:
        """The engine's answer to this redemption (a RedeemResult's JSON)."""
        if self.publish is None:
            raise Unavailable("the engine is not connected to its broker yet; retry in a moment")
        req = request_id or "api-" + secrets.token_hex(16)
        event = {
            "type": "redeem",
            "user": user,
            "ts": round(time.time(), 3),
            "merchant_id": merchant_id,
            "code": code,
            "request_id": req,
        }
        key = (user, req)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        try:
            try:
                await asyncio.wait_for(
                    self.publish(f"{self.prefix}/events/{user}", json.dumps(event).encode()),
                    self.timeout,
                )
            except Exception as exc:  # TransportError, a timeout: not taken by the broker
                raise Unavailable(
                    f"the broker did not take the redemption ({type(exc).__name__}: {exc}); "
                    f"nothing was redeemed: retry with request_id {req!r}"
                ) from exc
            try:
                return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
            except TimeoutError:
                raise AnswerTimeout(
                    f"no answer from the engine within {self.timeout:g} s; the redemption may "
                    f"still be applied: retry with the same request_id {req!r} (a retry of a "
                    "redemption made answers ok again, never twice)"
                ) from None
        finally:
            futs = self._waiting.get(key)
            if futs is not None:
                if fut in futs:
                    futs.remove(fut)
                if not futs:
                    del self._waiting[key]


__all__ = ["ANSWER_TIMEOUT_S", "DETAILS", "AnswerTimeout", "RedemptionDesk", "Unavailable"]
