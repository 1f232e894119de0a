"""API test fixtures: the real app under uvicorn (in-process, the test's loop, a free port) over a
real fence index and a real SQLite state file, and httpx clients over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.api.live import FenceTarget
from engine.api.server import ApiServer
from engine.api.state import ApiState
from fences.catalog import load_catalog
from fences.index import FenceIndex


def circle(store_id: str, merchant_id: str, lon: float, lat: float, r: float = 30.0, **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"store_id": store_id, "merchant_id": merchant_id, "radius_m": r, **props},
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }


def square(store_id: str, merchant_id: str, lon: float, lat: float, d: float = 0.001, **props: Any) -> dict[str, Any]:
    ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
    return {
        "type": "Feature",
        "properties": {"store_id": store_id, "merchant_id": merchant_id, **props},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def tokens(state: Path) -> dict[str, dict[str, str]]:
    """An operator token and merchant tokens for m1 and m2 in ``state``, as request headers."""
    from engine.api.state import ApiState

    st = ApiState(state)
    made = {
        "op": st.create_token("operator")[1],
        "m1": st.create_token("merchant", "m1")[1],
        "m2": st.create_token("merchant", "m2")[1],
    }
    st.close()
    return {who: {"Authorization": f"Bearer {secret}"} for who, secret in made.items()}


# Two merchants in Helsinki, one in Tampere.
SEED = collection(
    circle("s1", "m1", 24.9400, 60.1700, wifi=["a4:2b:b0:c1:d2:e3"]),
    square("s2", "m1", 24.9500, 60.1700),
    circle("s3", "m2", 23.7600, 61.4980),
)


@dataclass
class Api:
    url: str
    index: FenceIndex
    state: Path
    tokens: dict[str, str] = field(default_factory=dict)  # name -> secret
    token_ids: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def client(self, who: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    fences = tmp_path / "fences.geojson"
    fences.write_text(json.dumps(SEED))
    index = FenceIndex(load_catalog(fences))
    state = tmp_path / "state.db"
    st = ApiState(state)
    made = {
        "op": st.create_token("operator", name="ops"),
        "m1": st.create_token("merchant", "m1"),
        "m2": st.create_token("merchant", "m2"),
    }
    st.close()
    handle = Api("", index, state)
    for who, (info, secret) in made.items():
        handle.tokens[who] = secret
        handle.token_ids[who] = info.token_id
    server = ApiServer("127.0.0.1:0", state, FenceTarget(lambda: index, handle.removed.extend))
    await server.start()
    handle.url = f"http://127.0.0.1:{server.port}"
    try:
        yield handle
    finally:
        await server.stop()
