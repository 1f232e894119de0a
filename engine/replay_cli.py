"""``geopush replay``: run the core over a recorded trace (see engine/replay.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

# CoreConfig field -> (its default, help). Defaults are repeated here so that `geopush --help`
# does not import the core (numpy, shapely); tests/engine/test_replay.py checks they agree.
TUNING: dict[str, tuple[float, str]] = {  # (an int default makes an int flag)
    "exit_margin_m": (20.0, "GPS exit margin in metres: a fix exits when distance > accuracy + this"),
    "presence_timeout_s": (900.0, "exit a visit when nothing placed the user in the store for this long"),
    "wifi_rssi_min": (-75.0, "weakest RSSI (dBm) of a registered BSSID that counts as presence"),
    "beacon_rssi_min": (-80.0, "weakest RSSI (dBm) of a store beacon that counts as presence"),
    "max_speed_kmh": (250.0, "fixes implying a faster move than this are rejected as suspected spoofing"),
    "claim_window_s": (60.0, "how long a WiFi/beacon/NFC sighting outranks GPS and weaker signals"),
    "switch_db": (3.0, "how much stronger (dB) a same-kind sighting of another store must be to win"),
    "watermark_quorum": (3, "the sweep's event time moves only to a time this many distinct users reached"),
    "max_skew_s": (300.0, "seconds within which those users' latest event times must lie (docs/architecture.md)"),
}


ATTRIBUTION_WINDOW_S = 7 * 86400.0  # engine.loop.ATTRIBUTION_WINDOW_S (checked by tests)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a recorded trace through the engine offline (visits, pushes, summary)",
        description=(
            "Run the engine's core over TRACE (JSON Lines, one wire event per line, optionally "
            ".gz) in event time, exactly as the daemon would, and write DIR/visits.jsonl, "
            "DIR/pushes.jsonl, DIR/holdouts.jsonl, DIR/redemptions.jsonl, DIR/orders.jsonl (see "
            "`geopush report`), DIR/deadletter.jsonl (bad lines with line number and reason) and "
            "DIR/summary.json. The same inputs give byte-identical outputs."
        ),
    )
    p.add_argument("trace", metavar="TRACE.jsonl", help="the trace to replay")
    p.add_argument("--fences", required=True, metavar="STORES.geojson", help="store catalog (GeoJSON)")
    p.add_argument(
        "--campaigns", required=True, metavar="CAMPAIGNS", help="campaign file, JSON or YAML (docs/campaigns.md)"
    )
    p.add_argument(
        "--fences-snapshot",
        metavar="FILE",
        help="start from this compiled snapshot of --fences (catalog + index), written when missing or "
        "stale: repeated replays of a large catalog skip its validation (default: none)",
    )
    p.add_argument("--profiles", metavar="USERS.jsonl", help="user tags and opt-outs, one JSON object per line")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--batch-size", type=int, default=1024, metavar="N", help="events per micro-batch (default 1024)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("closing the loop (docs/architecture.md)")
    g.add_argument(
        "--coupon-secret",
        default=None,
        metavar="TEXT",
        help="key of the coupon codes (MAC key); default: GEOPUSH_COUPON_SECRET, else a fixed public "
        "value so that replays are reproducible. Never reuse the daemon's secret in a replay "
        "you share",
    )
    g.add_argument(
        "--attribution-window-s",
        type=float,
        default=ATTRIBUTION_WINDOW_S,
        metavar="X",
        help="a payment is attributed to the user's latest push from the merchant within this "
        f"many seconds before it (default {ATTRIBUTION_WINDOW_S:g} = 7 days)",
    )
    g = p.add_argument_group("presence tuning")
    for name, (default, text) in TUNING.items():
        g.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=default,
            metavar="X",
            help=f"{text} (default {default:g})",
        )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from engine.core import CoreConfig
    from engine.errors import ConfigError
    from engine.replay import replay

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if not args.attribution_window_s >= 0:
        raise ConfigError("--attribution-window-s must be a number of seconds >= 0")
    cfg = dataclasses.replace(CoreConfig(), **{k: getattr(args, k) for k in TUNING})
    cfg = dataclasses.replace(cfg, attribution_window_s=args.attribution_window_s)
    secret = args.coupon_secret or os.environ.get("GEOPUSH_COUPON_SECRET")
    if secret:
        cfg = dataclasses.replace(cfg, coupon_secret=secret)
    summary = replay(
        args.trace,
        args.fences,
        args.campaigns,
        args.profiles,
        out_dir=args.out,
        progress=not args.no_progress and sys.stderr.isatty(),
        config=cfg,
        batch_size=args.batch_size,
        on_warning=lambda w: print(f"geopush: warning: {w}", file=sys.stderr),
        fences_snapshot=args.fences_snapshot,
    )
    v = summary["visits"]
    print(
        f"{summary['events']} events from {summary['lines']} lines "
        f"({summary['deadletter']} dead-lettered); visits: {v['enter']} enter, {v['dwell']} dwell, "
        f"{v['exit']} exit; pushes: {summary['pushes']}; suspected spoofing: "
        f"{summary['spoofing_suspected']}. Files in {args.out}/"
    )
    return 0
