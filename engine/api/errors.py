"""Errors of the HTTP API's domain (mapped to HTTP statuses once, in engine/api/app.py).

    GeopushError (engine.errors)
    └── ApiError            a request the API refuses; ``status`` is its HTTP status
        ├── AuthError       401: no token, or an unknown or revoked one
        ├── AccessDenied    403: the token may not do this (a merchant acting for another)
        ├── NotFound        404: no such store or token (for a merchant: none of its own)
        ├── Conflict        409: the store_id belongs to another merchant
        ├── InvalidRequest  422: the request is malformed; ``problems`` says what to fix
        └── NotInGroup      503: a worker group does not serve this (it needs a single daemon
                            with a SQLite state file); the detail says what to do

Also mapped: fences' ``CatalogError`` (422, its problems), ``UnknownStoreError`` (404),
``StateError`` / ``TransportError`` (503).
"""

from __future__ import annotations

from engine.errors import GeopushError


class ApiError(GeopushError):
    status = 400

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class AuthError(ApiError):
    status = 401


class AccessDenied(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class InvalidRequest(ApiError):
    status = 422


class NotInGroup(ApiError):
    status = 503


__all__ = [
    "AccessDenied",
    "ApiError",
    "AuthError",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "NotInGroup",
]
