"""`geopush run` (the daemon) and `geopush reload` (hot reload of fences and campaigns)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

_RUN_DESC = """\
Run the engine beside an MQTT broker (MQTT 3.1.1, QoS 1, persistent session).

Consumes <prefix>/events/<user> (any event type, or a batch) and owntracks/<user>/<device>;
publishes pushes to <prefix>/push/<user>, visit events to <prefix>/visits/<merchant_id>, rejected
messages to <prefix>/deadletter and a retained status to <prefix>/status/<client_id>.
A message is acknowledged (PUBACK) only after its micro-batch is committed to the --state file,
so kill -9 at any moment loses nothing the broker considers delivered.

Settings come from (highest first) these flags, GEOPUSH_<NAME> environment variables (e.g.
GEOPUSH_BROKER, GEOPUSH_STATE), the TOML file given by --config (or GEOPUSH_CONFIG), then defaults.
Signals: SIGTERM/SIGINT drain and checkpoint (a second one exits at once); SIGHUP reloads fences
and campaigns. Protocol: docs/protocol.md; operations: docs/operations.md.
"""

# flag -> (settings field, argparse kwargs)
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--broker", "broker", {"metavar": "URL"}),
    ("--username", "username", {}),
    ("--password", "password", {}),
    ("--sys-username", "sys_username", {}),
    ("--sys-password", "sys_password", {}),
    ("--fences", "fences", {"type": Path, "metavar": "FILE"}),
    ("--campaigns", "campaigns", {"type": Path, "metavar": "FILE"}),
    ("--profiles", "profiles", {"type": Path, "metavar": "FILE"}),
    ("--state", "state", {"metavar": "PATH|URL"}),
    ("--group", "group", {"metavar": "NAME"}),
    ("--intake", "intake", {"metavar": "NATS_URLS"}),
    ("--partitions", "partitions", {"metavar": "LIST"}),
    ("--partition-count", "partition_count", {"type": int, "metavar": "P"}),
    ("--prefix", "prefix", {}),
    ("--client-id", "client_id", {}),
    ("--metrics-port", "metrics_port", {"type": int, "metavar": "PORT"}),
    ("--http", "http", {"metavar": "HOST:PORT"}),
    ("--api-follow-ms", "api_follow_ms", {"type": float, "metavar": "MS"}),
    ("--batch-size", "batch_size", {"type": int, "metavar": "N"}),
    ("--linger-ms", "linger_ms", {"type": float, "metavar": "MS"}),
    ("--linger-batch", "linger_batch", {"type": int, "metavar": "N"}),
    ("--max-in-flight", "max_in_flight", {"type": int, "metavar": "N"}),
    ("--max-pending", "max_pending", {"type": int, "metavar": "N"}),
    ("--sqlite-sync", "sqlite_sync", {"choices": ["normal", "full"]}),
    ("--idle-flush", "idle_flush", {"type": float, "metavar": "S"}),
    ("--max-skew", "max_skew", {"type": float, "metavar": "S"}),
    ("--watermark-quorum", "watermark_quorum", {"type": int, "metavar": "N"}),
    ("--status-interval", "status_interval", {"type": float, "metavar": "S"}),
    ("--drain-timeout", "drain_timeout", {"type": float, "metavar": "S"}),
    ("--pid-file", "pid_file", {"type": Path, "metavar": "FILE"}),
    ("--deadletter-payload", "deadletter_payload", {"type": int, "metavar": "BYTES"}),
    ("--deadletter-rate", "deadletter_rate", {"type": float, "metavar": "N"}),
    ("--fences-snapshot", "fences_snapshot", {"metavar": "FILE|off"}),
    ("--log-format", "log_format", {"choices": ["text", "json"]}),
    ("--log-level", "log_level", {"metavar": "LEVEL"}),
    ("--attribution-window-s", "attribution_window_s", {"type": float, "metavar": "S"}),
]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    from engine.daemon.settings_help import flag_help

    run = sub.add_parser(
        "run",
        help="run the engine as a daemon beside an MQTT broker",
        description=_RUN_DESC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--config", type=Path, metavar="FILE",
        help="TOML config file, see deploy/geopush.toml (default: none; env GEOPUSH_CONFIG)",
    )  # fmt: skip
    for flag, field, kw in _FLAGS:
        # default=None: an unset flag must not hide GEOPUSH_* or the file; help shows the real one
        run.add_argument(flag, dest=field, default=None, help=flag_help(field), **kw)
    run.add_argument(
        "--no-owntracks", dest="owntracks", action="store_const", const=False, default=None,
        help="do not subscribe to owntracks/+/+ (default: subscribe; env GEOPUSH_OWNTRACKS=false)",
    )  # fmt: skip
    for flag, field in (("--new-state", "new_state"), ("--quarantine-corrupt", "quarantine_corrupt")):
        run.add_argument(flag, dest=field, action="store_const", const=True, default=None, help=flag_help(field))
    run.add_argument(
        "--mqtt-plain", dest="mqtt_fast", action="store_const", const=False, default=None,
        help=flag_help("mqtt_fast"),
    )  # fmt: skip
    run.add_argument(
        "--uvloop", action="store_true", help="run on uvloop when installed (~20%% more msg/s; default: asyncio)"
    )
    run.set_defaults(func=_run)

    rl = sub.add_parser(
        "reload",
        help="make a running daemon reload its fences and campaigns (no events dropped)",
        description=(
            "Ask a running `geopush run` to reload --fences and --campaigns from disk, between two "
            "micro-batches (messages keep queueing in the broker meanwhile; a file that fails to "
            "load is reported in the daemon's log and the previous fences/campaigns stay). "
            "Locally this sends SIGHUP to the pid in the daemon's pid file; with --broker it "
            "publishes `reload` to <prefix>/control/<client_id> (restrict that topic by ACL)."
        ),
    )
    rl.add_argument("--pid-file", type=Path, help="the daemon's pid file (default <state>.pid)")
    rl.add_argument("--state", type=Path, help="the daemon's state file, to find <state>.pid")
    rl.add_argument("--broker", metavar="URL", help="send the reload over MQTT instead of a signal")
    rl.add_argument("--prefix", default="geopush", help="topic prefix (default geopush)")
    rl.add_argument("--client-id", default="geopush-engine", help="the daemon's client id")
    rl.set_defaults(func=_reload)


def _run(args: argparse.Namespace) -> int:
    # First of all: a SIGHUP (reload) during start-up must not kill the daemon (its default
    # action), e.g. systemd's ExecReload or a `geopush reload` racing a restart. It is held here
    # until the service's own handlers are in place, then handled once start-up is done.
    held: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _frame: held.append(signum))

    import asyncio

    from engine.daemon.config import load_settings
    from engine.daemon.loading import load_fences_and_campaigns
    from engine.daemon.logs import setup_logging
    from engine.daemon.service import Service, real_core_factory

    flags = {field: getattr(args, field, None) for _f, field, _k in _FLAGS}
    flags["owntracks"] = args.owntracks
    flags["new_state"] = args.new_state
    flags["quarantine_corrupt"] = args.quarantine_corrupt
    flags["mqtt_fast"] = args.mqtt_fast
    config = args.config or (Path(os.environ["GEOPUSH_CONFIG"]) if os.environ.get("GEOPUSH_CONFIG") else None)
    settings = load_settings(flags, config)
    setup_logging(settings.log_format, settings.log_level)
    warnings: list[str] = []
    factory = real_core_factory(settings, warnings)

    async def main() -> int:
        svc = Service(
            settings,
            factory,
            reloader=lambda: load_fences_and_campaigns(settings),
            load_warnings=warnings,
        )
        svc.install_signal_handlers()
        if held:  # asked for during start-up: once, when start-up is done (between batches)
            logging.getLogger("geopush.daemon").info(
                "SIGHUP received during start-up (%d): reloading once started", len(held)
            )
            svc.request_reload()
        return await svc.run()

    if args.uvloop:
        try:
            import uvloop

            return int(uvloop.run(main()))
        except ImportError:
            print("geopush: uvloop not installed; using asyncio", file=sys.stderr)
    return asyncio.run(main())


def _reload(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError

    if args.broker:
        import asyncio

        from engine.transport.mqtt import MqttLink, parse_broker_url

        async def send() -> None:
            link = MqttLink(parse_broker_url(args.broker))
            await link.connect()
            try:
                await link.publish(f"{args.prefix}/control/{args.client_id}", b"reload", qos=1)
            finally:
                await link.disconnect()

        asyncio.run(send())
        print(f"reload sent to {args.prefix}/control/{args.client_id}")
        return 0
    pid_file = args.pid_file
    if pid_file is None and args.state is not None:
        pid_file = args.state.with_name(args.state.name + ".pid")
    if pid_file is None:
        raise ConfigError("give --pid-file, --state (to find <state>.pid) or --broker")
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a pid from {pid_file}: {exc} (is the daemon running?)") from exc
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise ConfigError(f"no process {pid} (stale pid file {pid_file}?)") from exc
    print(f"SIGHUP sent to geopush daemon pid {pid}")
    return 0
