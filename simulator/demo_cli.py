"""`geopush demo`: the first minute with geopush (see simulator/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.cli import positive
from simulator.start import START_FORMS, start_arg


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``geopush demo``."""
    p = sub.add_parser(
        "demo",
        help="a simulated city end to end: broker, engine, publisher, live view, PNG map",
        description=(
            "Generate a small city (stores with fences, WiFi APs and beacons; people with routines "
            "and phones), start an MQTT broker (mosquitto if installed, else an embedded one) "
            "unless --broker names one, run the geopush engine and replay the city's day through "
            "the broker, accelerated to fit --duration. A live view shows events/s, visits, "
            "pushes, event-to-push latency and the top campaigns. At the end (time up, trace "
            "finished, or Ctrl-C) it prints a summary and writes visits, pushes and a PNG map of "
            "the city to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=positive(float), default=60.0, metavar="SECONDS",
                   help="wall-clock seconds to run; the city's day is accelerated to fit")  # fmt: skip
    p.add_argument("--broker", metavar="URL", default=None,
                   help="use this broker (mqtt://host:port) instead of starting an embedded one")  # fmt: skip
    p.add_argument("--stores", type=positive(int), default=300, metavar="N",
                   help="stores in the city")  # fmt: skip
    p.add_argument("--users", type=positive(int), default=300, metavar="M",
                   help="people (phones) in the city")  # fmt: skip
    p.add_argument("--start", type=start_arg(absolute=False), default="12", metavar="WHEN",
                   help=f"where the played window starts, from 06 to 24: {START_FORMS} (the city "
                        "is simulated from 06:00, when people leave home)")  # fmt: skip
    p.add_argument("--hours", type=positive(float), default=1.0, metavar="H",
                   help="hours of city time played, accelerated to fit --duration")  # fmt: skip
    p.add_argument("--seed", type=int, default=7, metavar="S",
                   help="random seed: the same seed gives the same city")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("geopush-demo"), metavar="DIR",
                   help="where the city, visits.jsonl, pushes.jsonl, summary.json and map.png go")  # fmt: skip
    p.add_argument("--no-live", dest="live", action="store_false", default=None,
                   help="print a progress line every few seconds instead of the live view "
                        "(automatic when stdout is not a terminal)")  # fmt: skip
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from simulator.demo import DemoOptions, run_demo

    opts = DemoOptions(
        duration=args.duration,
        broker=args.broker,
        stores=args.stores,
        users=args.users,
        start_hour=args.start.hour,
        hours=args.hours,
        seed=args.seed,
        out=args.out,
        live=args.live,
    )
    return run_demo(opts).exit_code
