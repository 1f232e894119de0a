"""``geopush report``: pushes, redemptions, attributed orders and lift (see engine/report.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "report",
        help="what the pushes did: visits, pushes, redemptions, attributed orders, lift",
        description=(
            "Per merchant and campaign: visits (new / returning), pushes, held-out decisions, "
            "redemptions, attributed orders and revenue, new customers and followers gained, and "
            "the lift of pushed over held-out users with a 95% confidence interval ('not enough "
            "data' for small samples). SOURCE is a `geopush replay --out` folder or the daemon's "
            "SQLite state file (its outbox keeps the newest outputs). Methods: docs/architecture.md."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="replay output folder, or the daemon's state file")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--png", metavar="FILE.png", help="also draw a chart into this PNG file")
    p.add_argument(
        "--pushes",
        metavar="FILE.jsonl",
        help="also write one line per push: delivered, redeemed, first attributed order and value",
    )
    p.add_argument(
        "--min-users",
        type=int,
        default=30,
        metavar="N",
        help="users needed in each arm (pushed, held out) before a lift is estimated (default 30)",
    )
    p.add_argument(
        "--min-conversions",
        type=int,
        default=5,
        metavar="N",
        help="converted users needed in both arms together (default 5)",
    )
    p.add_argument(
        "--attribution-window-s",
        type=float,
        default=None,
        metavar="S",
        help="the engine's attribution window, where each user's lift window ends after their "
        "first decision (default: the engine's default, 7 days; give the value the replay or "
        "daemon ran with)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.loop import ATTRIBUTION_WINDOW_S
    from engine.report import (
        build_report,
        format_table,
        load_delivered,
        load_outputs,
        push_records,
        render_png,
    )

    if args.min_users < 1 or args.min_conversions < 0:
        raise ConfigError("--min-users must be at least 1 and --min-conversions at least 0")
    window = args.attribution_window_s
    if window is None:
        window = ATTRIBUTION_WINDOW_S
    if not window >= 0:
        raise ConfigError("--attribution-window-s must be a number of seconds >= 0")
    outputs = load_outputs(args.source)
    delivered = load_delivered(args.source)
    rep = build_report(
        outputs,
        delivered=delivered,
        min_users=args.min_users,
        min_conversions=args.min_conversions,
        window_s=window,
    )
    if args.pushes:
        lines = [json.dumps(r, sort_keys=True) + "\n" for r in push_records(outputs, delivered)]
        try:
            with open(args.pushes, "w", encoding="utf-8") as f:
                f.writelines(lines)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.pushes}: {exc}") from exc
    if args.png:
        try:
            render_png(rep, args.png)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.png}: {exc}") from exc
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
    else:
        print(format_table(rep))
    return 0
