"""``FastStores``: the API's hot store calls answered without FastAPI's per-request machinery.

The API's process serves the requests on one event loop (and shares the machine's cores with the
engine), so every microsecond a request spends in Python counts. FastAPI's routing, dependency injection and response-model
validation cost ~1 ms a request; the three calls an integration makes all the time (`GET
/v1/stores/{id}`, a page of `GET /v1/stores`, `PUT /v1/stores/{id}`) are answered here, in
front of the FastAPI app, with the same operations (``LiveStores``), the same token check
(``ApiState.authenticate``), the same error handlers (``engine.api.app``'s table) and the same
JSON (orjson, one encode). Anything else, or anything unusual (no ``Authorization: Bearer``
header, an unknown or revoked token, a query it does not know how to read), passes through to
the FastAPI app untouched, which answers it as documented.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from engine.api.live import LiveStores, listing_ready, prepare_listing
from engine.api.state import Principal
from fences.catalog import to_feature

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/v1/stores"
_JSON = [(b"content-type", b"application/json")]
_LIST_PARAMS = {"merchant_id", "bbox", "limit", "cursor"}


class FastStores:
    """ASGI middleware over the FastAPI ``app``; ``handlers`` maps exception classes to the app's
    error handlers (``(request, exc) -> Response``)."""

    def __init__(self, app: ASGIApp, handlers: dict[Any, Any]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = _kind(scope) if scope["type"] == "http" else None
        state = scope.get("state") or {}
        stores = state.get("live_stores")
        api_state = state.get("api_state")
        principal = None
        if kind is not None and stores is not None and api_state is not None:
            principal = _principal(scope, api_state)
        if principal is None:  # the FastAPI app answers (and refuses) as documented
            await self.app(scope, receive, send)
            return
        assert kind is not None and isinstance(stores, LiveStores)
        try:
            if kind == "get":
                body = to_feature(stores.get(_store_id(scope), principal.scope))
                status = 200
            elif kind == "put":
                store, created = stores.put(_store_id(scope), await _body(receive), principal.scope)
                body, status = to_feature(store), 201 if created else 200
            else:
                query = _query(scope)
                if query is None:
                    await self.app(scope, receive, send)
                    return
                body, status = await _list(stores, principal, query), 200
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            from starlette.requests import Request

            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        data = orjson.dumps(body)
        headers = [*_JSON, (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def _handler(self, exc: Exception) -> Any:
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None


def _kind(scope: Scope) -> str | None:
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    method = scope["method"]
    if rest == "":
        return "list" if method == "GET" else None
    if rest[0] != "/" or "/" in rest[1:] or rest in ("/", "/import") or scope["query_string"]:
        return None
    return {"GET": "get", "PUT": "put"}.get(method)


def _store_id(scope: Scope) -> str:
    return str(scope["path"][len(PREFIX) + 1 :])


def _principal(scope: Scope, api_state: Any) -> Principal | None:
    """The caller of a request with ``Authorization: Bearer <token>`` of a live token; None
    otherwise (the FastAPI app then answers: the console's cookie, or a 401)."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            found: Principal | None = api_state.authenticate(token)
            return found
    return None


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _query(scope: Scope) -> dict[str, Any] | None:
    """The list's query as ``LiveStores.find`` takes it; None for one FastAPI should judge."""
    raw = scope["query_string"].decode("latin-1")
    pairs = dict(parse_qsl(raw, keep_blank_values=True))  # the last of a repeated name wins
    query: dict[str, Any] = {k: v for k, v in pairs.items() if k in _LIST_PARAMS}
    if "limit" in query:
        try:
            query["limit"] = int(query["limit"])
        except ValueError:
            return None  # FastAPI's 422
    return query


async def _list(stores: LiveStores, principal: Principal, query: dict[str, Any]) -> dict[str, Any]:
    scope = principal.scope
    filtered = query.get("merchant_id") is not None or query.get("bbox") is not None
    if (filtered or scope is not None) and not listing_ready(stores.catalog):
        # the filter's table is built off the event loop, once per catalog (engine/api/live.py)
        await asyncio.to_thread(prepare_listing, stores.catalog)
    page, nxt = stores.find(
        scope,
        merchant_id=query.get("merchant_id"),
        bbox=query.get("bbox"),
        limit=query.get("limit", 100),
        cursor=query.get("cursor"),
    )
    out: dict[str, Any] = {"type": "FeatureCollection", "features": [to_feature(s) for s in page]}
    if nxt is not None:
        out["next_cursor"] = nxt
    return out


__all__ = ["FastStores"]
