"""pydantic models of the API's JSON bodies.

Stores travel as GeoJSON Features exactly as in the catalog file (docs/catalog.md): the models
below describe that format for the OpenAPI schema and the responses; requests are validated by
fences/ (as ``geopush fences check`` does), so the API and the file accept the same stores.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StoreProperties(BaseModel):
    """A store's properties (other members are kept verbatim)."""

    model_config = ConfigDict(extra="allow")

    store_id: str
    merchant_id: str
    name: str | None = None
    radius_m: float | None = Field(None, description="metres, for a Point (a circular fence)")
    wifi: list[str] | None = Field(None, description="BSSIDs, e.g. 'a4:2b:b0:c1:d2:e3'")
    beacons: list[str] | None = Field(None, description="'UUID:major:minor'")
    nfc: list[str] | None = None
    tz: str | None = Field(None, description="IANA time zone (default UTC)")
    max_accuracy_m: float | None = None
    tags: list[str] | None = None


class StoreFeature(BaseModel):
    """One store: a GeoJSON Feature, a Point with radius_m, a Polygon or a MultiPolygon."""

    model_config = ConfigDict(extra="allow")

    type: Literal["Feature"] = "Feature"
    properties: StoreProperties
    geometry: dict[str, Any]


class StorePage(BaseModel):
    """A page of stores: a FeatureCollection (a valid catalog) plus the next page's cursor."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[StoreFeature]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page")


class StoreCollection(BaseModel):
    """A catalog: a GeoJSON FeatureCollection of stores (the bulk import's body)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[StoreFeature]


class ImportResult(BaseModel):
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    dry_run: bool


class ProblemOut(BaseModel):
    index: int | None = Field(None, description="the feature's position in a FeatureCollection")
    store_id: str | None = None
    reason: str


class ErrorOut(BaseModel):
    """Every error response: what went wrong and, for invalid input, each problem."""

    error: str
    detail: str
    problems: list[ProblemOut] = []


class TokenCreate(BaseModel):
    role: Literal["operator", "merchant"]
    merchant_id: str | None = None
    name: str = ""


class TokenOut(BaseModel):
    token_id: str
    role: Literal["operator", "merchant"]
    merchant_id: str | None
    name: str
    created: float
    revoked: float | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown once, only its SHA-256 is kept")


class WebhookCreate(BaseModel):
    url: str = Field(description="where to POST: an absolute http(s) URL")
    events: list[str] | None = Field(
        None,
        description="event types to send: visit.enter, visit.dwell, visit.exit, push (omit: all)",
    )
    description: str = ""


class WebhookOut(BaseModel):
    endpoint_id: str
    merchant_id: str
    url: str
    events: list[str]
    description: str
    created: float
    failures: int = Field(description="consecutive failed attempts")
    paused: float | None = Field(description="when it was paused as dead (POST .../resume)")
    pause_reason: str | None
    pending: int = Field(description="outputs queued for it, not yet delivered")


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret (whsec_...); shown once")
