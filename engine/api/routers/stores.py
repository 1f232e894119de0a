"""/v1/stores: the live store catalog (GeoJSON Features, as in the catalog file)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from engine.api.deps import MerchantScope, Stores
from engine.api.live import prepare_listing
from engine.api.models import (
    ErrorOut,
    ImportResult,
    StoreCollection,
    StoreFeature,
    StorePage,
)
from fences.catalog import to_feature

router = APIRouter(prefix="/stores", tags=["stores"])

_REF = "#/components/schemas/{model}"
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no token, or an unknown or revoked one"},
    403: {"model": ErrorOut, "description": "a merchant token acting for another merchant"},
    404: {"model": ErrorOut, "description": "no such store (a merchant sees only its own)"},
    422: {"model": ErrorOut, "description": "invalid input: `problems` lists each one"},
    503: {"model": ErrorOut, "description": "the state file failed"},
}


def _body(model: type[StoreFeature] | type[StoreCollection]) -> dict[str, Any]:
    """The request body's schema for the docs (the body itself is validated by fences/)."""
    schema = model.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }


@router.get("", response_model=StorePage, response_model_exclude_unset=True, responses=_ERRORS)
async def list_stores(
    scope: MerchantScope,
    stores: Stores,
    merchant_id: Annotated[str | None, Query(description="only this merchant's stores")] = None,
    bbox: Annotated[
        str | None, Query(description="west,south,east,north: stores whose fence meets the box")
    ] = None,
    limit: Annotated[int, Query(description="stores per page, 1..1000")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Live stores (a merchant token sees its own), in pages: a FeatureCollection."""
    if merchant_id is not None or bbox is not None or scope is not None:
        # the filter's table is built off the event loop, once per catalog (engine/api/live.py)
        await asyncio.to_thread(prepare_listing, stores.catalog)
    page, nxt = stores.find(
        scope, merchant_id=merchant_id, bbox=bbox, limit=limit, cursor=cursor
    )
    out: dict[str, Any] = {"type": "FeatureCollection", "features": [to_feature(s) for s in page]}
    if nxt is not None:
        out["next_cursor"] = nxt
    return out


@router.post(
    "/import", response_model=ImportResult, responses=_ERRORS, openapi_extra=_body(StoreCollection)
)
async def import_stores(
    request: Request, scope: MerchantScope, stores: Stores, dry_run: bool = False
) -> dict[str, Any]:
    """Upsert a FeatureCollection by store_id, all or nothing; reports created, updated and
    unchanged store ids (``dry_run``: report only)."""
    # validating a large collection is pure work: off the event loop
    parsed = await asyncio.to_thread(stores.parse_collection, await request.body())
    return stores.import_collection(parsed, scope, dry_run=dry_run).to_dict()


@router.get(
    "/{store_id}",
    response_model=StoreFeature,
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def get_store(store_id: str, scope: MerchantScope, stores: Stores) -> dict[str, Any]:
    """One store as a GeoJSON Feature."""
    return to_feature(stores.get(store_id, scope))


@router.put(
    "/{store_id}",
    response_model=StoreFeature,
    response_model_exclude_unset=True,
    responses={**_ERRORS, 201: {"model": StoreFeature, "description": "created"}},
    openapi_extra=_body(StoreFeature),
)
async def put_store(
    store_id: str, request: Request, response: Response, scope: MerchantScope, stores: Stores
) -> dict[str, Any]:
    """Create or replace one store (a GeoJSON Feature, validated as `geopush fences check`
    does). Takes effect on the event path at once and is kept in the state file."""
    store, created = stores.put(store_id, await request.body(), scope)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return to_feature(store)


@router.delete("/{store_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_store(store_id: str, scope: MerchantScope, stores: Stores) -> None:
    """Remove a store: it stops matching at once; open visits there exit (cause ``removed``)."""
    stores.delete(store_id, scope)
