"""/v1/merchants/{merchant_id}/webhooks: a merchant's webhook endpoints (engine/daemon/webhooks.py
delivers to them). A merchant token manages its own merchant's; an operator token any. In a
worker group they are kept in Redis (engine/daemon/webhooks_redis.py), shared by every worker."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, status

from engine.api.deps import MerchantScope, State
from engine.api.errors import AccessDenied, InvalidRequest, NotFound
from engine.api.models import ErrorOut, WebhookCreate, WebhookCreated, WebhookOut
from engine.api.redis_state import RedisApiState
from engine.daemon.webhooks import EVENT_TYPES, Endpoint, WebhookQueue, WebhookStore

router = APIRouter(prefix="/merchants/{merchant_id}/webhooks", tags=["webhooks"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no token, or an unknown or revoked one"},
    403: {"model": ErrorOut, "description": "a merchant token acting for another merchant"},
    404: {"model": ErrorOut, "description": "no such endpoint for this merchant"},
    422: {"model": ErrorOut, "description": "invalid input: `problems` lists each one"},
    503: {"model": ErrorOut, "description": "the state (file or Redis) failed"},
}


async def get_webhooks(request: Request, state: State) -> WebhookQueue:
    """The endpoints' store, on one connection of the app's (made at the first request): the
    SQLite state file's tables, or a worker group's Redis."""
    store: WebhookQueue | None = getattr(request.app.state, "webhook_store", None)
    if store is None or getattr(store, "path", None) != state.path:
        if isinstance(state, RedisApiState):
            from engine.daemon.webhooks_redis import RedisWebhookStore

            store = RedisWebhookStore(state.url)
        else:
            store = WebhookStore(state.path)
        request.app.state.webhook_store = store
    return store


Webhooks = Annotated[WebhookQueue, Depends(get_webhooks)]


def _merchant(merchant_id: str, scope: str | None) -> str:
    if scope is not None and scope != merchant_id:
        raise AccessDenied(
            f"this token is limited to merchant {scope!r}; use /v1/merchants/{scope}/webhooks"
        )
    return merchant_id


def _own(store: WebhookQueue, merchant_id: str, endpoint_id: str) -> Endpoint:
    ep = store.get(endpoint_id)
    if ep is None or ep.merchant_id != merchant_id:
        raise NotFound(
            f"no webhook {endpoint_id!r} for merchant {merchant_id!r}; "
            f"GET /v1/merchants/{merchant_id}/webhooks lists them"
        )
    return ep


def _check(body: WebhookCreate) -> None:
    problems = []
    parts = urlsplit(body.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(
            f"url {body.url!r} is not an absolute http(s) URL; give e.g. https://example.com/hooks"
        )
    bad = [e for e in body.events or () if e not in EVENT_TYPES]
    if bad:
        problems.append(f"unknown event type(s) {bad}; choose among {list(EVENT_TYPES)}")
    if body.events == []:
        problems.append(f"events is empty; omit it for all of {list(EVENT_TYPES)}")
    if problems:
        raise InvalidRequest("the webhook is invalid", problems)


@router.post(
    "", response_model=WebhookCreated, status_code=status.HTTP_201_CREATED, responses=_ERRORS
)
async def create_webhook(
    merchant_id: str, body: WebhookCreate, scope: MerchantScope, hooks: Webhooks
) -> dict[str, Any]:
    """Register an endpoint for this merchant's visit events and pushes (those committed from
    now on). The response holds the signing ``secret``, once."""
    _check(body)
    ep = hooks.create(_merchant(merchant_id, scope), body.url, body.events or None, body.description)
    return ep.to_dict(with_secret=True)


@router.get("", response_model=list[WebhookOut], responses=_ERRORS)
async def list_webhooks(
    merchant_id: str, scope: MerchantScope, hooks: Webhooks
) -> list[dict[str, Any]]:
    """This merchant's endpoints: filters, consecutive failures, paused or not, queue length."""
    return [e.to_dict() for e in hooks.endpoints(_merchant(merchant_id, scope))]


@router.get("/{endpoint_id}", response_model=WebhookOut, responses=_ERRORS)
async def get_webhook(
    merchant_id: str, endpoint_id: str, scope: MerchantScope, hooks: Webhooks
) -> dict[str, Any]:
    return _own(hooks, _merchant(merchant_id, scope), endpoint_id).to_dict()


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_webhook(
    merchant_id: str, endpoint_id: str, scope: MerchantScope, hooks: Webhooks
) -> None:
    """Remove the endpoint and drop what it has not received yet."""
    _own(hooks, _merchant(merchant_id, scope), endpoint_id)
    hooks.delete(endpoint_id)


@router.post("/{endpoint_id}/resume", response_model=WebhookOut, responses=_ERRORS)
async def resume_webhook(
    merchant_id: str, endpoint_id: str, scope: MerchantScope, hooks: Webhooks
) -> dict[str, Any]:
    """Restart a paused endpoint: its kept queue is delivered from the oldest."""
    _own(hooks, _merchant(merchant_id, scope), endpoint_id)
    hooks.resume(endpoint_id)
    return _own(hooks, merchant_id, endpoint_id).to_dict()
