"""`geopush simulate publish`: replay a trace file over MQTT, each event on its user's topic.

A trace is JSON lines, one event (or one batch message) per line, as `geopush simulate city` and
the importers write and `geopush replay` reads. Each line is published unchanged, QoS 1, to
``<prefix>/events/<user>`` through the daemon's transport (engine.transport.mqtt: many messages in
flight, every PUBACK awaited), so when this returns the broker has accepted every event.

Pacing: ``rate`` = messages per second; ``speed`` = follow the trace's own timestamps, accelerated
(1 = real time, 60 = one trace minute per second); neither = as fast as the broker acknowledges.
Lines that are not a JSON object with a ``user`` cannot be routed to a topic: they are counted
and reported (with the first few line numbers), never silently dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PublishStats:
    published: int = 0
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate"] = round(self.rate, 1)
        d["seconds"] = round(self.seconds, 3)
        return d

    def __str__(self) -> str:
        s = f"published {self.published:,} messages in {self.seconds:.2f}s ({self.rate:,.0f}/s)"
        if self.skipped:
            s += f"; skipped {self.skipped} unroutable line(s), first at line(s) {self.skipped_lines}"
        return s


def _read(path: Path, prefix: str, stats: PublishStats) -> list[tuple[str, bytes, float | None]]:
    """(topic, payload, ts) per routable line."""
    out: list[tuple[str, bytes, float | None]] = []
    with path.open("rb") as fh:
        for no, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                user = obj["user"]
                if not isinstance(user, str) or not user or "/" in user or "+" in user or "#" in user:
                    raise ValueError(user)
            except (ValueError, KeyError, TypeError):
                stats.skipped += 1
                if len(stats.skipped_lines) < 5:
                    stats.skipped_lines.append(no)
                continue
            ts = obj.get("ts")
            if ts is None and obj.get("type") == "batch" and obj.get("events"):
                ts = obj["events"][0].get("ts")
            out.append((f"{prefix}/events/{user}", line, float(ts) if isinstance(ts, int | float) else None))
    return out


async def _publish(
    items: list[tuple[str, bytes, float | None]],
    broker_url: str,
    rate: float | None,
    speed: float | None,
    progress: bool,
    stats: PublishStats,
) -> None:
    from engine.transport.mqtt import MqttLink, parse_broker_url, publish_paced

    link = MqttLink(parse_broker_url(broker_url))
    await link.connect()
    bar: Any = None
    task_id: Any = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
        task_id = bar.add_task("publish", total=len(items))

    def on_sent(i: int, _t: float) -> None:
        if bar is not None and i % 500 == 0:
            bar.update(task_id, completed=i)

    t0 = time.monotonic()
    try:
        if speed:
            stats.published = await _publish_by_clock(link, items, speed, on_sent)
        else:
            stats.published = await publish_paced(
                link, ((t, p) for t, p, _ in items), rate=rate, max_in_flight=1000, on_sent=on_sent
            )
    finally:
        stats.seconds = time.monotonic() - t0
        if bar is not None:
            bar.update(task_id, completed=stats.published)
            bar.stop()
        await link.disconnect()


async def _publish_by_clock(link: Any, items: list[tuple[str, bytes, float | None]], speed: float, on_sent: Any) -> int:
    """Follow the trace's timestamps divided by ``speed`` (async sleeps; many in flight)."""
    from engine.errors import TransportError

    t0_wall = time.monotonic()
    t0_ev = next((ts for _, _, ts in items if ts is not None), None)
    futs = []
    for i, (t, p, ts) in enumerate(items):
        if ts is not None and t0_ev is not None:
            ahead = t0_wall + (ts - t0_ev) / speed - time.monotonic()
            if ahead > 0.001:
                await asyncio.sleep(ahead)
        fut = link.publish_nowait(t, p, qos=1)
        # Read each outcome when it comes: if this loop is cancelled (Ctrl-C), the publishes
        # still in flight fail at disconnect, with nobody left to await them.
        fut.add_done_callback(_read_outcome)
        futs.append(fut)
        on_sent(i, time.time())
        if len(futs) >= 5000:
            await asyncio.gather(*futs)
            futs.clear()
    results = await asyncio.gather(*futs, return_exceptions=True)
    errs = [r for r in results if isinstance(r, BaseException)]
    if errs:
        raise TransportError(f"{len(errs)} publishes failed: {errs[0]}")
    return len(items)


def _read_outcome(fut: asyncio.Future[None]) -> None:
    """Mark a publish's exception as retrieved (the final gather still reports it)."""
    if not fut.cancelled():
        fut.exception()


def publish_trace(
    path: str | Path,
    broker_url: str,
    rate: float | None = None,
    speed: float | None = None,
    progress: bool = True,
    prefix: str = "geopush",
) -> PublishStats:
    """Publish every routable line of the trace at ``path``; return what was done."""
    from engine.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"trace {p} not found")
    if rate is not None and speed is not None:
        raise ConfigError("give --rate or --speed, not both")
    stats = PublishStats()
    items = _read(p, prefix, stats)
    asyncio.run(_publish(items, broker_url, rate, speed, progress, stats))
    return stats


__all__ = ["PublishStats", "publish_trace"]
