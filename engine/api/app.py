"""``create_app(state, target)``: the HTTP API as a FastAPI application.

The lifespan owns the API's resources (its connection to the state file, the ``LiveStores``
over the daemon's fence index) and hands them to requests through the lifespan state; domain
errors become HTTP statuses here, once (``_HANDLERS``); every error body is ``ErrorOut``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine.api.deps import not_in_group
from engine.api.errors import ApiError, AuthError
from engine.api.live import FenceTarget, LiveStores, prepare_listing
from engine.api.outcomes import OutcomeLog
from engine.api.redemptions import RedemptionDesk
from engine.api.redis_state import is_redis_url, open_api_state
from engine.api.routers import campaigns, stores, tokens, webhooks
from engine.api.routers import redemptions as redemptions_router
from engine.api.routers import visits as visits_router
from engine.api.visits import VisitHub, VisitLog, outbox_copier
from engine.errors import StateError, TransportError
from engine.loop import ATTRIBUTION_WINDOW_S
from fences.errors import CatalogError, UnknownStoreError

API_PREFIX = "/v1"


def _error(status: int, error: str, detail: str, problems: list[dict[str, Any]] | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:  # fmt: skip
    body: dict[str, Any] = {"error": error, "detail": detail}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    problems = [{"index": None, "store_id": None, "reason": p} for p in exc.problems]
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
    name = type(exc).__name__
    return _error(exc.status, name, str(exc), problems or None, headers)


async def _catalog_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CatalogError)
    problems = [{"index": p.index, "store_id": p.store_id, "reason": p.reason} for p in exc.problems]
    return _error(422, "CatalogError", f"{len(problems)} problem(s); fix each and retry", problems)


async def _unknown_store(_r: Request, exc: Exception) -> JSONResponse:
    return _error(404, "NotFound", f"no store {exc.args[0]!r}" if exc.args else "no such store")


async def _unavailable(_r: Request, exc: Exception) -> JSONResponse:
    return _error(503, type(exc).__name__, f"{exc}; retry later")


async def _invalid_request(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "index": None,
            "store_id": None,
            "reason": f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}",
        }
        for e in exc.errors()
    ]
    return _error(422, "InvalidRequest", "the request does not match the API", problems)


async def _http_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, "HTTPError", str(exc.detail), headers=exc.headers)


_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    CatalogError: _catalog_error,
    UnknownStoreError: _unknown_store,
    StateError: _unavailable,
    TransportError: _unavailable,
    RequestValidationError: _invalid_request,
    HTTPException: _http_error,
}


def _live_campaigns(state: str | Path, target: FenceTarget, stores: LiveStores) -> Any:
    """The campaigns' operations when the engine gives a campaign target (else None)."""
    if target.campaigns is None:
        return None
    from engine.api.campaigns import CampaignLog, LiveCampaigns

    return LiveCampaigns(target.campaigns, CampaignLog(state), lambda: stores.catalog)


def create_app(
    state: str | Path,
    target: FenceTarget,
    *,
    visits: VisitHub | None = None,
    redemptions: RedemptionDesk | None = None,
    attribution_window_s: float = ATTRIBUTION_WINDOW_S,
) -> FastAPI:
    """The API over the state file ``state`` (SQLite) and the live fence index of ``target``;
    ``visits`` fans the daemon's committed visit events out to the SSE streams; ``redemptions``
    publishes redeem events and waits for their committed answers; ``attribution_window_s``: the
    engine's, where the merchant report's lift windows end."""
    hub = visits or VisitHub("geopush/visits/", lambda: 0)
    desk = redemptions or RedemptionDesk()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        try:
            api_state = open_api_state(state)  # SQLite, or Redis for a worker group
        except Exception as exc:
            app.state.startup_error = exc  # uvicorn only logs it: ApiServer reports it
            raise
        stores_live = LiveStores(target, api_state)
        with contextlib.suppress(Exception):  # (no live index: a stand-in engine)
            # the filtered listing's tables, built off the loop before a page needs them
            asyncio.get_running_loop().run_in_executor(None, prepare_listing, stores_live.catalog)
        live: dict[str, Any] = {
            "api_state": api_state, "live_stores": stores_live, "visit_hub": hub, "redemptions": desk,
        }  # fmt: skip
        if is_redis_url(str(state)):
            # a worker group: stores, tokens and webhooks in Redis; the visit log, campaigns,
            # redemptions, reports and the console need a SQLite state file (503 here)
            try:
                yield live
            finally:
                api_state.close()
            return
        try:
            visit_log = VisitLog(state, hub.prefix)
        except Exception as exc:
            api_state.close()
            app.state.startup_error = exc
            raise
        live["visit_log"] = visit_log
        camps = _live_campaigns(api_state.path, target, stores_live)
        if camps is not None:
            live["live_campaigns"] = camps
        outcome_log = OutcomeLog(state, desk.prefix, window_s=attribution_window_s)
        live.update(outcome_log=outcome_log, redemptions=desk)
        copier = asyncio.create_task(outbox_copier(visit_log), name="visit-log")
        copier2 = asyncio.create_task(outbox_copier(outcome_log), name="outcome-log")
        try:
            yield live
        finally:
            for task in (copier, copier2):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            visit_log.close()
            outcome_log.close()
            if camps is not None:
                camps.log.close()
            api_state.close()

    app = FastAPI(
        title="geopush API",
        version="1",
        summary="Stores (fences) live, with operator and merchant tokens. See docs/api.md.",
        lifespan=lifespan,
        exception_handlers=_HANDLERS,
    )
    group = is_redis_url(str(state))

    def single(what: str) -> list[Any]:
        """In a worker group: the router's routes answer 503 saying what to do."""
        return [Depends(not_in_group(what))] if group else []

    v1 = APIRouter(prefix=API_PREFIX)
    v1.include_router(stores.router)
    v1.include_router(tokens.router)
    v1.include_router(visits_router.router, dependencies=single("visits"))
    v1.include_router(campaigns.router, dependencies=single("campaigns"))
    v1.include_router(webhooks.router)
    v1.include_router(redemptions_router.router, dependencies=single("redemptions and reports"))

    @v1.get("/health", tags=["health"])
    async def health(request: Request) -> dict[str, Any]:
        """No token needed: the API is up; how many stores are live, how many visit streams
        (SSE) are open."""
        live: LiveStores = request.state.live_stores
        return {"status": "ok", "stores": len(live.catalog), "streams": hub.subscribers}

    app.include_router(v1)
    from engine.api import console  # the merchant console (/console): HTML over the same data

    app.include_router(console.router, dependencies=single("the console"))
    app.mount("/console/static", console.static, name="console-static")
    return app


__all__ = ["API_PREFIX", "create_app"]
