"""Prometheus metrics and the plain counters of the retained status message.

Each ``Metrics`` owns its own ``CollectorRegistry`` (several daemons in one test process do not
collide); ``serve(port)`` exposes it over HTTP at ``/metrics``.
"""

from __future__ import annotations

import logging
from collections import Counter as PyCounter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("geopush.daemon")

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("geopush_messages", "MQTT messages received", registry=r)
        self.events = Counter("geopush_events", "Events accepted, by type", ["type"], registry=r)
        self.rejects = Counter(
            "geopush_rejects", "Messages dead-lettered, by reason", ["reason"], registry=r
        )
        self.deadletters = Counter(
            "geopush_deadletters",
            "Dead letters committed (and published to <prefix>/deadletter), by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.deadletter_payloads_dropped = Counter(
            "geopush_deadletter_payloads_dropped",
            "Dead letters over --deadletter-rate, sent without their payload excerpt",
            registry=r,
        )
        self.dropped = Counter(
            "geopush_events_dropped",
            "Events received and not applied, by reason (clock_skew, out_of_order, speed)",
            ["reason"], registry=r,
        )  # fmt: skip
        self.watermark_repairs = Counter(
            "geopush_watermark_repairs",
            "Persisted watermarks found far ahead of the wall clock at start and repaired",
            registry=r,
        )
        self.duplicates = Counter(
            "geopush_duplicates", "Redelivered messages recognised and not re-run", registry=r
        )
        self.visits = Counter(
            "geopush_visits", "Visit events emitted, by event", ["event"], registry=r
        )
        self.pushes = Counter("geopush_pushes", "Coupon pushes decided", registry=r)
        self.outcomes = Counter(
            "geopush_outcomes",
            "Holdout decisions, redemption answers and attributed orders, by kind",
            ["kind"],
            registry=r,
        )
        self.published = Counter(
            "geopush_published", "Outputs acknowledged by the broker", registry=r
        )
        self.batches = Counter("geopush_batches", "Micro-batches committed", registry=r)
        self.reloads = Counter(
            "geopush_reloads", "Fence/campaign reloads, by result", ["result"], registry=r
        )
        self.api_up = Gauge(
            "geopush_api_process_up", "1 while the HTTP API's process is serving (--http)",
            registry=r,
        )
        self.api_restarts = Counter(
            "geopush_api_process_restarts", "HTTP API processes restarted after they died",
            registry=r,
        )
        self.inbox = Gauge(
            "geopush_inbox_depth", "Received messages waiting for a batch", registry=r
        )
        self.outbox = Gauge(
            "geopush_outbox_pending", "Committed outputs not yet published", registry=r
        )
        self.in_flight = Gauge("geopush_outbox_in_flight", "Outputs awaiting PUBACK", registry=r)
        self.connected = Gauge("geopush_connected", "1 while connected to the broker", registry=r)
        self.batch_size = Histogram(
            "geopush_batch_messages", "Messages per micro-batch", registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
        )  # fmt: skip
        self.match = Histogram(
            "geopush_match_seconds", "Core processing time per micro-batch (match + decide)",
            registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.commit = Histogram(
            "geopush_commit_seconds", "SQLite commit time per micro-batch", registry=r,
            buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.event_to_push = Histogram(
            "geopush_event_to_push_seconds",
            "From receipt of the triggering message to the broker's PUBACK of the push",
            registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.broker_dropped = Counter(
            "geopush_broker_dropped_messages",
            "Messages the broker reports it dropped ($SYS/broker/publish/messages/dropped, "
            "broker-wide) since this engine last looked, the time it was down included",
            registry=r,
        )
        self.broker_sys = Gauge(
            "geopush_broker_sys_readable",
            "1 when the broker's $SYS dropped-message counter can be read, 0 when not (-1 unknown)",
            registry=r,
        )
        self.broker_sys.set(-1)
        self.broker_drop_rate = Gauge(
            "geopush_broker_dropped_per_minute_15m",
            "The broker's 15-minute average of messages dropped per minute "
            "($SYS/broker/load/publish/dropped/15min; broker-wide)",
            registry=r,
        )
        self.webhook_latency = Histogram(
            "geopush_webhook_delivery_seconds",
            "From an output's enqueue for a webhook (right after its commit) to the endpoint's 2xx",
            registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.webhook_delivered = Counter(
            "geopush_webhook_deliveries", "Webhook deliveries answered 2xx, by endpoint",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.webhook_failures = Counter(
            "geopush_webhook_failures",
            "Failed webhook attempts, by endpoint and class (4xx, 5xx, timeout, connection)",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.webhook_paused = Counter(
            "geopush_webhook_paused", "Webhook endpoints paused as dead, by endpoint",
            ["endpoint"], registry=r,
        )  # fmt: skip
        # Plain totals for the status message and tests (prometheus counters are awkward to read).
        self.totals: PyCounter[str] = PyCounter()
        self.dropped_by_reason: PyCounter[str] = PyCounter()  # the status message's ``dropped``

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Start the /metrics HTTP endpoint (a daemon thread). Returns the server."""
        server = start_http_server(port, addr=addr, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", addr, port)
        return server


__all__ = ["Metrics"]
