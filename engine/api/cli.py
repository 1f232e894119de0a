"""`geopush tokens create|list|revoke` and `geopush stores export`, on the daemon's state file.

Both find the state file as `geopush run` does: --state, GEOPUSH_STATE, or `state = ...` in the
--config file (GEOPUSH_CONFIG). They may run beside a live daemon: a token created or revoked
here counts at the API's next request.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="PATH", help="the daemon's SQLite state file or a group's redis:// URL (or GEOPUSH_STATE)")
    p.add_argument("--config", type=Path, metavar="FILE", help="the daemon's TOML config file")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    from engine.cli import help_and_fail

    tokens = sub.add_parser(
        "tokens",
        help="HTTP API tokens: create, list, revoke (kept hashed in the state file)",
        description=(
            "Manage the HTTP API's tokens (docs/api.md). An operator token sees and changes "
            "everything; a merchant token only its merchant's stores. Only a SHA-256 of each "
            "token is stored: the secret is printed once, at creation."
        ),
    )
    tsub = tokens.add_subparsers(title="actions", metavar="ACTION")
    tokens.set_defaults(func=lambda _a: help_and_fail(tokens))
    create = tsub.add_parser("create", help="create a token and print its secret (once)")
    create.add_argument("--role", choices=["operator", "merchant"], required=True)
    create.add_argument("--merchant-id", help="the merchant a merchant token is limited to")
    create.add_argument("--name", default="", help="a note for `tokens list` (who holds it)")
    _common(create)
    create.set_defaults(func=_create)
    lst = tsub.add_parser("list", help="list tokens (ids, roles, merchants; never secrets)")
    _common(lst)
    lst.set_defaults(func=_list)
    revoke = tsub.add_parser("revoke", help="revoke a token by its id (tok_...)")
    revoke.add_argument("token_id")
    _common(revoke)
    revoke.set_defaults(func=_revoke)

    stores = sub.add_parser(
        "stores",
        help="the live store catalog: export (catalog file plus changes made through the API)",
    )
    ssub = stores.add_subparsers(title="actions", metavar="ACTION")
    stores.set_defaults(func=lambda _a: help_and_fail(stores))
    export = ssub.add_parser(
        "export",
        help="write the catalog the daemon serves: --fences with the API's changes laid over it",
        description=(
            "Write the live catalog: the --fences file with the store changes made through the "
            "HTTP API (kept in the state file) laid over it, as the daemon does at start-up. "
            "Use it to fold the API's changes back into the catalog file."
        ),
    )
    export.add_argument("--fences", type=Path, metavar="FILE", help="the catalog file (baseline)")
    export.add_argument("-o", "--out", type=Path, metavar="FILE", required=True)
    _common(export)
    export.set_defaults(func=_export)


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from engine.daemon.config import load_settings

    config = args.config or (Path(os.environ["GEOPUSH_CONFIG"]) if os.environ.get("GEOPUSH_CONFIG") else None)
    return load_settings({"state": args.state, **extra}, config)


def _state(args: argparse.Namespace) -> Any:
    from engine.api.redis_state import open_api_state

    return open_api_state(_settings(args).state)  # the SQLite file, or a group's Redis


def _create(args: argparse.Namespace) -> int:
    state = _state(args)
    try:
        info, secret = state.create_token(args.role, args.merchant_id, args.name)
    finally:
        state.close()
    scope = f" for merchant {info.merchant_id}" if info.merchant_id else ""
    print(f"created {info.role} token {info.token_id}{scope}; the secret (shown only now):")
    print(secret)
    return 0


def _list(args: argparse.Namespace) -> int:
    import time

    state = _state(args)
    try:
        tokens = state.list_tokens()
    finally:
        state.close()
    if not tokens:
        print("no tokens (create one: geopush tokens create --role operator)", file=sys.stderr)
        return 0
    print(f"{'token_id':<21} {'role':<8} {'merchant_id':<16} {'created (UTC)':<19} {'state':<8} name")
    for t in tokens:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.created))
        status = "revoked" if t.revoked is not None else "active"
        print(f"{t.token_id:<21} {t.role:<8} {t.merchant_id or '-':<16} {created:<19} {status:<8} {t.name}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    state = _state(args)
    try:
        info = state.revoke(args.token_id)
    finally:
        state.close()
    print(f"revoked {info.token_id} ({info.role}{' ' + info.merchant_id if info.merchant_id else ''})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from engine.api.live import overlay_state
    from engine.errors import ConfigError
    from fences.catalog import dump_catalog, load_catalog

    settings = _settings(args, fences=args.fences)
    if settings.fences is None:
        raise ConfigError("give --fences (or GEOPUSH_FENCES, or fences = ... in --config)")
    catalog = load_catalog(settings.fences)
    changes = overlay_state(catalog, settings.state)
    n = dump_catalog(catalog, args.out)
    print(f"{args.out}: {n} stores ({changes} change(s) from {settings.state} over {settings.fences})")
    return 0
