"""One-line help of every daemon setting (no heavy imports: `geopush --help` stays fast)."""

from __future__ import annotations

# (name, help) for every setting: the CLI builds its flags from this, so --help and the file
# format cannot drift apart.
HELP: dict[str, str] = {
    "broker": "broker URL, mqtt://[user[:password]@]host[:port]",
    "username": "MQTT username (overrides one in the URL)",
    "password": "MQTT password (prefer GEOPUSH_PASSWORD or the config file to a flag)",
    "fences": "store catalog (GeoJSON FeatureCollection of stores); reloaded on SIGHUP",
    "campaigns": "campaigns file; reloaded on SIGHUP",
    "profiles": "user profiles file (tags, opt-outs) loaded at start (optional)",
    "state": "SQLite state file (created if missing): users, visits, inventory, push log, outbox; or redis://HOST:PORT/DB to share state with the other workers of a --group",
    "group": "run as one worker of a group sharing the stream: subscribe via $share/<group>/... (needs --state redis://...; give each worker its own --client-id)",
    "prefix": "topic prefix: <prefix>/events/<user>, <prefix>/push/<user>, ...",
    "client_id": "MQTT client id; fixed, so the broker keeps a persistent session while the engine is down",
    "metrics_port": "serve Prometheus metrics on this HTTP port (0 = off)",
    "batch_size": "most messages per micro-batch (one SQLite transaction each)",
    "linger_ms": "when fewer than --linger-batch messages are waiting, wait this long (ms) for more before processing: under a live stream each micro-batch then holds many messages, so the per-batch costs (commit, acks, wake-ups) are shared; adds at most this much latency; 0 = process at once",
    "linger_batch": "a waiting batch of this many messages goes at once, without lingering (capped by --batch-size): by then the per-batch costs are shared, and under load the messages that came in while the previous batch ran make the next one",
    "max_in_flight": "most outputs awaiting PUBACK at once (publishing is concurrent)",
    "max_pending": "committed outputs waiting to be published before intake pauses (backpressure)",
    "sqlite_sync": "SQLite synchronous mode: normal survives kill -9, full also survives power loss",
    "owntracks": "also consume owntracks/<user>/<device> (true/false)",
    "status_interval": "seconds between retained status updates",
    "idle_flush": "when no message came for this many seconds, time out visits by the wall clock (live feeds; 0 = off: visits then time out by event time only, exactly as replay decides)",
    "drain_timeout": "seconds a graceful shutdown waits for the outbox to empty",
    "pid_file": "write the pid here, for `geopush reload`",
    "fences_snapshot": "compiled snapshot of --fences (catalog + index, memory-mapped) for a restart in well under a second; checked against the catalog file's sha256 and rewritten when it changes; 'off' to always load the catalog cold",
    "log_format": "text or json (JSON lines, one object per record)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "http": "serve the HTTP API (stores live, tokens; docs/api.md) on HOST:PORT, e.g. 127.0.0.1:8080 (default off), from a process of its own that the daemon starts, restarts and stops",
    "api_follow_ms": "with --http: how often (ms, at most) the engine reads the changes the API's process made (stores, campaigns) between two micro-batches; a change is in effect this long after the API answered it, at most",
    "sys_username": "login of the broker $SYS watch's own connection (<client_id>-sys), with its ACL read on $SYS/broker/#; needed where client ids are tied to logins (deploy/mosquitto.conf); without it and with --username the watch is off",
    "sys_password": "password of sys_username",
    "new_state": "allow a new, empty state over an existing EMPTY --state file (0 bytes, or SQLite without tables); without it such a file is refused (a lost state would sell coupons again). A missing file is always made anew; a foreign file is always refused",
    "quarantine_corrupt": "move user records the state file cannot decode to its quarantine table (kept, not deleted; each logged; those users start afresh) instead of stopping with an error",
    "input_window": "how many recent input digests are kept to recognise redeliveries",
    "deadletter_payload": "most bytes of a rejected message a dead letter carries (the original's size and SHA-256 always; 0 = none)",
    "deadletter_rate": "dead letters per second (on average, bursts of 10 s worth) that carry a payload excerpt; beyond it they carry reason, size and digest only (0 = no limit)",
    "max_skew": (
        "seconds: a message with an event further ahead of the receiving clock is dead-lettered "
        "(clock_skew); also how close the watermark quorum's times must be"
    ),
    "watermark_quorum": "the sweep's event time moves only to a time this many distinct users reached",
    "coupon_secret": "key of the coupon codes (the MAC key, at least 16 characters; prefer GEOPUSH_COUPON_SECRET or the config file to a flag); none: generated on first start and kept in the state (SQLite meta, or shared by a Redis group)",
    "attribution_window_s": "a payment is attributed to the user's latest push from the merchant within this many seconds before it",
    "mqtt_fast": "--mqtt-plain (mqtt_fast = false, GEOPUSH_MQTT_FAST=0): run the plain aiomqtt path instead of the fast MQTT path that patches paho-mqtt's internals (exactly-once either way; the fast path falls back to the plain one by itself when the installed paho-mqtt/aiomqtt is not the tested version)",
    "intake": "consume events from a NATS JetStream cluster instead of MQTT subscriptions: nats://HOST:PORT[,nats://...]; phones still publish over MQTT (to the cluster's MQTT listeners, which every node maps into partitions), and --broker is one of those listeners (pushes, control, status); docs/scaling.md",
    "partitions": "with --intake: the partitions this worker consumes, e.g. 0-7,12 or all",
    "partition_count": "with --intake: the number of partitions P in the cluster's mapping {{partition(P,1)}} (the same on every node and worker; NATS keeps one replicated consumer per partition, so 16-64 suit a small cluster)",
}

# The default of every setting as --help shows it (engine.daemon.config.Settings holds the values;
# a test keeps the two equal).
DEFAULTS: dict[str, str] = {
    "broker": "mqtt://localhost:1883",
    "username": "none",
    "password": "none",
    "fences": "none",
    "campaigns": "none",
    "profiles": "none",
    "state": "geopush-state.sqlite",
    "group": "none",
    "prefix": "geopush",
    "client_id": "geopush-engine",
    "metrics_port": "0",
    "batch_size": "500",
    "linger_ms": "1.0",
    "linger_batch": "64",
    "max_in_flight": "200",
    "max_pending": "20000",
    "sqlite_sync": "normal",
    "owntracks": "true",
    "status_interval": "5.0",
    "idle_flush": "0.0",
    "drain_timeout": "10.0",
    "pid_file": "<state>.pid beside a SQLite state file, none with Redis state",
    "fences_snapshot": "<state>.fences.snapshot beside a SQLite state file, none with Redis state",
    "log_format": "text",
    "log_level": "INFO",
    "input_window": "100000",
    "http": "none",
    "api_follow_ms": "20.0",
    "deadletter_payload": "4096",
    "deadletter_rate": "100.0",
    "max_skew": "300.0",
    "watermark_quorum": "3",
    "sys_username": "none",
    "sys_password": "none",
    "new_state": "false",
    "quarantine_corrupt": "false",
    "coupon_secret": "none",
    "attribution_window_s": "604800.0",
    "mqtt_fast": "true",
    "intake": "none",
    "partitions": "all",
    "partition_count": "256",
}


def flag_help(name: str) -> str:
    """A setting's help line with its default and its environment variable."""
    return f"{HELP[name]} (default: {DEFAULTS[name]}; env GEOPUSH_{name.upper()})"
