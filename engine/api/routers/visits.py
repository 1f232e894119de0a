"""/v1/merchants/{merchant_id}/visits: a merchant's visitors (history, live SSE, open visits).

Events are the engine's visit events (engine/outputs.py), with the outbox seq as their id
(engine/api/visits.py). A merchant token reads only its own merchant; an operator any.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from engine.api.deps import MerchantScope
from engine.api.errors import AccessDenied, InvalidRequest
from engine.api.models import ErrorOut
from engine.api.visits import VisitHub, VisitLog
from engine.errors import StateError

router = APIRouter(prefix="/merchants", tags=["visits"])

HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
_RESUME_PAGE = 1000

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no token, or an unknown or revoked one"},
    403: {"model": ErrorOut, "description": "a merchant token reading another merchant"},
    422: {"model": ErrorOut, "description": "invalid input: `problems` lists each one"},
    503: {"model": ErrorOut, "description": "the state file failed"},
}


def _log(request: Request) -> VisitLog:
    log: VisitLog | None = getattr(request.state, "visit_log", None)
    if log is None:
        raise StateError(
            "the visit log lives in a SQLite state file; a worker group (Redis state) does not "
            "keep one: read visits from the merchant's MQTT topic geopush/visits/{merchant_id}"
        )
    return log


def _own(merchant_id: str, scope: str | None) -> None:
    if scope is not None and scope != merchant_id:
        raise AccessDenied(
            f"a merchant token reads only its own visits (merchant {scope!r}), not {merchant_id!r}"
        )


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return float(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"since={text!r} is not a time: give Unix seconds (1700000000) or ISO 8601 "
            "(2026-12-07T09:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _event_id(text: str | None, what: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidRequest(
            f"{what}={text!r} is not an event id: give the `id` of the last event you got "
            "(a whole number >= 0)"
        )
    return value


@router.get("/{merchant_id}/visits", responses=_ERRORS)
async def list_visits(
    merchant_id: str,
    request: Request,
    scope: MerchantScope,
    since: Annotated[
        str | None, Query(description="events at or after this time: Unix seconds or ISO 8601")
    ] = None,
    store_id: Annotated[str | None, Query(description="only this store's events")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="events per page, 1..1000")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """The merchant's visit events (enter, dwell, exit), oldest first, in pages: each is
    ``{"id", "out_id", "data"}``, ``data`` the MQTT payload."""
    _own(merchant_id, scope)
    after = _event_id(cursor, "cursor") or 0
    t = _since(since)
    log = _log(request)
    await asyncio.to_thread(log.catch_up)
    rows = await asyncio.to_thread(
        log.page, merchant_id, after=after, since=t, store_id=store_id, limit=limit + 1
    )
    out: dict[str, Any] = {"merchant_id": merchant_id, "visits": [r.to_dict() for r in rows[:limit]]}
    if len(rows) > limit:
        out["next_cursor"] = str(rows[limit - 1].seq)
    return out


@router.get("/{merchant_id}/visits/open", responses=_ERRORS)
async def open_visits(
    merchant_id: str,
    request: Request,
    scope: MerchantScope,
    store_id: Annotated[str | None, Query(description="only this store")] = None,
) -> dict[str, Any]:
    """Who is in the merchant's stores now: the enter event of every visit not yet exited,
    by store."""
    _own(merchant_id, scope)
    log = _log(request)
    await asyncio.to_thread(log.catch_up)
    rows = await asyncio.to_thread(log.open_visits, merchant_id, store_id)
    stores: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        d = r.to_dict()
        stores.setdefault(d["data"]["store_id"], []).append(d)
    return {"merchant_id": merchant_id, "open": len(rows), "stores": stores}


@router.get(
    "/{merchant_id}/visits/stream",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}},
                                "description": "Server-Sent Events: `id`, `event: visit`, `data`"}},
)  # fmt: skip
async def stream_visits(
    merchant_id: str,
    request: Request,
    scope: MerchantScope,
    last_event_id: Annotated[
        str | None, Query(description="resume after this event id (or the Last-Event-ID header)")
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The merchant's visit events live, as Server-Sent Events (``id:`` the event id,
    ``event: visit``, ``data:`` the MQTT payload). With a resume id (``Last-Event-ID`` header
    or ``last_event_id``), the events after it come first, each once, then the live ones."""
    _own(merchant_id, scope)
    resume = _event_id(last_event_id_header, "Last-Event-ID")
    if resume is None:
        resume = _event_id(last_event_id, "last_event_id")
    log: VisitLog = _log(request)
    hub: VisitHub = request.state.visit_hub
    sub = hub.subscribe(merchant_id)  # before reading the log: nothing falls in between
    try:
        start = resume if resume is not None else await asyncio.to_thread(log.newest)
    except BaseException:
        hub.unsubscribe(sub)
        raise

    async def events() -> AsyncIterator[bytes]:
        last = start
        try:
            yield b"retry: 1000\n\n"
            if resume is not None:
                await asyncio.to_thread(log.catch_up)
                while True:
                    rows = await asyncio.to_thread(
                        log.page, merchant_id, after=last, limit=_RESUME_PAGE
                    )
                    for r in rows:
                        yield _frame(r.seq, r.payload)
                        last = r.seq
                    if len(rows) < _RESUME_PAGE:
                        break
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item is None:  # dropped (too slow) or the server stops: resume from `last`
                    yield f": stream ended; reconnect with Last-Event-ID: {last}\n\n".encode()
                    return
                seq, payload = item
                if seq > last:  # already sent out of the log
                    yield _frame(seq, payload)
                    last = seq
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _frame(seq: int, payload: bytes) -> bytes:
    return b"id: %d\nevent: visit\ndata: %s\n\n" % (seq, payload)
