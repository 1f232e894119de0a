"""/v1/redemptions: a merchant's till redeems a coupon code; /v1/merchants/{id}/report: what
the pushes did (``geopush report``'s figures for one merchant)."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from engine.api.deps import MerchantScope, sqlite_only
from engine.api.errors import InvalidRequest
from engine.api.models import ErrorOut
from engine.api.outcomes import OutcomeLog, merchant_report
from engine.api.redemptions import DETAILS, RedemptionDesk
from engine.api.routers.visits import _own, _since
from engine.api.visits import VisitLog

router = APIRouter(tags=["redemptions"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no token, or an unknown or revoked one"},
    403: {"model": ErrorOut, "description": "a merchant token acting for another merchant"},
    422: {"model": ErrorOut, "description": "invalid input: `problems` lists each one"},
    503: {"model": ErrorOut, "description": "the engine's broker is unreachable: retry"},
}


class RedemptionIn(BaseModel):
    user: str = Field(min_length=1, max_length=256, description="the user whose phone shows the code")
    code: str = Field(min_length=1, max_length=64, description="as typed or scanned, e.g. 7MZ4K0Q2XH-R")
    request_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="the till's id of this attempt: a retry with the same id answers the same",
    )  # fmt: skip
    merchant_id: str | None = Field(None, description="only with an operator token")


class RedemptionOut(BaseModel):
    status: str = Field(description="ok, invalid_code, not_found, other_merchant, already_redeemed, expired")
    detail: str
    request_id: str
    user: str
    merchant_id: str
    code: str
    ts: float
    push_ref: str | None = None
    campaign_id: str | None = None


@router.post(
    "/redemptions",
    response_model=RedemptionOut,
    responses={**_ERRORS, 504: {"model": ErrorOut, "description": "no answer in time: retry with the same request_id"}},
)  # fmt: skip
async def redeem(body: RedemptionIn, request: Request, scope: MerchantScope) -> dict[str, Any]:
    """Redeem a coupon code at the caller's merchant, through the engine (exactly once): the
    answer's ``status`` says whether it was redeemed now or why not."""
    merchant = scope
    if merchant is None:
        if not body.merchant_id:
            raise InvalidRequest("an operator token must say for which merchant: add merchant_id")
        merchant = body.merchant_id
    else:
        _own(body.merchant_id or scope or "", scope)
    desk: RedemptionDesk = request.state.redemptions
    data = await desk.redeem(body.user, merchant, body.code, body.request_id)
    data.pop("kind", None)
    return {**data, "detail": DETAILS.get(data["status"], data["status"])}


@router.get("/merchants/{merchant_id}/report", responses=_ERRORS, tags=["report"])
async def report(
    merchant_id: str,
    request: Request,
    scope: MerchantScope,
    from_: Annotated[
        str | None, Query(alias="from", description="outputs at or after: Unix seconds or ISO 8601")
    ] = None,
    to: Annotated[str | None, Query(description="outputs before: Unix seconds or ISO 8601")] = None,
) -> dict[str, Any]:
    """``geopush report``'s figures for one merchant: visits (new, returning), pushes,
    delivered, held out, redemptions, orders, revenue, new customers and followers, lift per
    campaign with its 95% interval; over outputs with ``from <= ts < to``."""
    _own(merchant_id, scope)
    lo = _since(from_)
    hi = _since(to)
    lo = -math.inf if lo is None else lo
    hi = math.inf if hi is None else hi
    if hi <= lo:
        raise InvalidRequest(f"to ({to}) must be after from ({from_})")
    sqlite_only(request.state.api_state.path, "reports")
    visits: VisitLog = request.state.visit_log
    outcomes: OutcomeLog = request.state.outcome_log
    await asyncio.to_thread(visits.catch_up)
    out = await asyncio.to_thread(merchant_report, outcomes, merchant_id, lo, hi)
    out["from"] = None if math.isinf(lo) else lo
    out["to"] = None if math.isinf(hi) else hi
    return out
