"""/v1/tokens: API tokens (operator only); also `geopush tokens` on the state file."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from engine.api.deps import OperatorPrincipal, State
from engine.api.models import ErrorOut, TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/tokens", tags=["tokens"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    403: {"model": ErrorOut, "description": "not an operator token"},
}


@router.get("", response_model=list[TokenOut], responses=_ERRORS)
async def list_tokens(_op: OperatorPrincipal, state: State) -> list[dict[str, Any]]:
    """Every token (never the secrets), revoked ones included."""
    return [t.to_dict() for t in state.list_tokens()]


@router.post(
    "", response_model=TokenCreated, status_code=status.HTTP_201_CREATED, responses=_ERRORS
)
async def create_token(body: TokenCreate, _op: OperatorPrincipal, state: State) -> dict[str, Any]:
    """A new token; the secret is in the response once and never again."""
    info, secret = state.create_token(body.role, body.merchant_id, body.name)
    return {**info.to_dict(), "token": secret}


@router.delete("/{token_id}", response_model=TokenOut, responses={**_ERRORS, 404: {"model": ErrorOut}})
async def revoke_token(token_id: str, _op: OperatorPrincipal, state: State) -> dict[str, Any]:
    """Revoke a token: refused from the next request on."""
    return state.revoke(token_id).to_dict()
