"""The hot store calls answered in front of FastAPI (engine/api/fast.py) answer exactly as the
FastAPI app does, and a response goes out in one write (engine/api/server.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from engine.api.app import _HANDLERS
from engine.api.fast import FastStores
from engine.api.live import FenceTarget, LiveStores
from engine.api.state import ApiState
from fences.catalog import load_catalog
from fences.index import FenceIndex

from .conftest import SEED, circle


class _Inner:
    """Stands in for the FastAPI app behind the fast path: records what reaches it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _call(app: Any, state: dict[str, Any], method: str, path: str, token: str | None,
                body: bytes = b"", query: bytes = b"") -> tuple[int, Any]:  # fmt: skip
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": headers, "state": state}  # fmt: skip
    out: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        out.append(message)

    await app(scope, receive, send)
    data = b"".join(m.get("body", b"") for m in out[1:])
    return out[0]["status"], (json.loads(data) if data else None)


async def test_the_hot_store_calls_do_not_reach_fastapi_and_the_rest_does(tmp_path: Path) -> None:
    (tmp_path / "f.geojson").write_text(json.dumps(SEED))
    index = FenceIndex(load_catalog(tmp_path / "f.geojson"))
    st = ApiState(tmp_path / "state.db")
    _info, op = st.create_token("operator")
    _info, m2 = st.create_token("merchant", "m2")
    inner = _Inner()
    app = FastStores(inner, _HANDLERS)
    state = {"api_state": st, "live_stores": LiveStores(FenceTarget(lambda: index), st)}
    try:
        status, body = await _call(app, state, "GET", "/v1/stores/s1", op)
        assert (status, body["properties"]["store_id"]) == (200, "s1")
        status, body = await _call(app, state, "GET", "/v1/stores", op, query=b"merchant_id=m1")
        assert [f["properties"]["store_id"] for f in body["features"]] == ["s1", "s2"]
        s9 = json.dumps(circle("s9", "m1", 24.0, 60.0)).encode()
        assert (await _call(app, state, "PUT", "/v1/stores/s9", op, s9))[0] == 201
        assert index.catalog.get("s9").merchant_id == "m1"
        # errors through the app's own handlers
        status, body = await _call(app, state, "GET", "/v1/stores/s1", m2)
        assert (status, body["error"]) == (404, "NotFound")
        status, body = await _call(app, state, "PUT", "/v1/stores/s8", op, s9)
        assert (status, body["error"]) == (422, "InvalidRequest")
        assert inner.paths == []
        # everything else is FastAPI's: other routes, no or unknown token, an odd query
        assert (await _call(app, state, "GET", "/v1/tokens", op))[0] == 599
        assert (await _call(app, state, "GET", "/v1/stores/s1", None))[0] == 599
        assert (await _call(app, state, "GET", "/v1/stores/s1", "gp_nope"))[0] == 599
        assert (await _call(app, state, "GET", "/v1/stores", op, query=b"limit=x"))[0] == 599
        assert (await _call(app, state, "DELETE", "/v1/stores/s1", op))[0] == 599
        assert len(inner.paths) == 5
    finally:
        st.close()


async def test_fast_answers_equal_fastapis(api) -> None:  # type: ignore[no-untyped-def]
    """The same calls through the fast path (a bearer token) and through FastAPI (the console's
    cookie stands in for the token on GETs): the same statuses and bodies."""
    secret = api.tokens["m1"]
    async with api.client("m1") as fast, httpx.AsyncClient(
        base_url=api.url, cookies={"geopush_console": secret}, timeout=10.0
    ) as slow:
        for path, params in [
            ("/v1/stores/s1", None),
            ("/v1/stores/s3", None),  # m2's: 404
            ("/v1/stores", None),
            ("/v1/stores", {"limit": "1"}),
            ("/v1/stores", {"bbox": "24.9,60.1,24.96,60.2", "limit": "1", "cursor": "0"}),
            ("/v1/stores", {"merchant_id": "m2"}),  # 403
            ("/v1/stores", {"bbox": "nonsense"}),  # 422
            ("/v1/stores", {"limit": "0"}),  # 422
        ]:
            a, b = await fast.get(path, params=params), await slow.get(path, params=params)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), (path, params)
            assert a.headers["content-type"] == b.headers["content-type"]
