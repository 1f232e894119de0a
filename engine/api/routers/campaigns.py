"""/v1/campaigns: campaigns live, versioned, paused and resumed; what-if forecasts."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from engine.api import forecast
from engine.api.campaigns import LiveCampaigns
from engine.api.deps import CurrentPrincipal, MerchantScope
from engine.api.errors import ApiError, InvalidRequest
from engine.api.models import ErrorOut

router = APIRouter(prefix="/campaigns", tags=["campaigns"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no token, or an unknown or revoked one"},
    403: {"model": ErrorOut, "description": "a merchant token acting for another merchant"},
    404: {"model": ErrorOut, "description": "no such campaign (a merchant sees only its own)"},
    409: {"model": ErrorOut, "description": "the campaign id belongs to another merchant"},
    422: {"model": ErrorOut, "description": "invalid campaign: `problems` lists each one"},
    503: {"model": ErrorOut, "description": "the state file failed"},
}
_CAMPAIGN_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object", "description": "one campaign, as an entry of the campaign file "
            "(docs/campaigns.md)"}}},
    }
}  # fmt: skip
_TRACE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/x-ndjson": {"schema": {
            "type": "string", "description": "JSONL wire events; the first line may be "
            '{"campaign": {...}}, a proposed version'}}},
    }
}  # fmt: skip


class Busy(ApiError):
    status = 429


async def get_campaigns(request: Request) -> LiveCampaigns:
    live: LiveCampaigns | None = getattr(request.state, "live_campaigns", None)
    if live is None:
        raise ApiError("this engine serves no campaigns")
    return live


Campaigns = Annotated[LiveCampaigns, Depends(get_campaigns)]

_forecasting = asyncio.Lock()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(
            "the body is not valid JSON", [f"not valid JSON: {exc}; fix the syntax"]
        ) from exc


@router.get("", responses=_ERRORS)
async def list_campaigns(
    scope: MerchantScope,
    campaigns: Campaigns,
    merchant_id: Annotated[str | None, Query(description="only this merchant's campaigns")] = None,
) -> dict[str, Any]:
    """Live and paused campaigns (a merchant token sees its own), by id."""
    return {"campaigns": [v.to_dict() for v in campaigns.find(scope, merchant_id)]}


@router.get("/{campaign_id}", responses=_ERRORS)
async def get_campaign(campaign_id: str, scope: MerchantScope, campaigns: Campaigns) -> dict[str, Any]:
    """One campaign: its body, status (active, paused), source (file, api) and version."""
    return campaigns.view(campaign_id, scope).to_dict()


@router.put(
    "/{campaign_id}",
    responses={**_ERRORS, 201: {"description": "created"}},
    openapi_extra=_CAMPAIGN_BODY,
)
async def put_campaign(
    campaign_id: str, request: Request, response: Response, who: CurrentPrincipal,
    campaigns: Campaigns,
) -> dict[str, Any]:  # fmt: skip
    """Create or replace a campaign (validated as the campaign file is). Takes effect on the
    event path at the next micro-batch; a new version is kept with its author."""
    view, created, warnings = campaigns.put(campaign_id, _json(await request.body()), who)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return {**view.to_dict(), "warnings": warnings}


@router.delete("/{campaign_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_campaign(campaign_id: str, who: CurrentPrincipal, campaigns: Campaigns) -> None:
    """Remove a campaign (its history stays; its spent caps and inventory stay with its id)."""
    campaigns.delete(campaign_id, who)


@router.post("/{campaign_id}/pause", responses=_ERRORS)
async def pause_campaign(campaign_id: str, who: CurrentPrincipal, campaigns: Campaigns) -> dict[str, Any]:
    """Stop pushing this campaign (from the next micro-batch) until resumed."""
    return campaigns.set_paused(campaign_id, True, who).to_dict()


@router.post("/{campaign_id}/resume", responses=_ERRORS)
async def resume_campaign(campaign_id: str, who: CurrentPrincipal, campaigns: Campaigns) -> dict[str, Any]:
    """Push this campaign again."""
    return campaigns.set_paused(campaign_id, False, who).to_dict()


@router.get("/{campaign_id}/history", responses=_ERRORS)
async def campaign_history(campaign_id: str, scope: MerchantScope, campaigns: Campaigns) -> dict[str, Any]:
    """Every version made through the API, oldest first: body, action, author, time."""
    versions = campaigns.history(campaign_id, scope)
    return {"id": campaign_id, "versions": [v.to_dict() for v in versions]}


@router.post(
    "/{campaign_id}/forecast",
    responses={**_ERRORS, 413: {"model": ErrorOut}, 429: {"model": ErrorOut}},
    openapi_extra=_TRACE_BODY,
)
async def forecast_campaign(
    campaign_id: str, request: Request, who: CurrentPrincipal, campaigns: Campaigns
) -> dict[str, Any]:
    """What-if: replay the trace in the body against a snapshot of the live stores and
    campaigns, with this campaign as it is (or as proposed on the first line); live state is
    not touched."""
    if _forecasting.locked():
        raise Busy("a forecast is already running; retry when it is done")
    async with _forecasting:
        chunks: list[bytes] = []
        size = 0
        limit = forecast.MAX_TRACE_BYTES
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(
                    f"the trace is larger than {limit} bytes; send a shorter one (fewer hours "
                    "or users)"
                )
            chunks.append(chunk)
        proposed, events, problems = await asyncio.to_thread(forecast.parse_trace, b"".join(chunks))
        if problems:
            raise InvalidRequest(f"{len(problems)} problem(s) in the trace", problems)
        target, version = campaigns.forecast_target(campaign_id, proposed, who)
        live = campaigns.with_campaign(target)
        index = campaigns.stores_snapshot()
        result = await asyncio.to_thread(
            forecast.run_forecast, index, live, target, events,
            config=campaigns.target.config(), profiles=campaigns.target.profiles(),
        )  # fmt: skip
        return {**result, "version": version}


class TooLarge(ApiError):
    status = 413
