"""Authentication as dependencies: ``CurrentPrincipal`` (any live token), ``MerchantScope``
(the merchant the caller is limited to, None for an operator: routes pass it to every
operation, which refuses what lies outside it) and ``OperatorPrincipal`` (an operator token).

Tokens come as ``Authorization: Bearer <token>``; each request hashes the token and looks the
hash up in the state file, so a token created or revoked by ``geopush tokens`` counts at once.
Every dependency and handler is ``async``: they run on the API's event loop (its own process
under ``geopush run --http``), never in a worker thread (FastAPI runs plain ``def`` ones in
threads), so the live catalog is only ever changed from that loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.api.errors import AccessDenied, AuthError, NotInGroup
from engine.api.live import LiveStores
from engine.api.state import ApiState, Principal

_bearer = HTTPBearer(auto_error=False, description="an API token (`geopush tokens create`)")

# The console's sign-in cookie (HttpOnly, SameSite=Strict; engine/api/console): it holds the token
# and stands in for the Authorization header on GET requests only (the browser's EventSource
# cannot send headers), so no cookie alone can change anything through /v1.
CONSOLE_COOKIE = "geopush_console"


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.state.api_state
    return state


async def get_stores(request: Request) -> LiveStores:
    stores: LiveStores = request.state.live_stores
    return stores


State = Annotated[ApiState, Depends(get_state)]
Stores = Annotated[LiveStores, Depends(get_stores)]


async def get_principal(
    request: Request,
    state: State,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if (creds is None or not creds.credentials) and request.method in ("GET", "HEAD"):
        cookie = request.cookies.get(CONSOLE_COOKIE)
        if cookie:
            creds = HTTPAuthorizationCredentials(scheme="Bearer", credentials=cookie)
    if creds is None or not creds.credentials:
        raise AuthError(
            "no API token: send `Authorization: Bearer <token>` (create one with "
            "`geopush tokens create`)"
        )
    principal = state.authenticate(creds.credentials)
    if principal is None:
        raise AuthError("unknown or revoked API token")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_operator(principal: CurrentPrincipal) -> Principal:
    if principal.role != "operator":
        raise AccessDenied("this needs an operator token")
    return principal


OperatorPrincipal = Annotated[Principal, Depends(get_operator)]


async def get_scope(principal: CurrentPrincipal) -> str | None:
    return principal.scope


MerchantScope = Annotated[str | None, Depends(get_scope)]


def group_refusal(what: str) -> NotInGroup:
    """The 503 a worker group answers for ``what`` it does not serve."""
    return NotInGroup(
        f"{what} need(s) a single daemon with a SQLite state file (--state FILE); a worker group "
        "(--group, Redis state) serves stores, tokens and webhooks only: call a single daemon "
        "for this (docs/api.md, \"In a worker group\")"
    )


def sqlite_only(state_path: object, what: str) -> None:
    """Refuse, with a 503 that says why, what only a SQLite state file keeps (the visit and
    outcome logs, campaigns' versions) when the daemon runs on a group's Redis."""
    from engine.api.redis_state import is_redis_url

    if is_redis_url(state_path):
        raise group_refusal(what)


def not_in_group(what: str) -> Callable[[], Awaitable[None]]:
    """A dependency for a router a worker group does not serve: every route answers 503 (with
    what to do) before anything else runs (create_app adds it in a group)."""

    async def refuse() -> None:
        raise group_refusal(what)

    return refuse
