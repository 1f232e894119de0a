"""The `geopush` command line: one program, subcommands registered by the packages that own them.

Each owner module exposes ``register(subparsers)`` and keeps heavy imports (numpy, numba, shapely,
aiomqtt) inside its handlers, so ``geopush --help`` stays fast. A handler is stored with
``parser.set_defaults(func=handler)`` and returns the process exit code.

engine/ and fences/ register their commands here by name. The simulator's commands (``demo``,
``simulate``, ``import``, ``score``) and the benchmark harnesses (``bench …``) sit above the engine
and plug in through the entry-point groups ``geopush.commands`` and ``geopush.bench`` declared in
pyproject.toml, so the engine never imports the simulator.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from engine.errors import FencesError, GeopushError

# The engine's own command groups, (module, function); plug-ins (entry points) come around them in
# the order of _PLUGIN_ORDER, so --help reads demo, run, replay, fences, simulate, ...
_OWN = [
    ("engine.daemon.cli", "register"),
    ("engine.replay_cli", "register"),
    ("engine.report_cli", "register"),
    ("fences.cli", "register"),
    ("engine.api.cli", "register"),
    ("engine.daemon.partitioned_cli", "register"),
]
_PLUGIN_ORDER = {"demo": 0, "simulate": 2, "match": 0, "replay": 1, "e2e": 2}
COMMANDS_GROUP = "geopush.commands"
BENCH_GROUP = "geopush.bench"


def _plugins(group: str) -> list[Any]:
    """The installed entry points of ``group``, in --help order (then by name)."""
    from importlib.metadata import entry_points

    found = list(entry_points(group=group))
    return sorted(found, key=lambda ep: (_PLUGIN_ORDER.get(ep.name, 99), ep.name))

_EPILOG = """\
Every option can also come from a config file (--config) or a GEOPUSH_* environment variable
where the subcommand says so. Docs: docs/ in the source tree.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geopush",
        description=(
            "geopush: geofenced offer-push engine. Indexes store fences, turns GPS, WiFi and "
            "near-field signals into visits (enter, dwell, exit) and pushes the best eligible "
            "coupon exactly once."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"geopush {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    plugins = _plugins(COMMANDS_GROUP)
    for ep in plugins:
        if _PLUGIN_ORDER.get(ep.name, 99) == 0:
            ep.load()(sub)
    for module, func in _OWN:
        getattr(importlib.import_module(module), func)(sub)
    for ep in plugins:
        if _PLUGIN_ORDER.get(ep.name, 99) != 0:
            ep.load()(sub)
    bench = sub.add_parser(
        "bench",
        help="benchmarks: match throughput, replay throughput, end-to-end over MQTT",
        description="Benchmarks that report ratios against a baseline measured in the same run.",
    )
    bench_sub = bench.add_subparsers(title="benchmarks", metavar="BENCH")
    bench.set_defaults(func=lambda _a: help_and_fail(bench))
    for ep in _plugins(BENCH_GROUP):
        ep.load()(bench_sub)
    return parser


def help_and_fail(parser: argparse.ArgumentParser) -> int:
    """Handler of a command group called without a subcommand: its help, exit status 2."""
    parser.print_help(sys.stderr)
    return 2


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse ``type=`` that accepts only numbers of ``kind`` greater than zero."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            bound = ">= 1" if kind is int else "> 0"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geopush")
    except PackageNotFoundError:
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except (GeopushError, FencesError) as exc:
        # Our own errors carry a message a person can act on: no traceback.
        print(f"geopush: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("geopush: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
