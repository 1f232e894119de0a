"""The demo's numbers and how they are shown: a stats collector, a frozen snapshot of it, and pure
render functions (rich live panel, plain progress line, final summary). No I/O, no clocks of
their own: the orchestration in ``simulator.demo`` feeds them, tests call them directly.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Snapshot:
    """Everything the live view and the summary show, at one instant."""

    elapsed_s: float = 0.0
    duration_s: float = 60.0
    events_processed: int = 0
    events_total: int = 0  # events in the trace (0 = unknown)
    events_per_s: float = 0.0  # recent rate (last few seconds); in the final one, the run's mean
    sim_clock: str = ""  # the newest event time the engine has processed, e.g. "12:42 UTC"
    visits_entered: int = 0
    visits_exited: int = 0
    visits_open: int = 0
    dwells: int = 0
    pushes: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_source: str = ""
    top_campaigns: tuple[tuple[str, int], ...] = ()
    dead_letters: int = 0
    engine: str = ""  # e.g. "daemon (in-process)" or "offline replay (daemon unavailable)"
    broker: str = ""  # e.g. "mosquitto mqtt://127.0.0.1:40123"
    stopping: str = ""  # why the run is ending, once it is


@dataclass
class DemoStats:
    """Mutable counters fed by the orchestration; ``snapshot()`` freezes them for rendering."""

    duration_s: float = 60.0
    engine: str = ""
    broker: str = ""
    events_total: int = 0
    events_processed: int = 0
    sim_clock: str = ""
    visits_entered: int = 0
    visits_exited: int = 0
    dwells: int = 0
    pushes: int = 0
    dead_letters: int = 0
    stopping: str = ""
    campaigns: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    latency_source: str = ""
    latency_p50_ms: float | None = None  # set directly when a histogram supplies quantiles
    latency_p99_ms: float | None = None
    _open: set[str] = field(default_factory=set)
    _seen: set[str] = field(default_factory=set)
    _rate: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    started: float = field(default_factory=time.monotonic)
    first_progress: float | None = None  # the last report before the engine's total grew
    last_progress: float | None = None  # when the engine's total last grew

    def on_visit(self, rec: dict[str, Any]) -> None:
        """A merchant visit event (enter / dwell / exit). Redeliveries are counted once."""
        vid, ev = str(rec.get("visit_id", "")), rec.get("event")
        key = f"{vid}:{ev}:{rec.get('dwell_s')}"
        if key in self._seen:
            return
        self._seen.add(key)
        if ev == "enter":
            self.visits_entered += 1
            self._open.add(vid)
        elif ev == "exit":
            self.visits_exited += 1
            self._open.discard(vid)
        elif ev == "dwell":
            self.dwells += 1

    def on_push(self, rec: dict[str, Any], latency_ms: float | None = None) -> None:
        """A coupon push (deduplicated by push_id)."""
        pid = str(rec.get("push_id", ""))
        if pid in self._seen:
            return
        self._seen.add(pid)
        self.pushes += 1
        self.campaigns[str(rec.get("campaign_id", "?"))] += 1
        if latency_ms is not None and math.isfinite(latency_ms):
            self.latencies_ms.append(latency_ms)

    def on_deadletter(self, _rec: Any = None) -> None:
        self.dead_letters += 1

    def on_processed(self, total: int, now: float | None = None) -> None:
        """The engine's running total of events accepted (decoded and processed)."""
        t = time.monotonic() if now is None else now
        if total > self.events_processed:
            if self.first_progress is None:
                self.first_progress = self._rate[-1][0] if self._rate else self.started
            self.last_progress = t
        self.events_processed = total
        self._rate.append((t, total))

    def rate(self, window_s: float = 3.0) -> float:
        """Events/s over the last ``window_s`` seconds of reports."""
        if len(self._rate) < 2:
            return 0.0
        t1, n1 = self._rate[-1]
        t0, n0 = self._rate[0]
        for t, n in self._rate:
            if t1 - t <= window_s:
                t0, n0 = t, n
                break
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def run_rate(self) -> float:
        """Events/s over the run: every event processed, over the time from the last report
        before the first one to the report of the last one (not the whole run, which adds the
        publisher's start, the drain and the idle tail)."""
        if self.first_progress is None or self.last_progress is None:
            return 0.0
        span = self.last_progress - self.first_progress
        return self.events_processed / span if span > 0 else 0.0

    def snapshot(self, now: float | None = None, top: int = 5, final: bool = False) -> Snapshot:
        """The figures now; ``final``: the run is over, events_per_s is the run's mean rate
        (the recent rate would be the idle tail's)."""
        p50, p99 = self.latency_p50_ms, self.latency_p99_ms
        if p50 is None and self.latencies_ms:
            p50, p99 = percentile(self.latencies_ms, 50), percentile(self.latencies_ms, 99)
        return Snapshot(
            elapsed_s=(time.monotonic() if now is None else now) - self.started,
            duration_s=self.duration_s,
            events_processed=self.events_processed,
            events_total=self.events_total,
            events_per_s=self.run_rate() if final else self.rate(),
            sim_clock=self.sim_clock,
            visits_entered=self.visits_entered,
            visits_exited=self.visits_exited,
            visits_open=len(self._open),
            dwells=self.dwells,
            pushes=self.pushes,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            latency_source=self.latency_source,
            top_campaigns=tuple(self.campaigns.most_common(top)),
            dead_letters=self.dead_letters,
            engine=self.engine,
            broker=self.broker,
            stopping=self.stopping,
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is one that was measured)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def render_live(s: Snapshot) -> RenderableType:
    """The live panel: progress, throughput, visits, pushes, latency, top campaigns."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan", justify="right")
    head.add_column()
    head.add_column(style="bold cyan", justify="right")
    head.add_column()
    total = f" / {s.events_total:,}" if s.events_total else ""
    head.add_row("events", f"{s.events_processed:,}{total}", "events/s", f"{s.events_per_s:,.0f}")
    head.add_row(
        "visits open", f"{s.visits_open:,}", "entered / exited",
        f"{s.visits_entered:,} / {s.visits_exited:,}",
    )  # fmt: skip
    head.add_row("pushes", f"[bold green]{s.pushes:,}[/]", "dwells", f"{s.dwells:,}")
    lat = f"p50 {_ms(s.latency_p50_ms)}  p99 {_ms(s.latency_p99_ms)}"
    dead = f"[bold red]{s.dead_letters:,}[/]" if s.dead_letters else "0"
    head.add_row("event→push", lat, "dead letters", dead)
    if s.sim_clock:
        head.add_row("city clock", s.sim_clock, "", "")

    camps = Table(expand=False, box=None, min_width=40)
    camps.add_column("campaign", style="magenta")
    camps.add_column("pushes", justify="right")
    for cid, n in s.top_campaigns:
        camps.add_row(cid, f"{n:,}")
    if not s.top_campaigns:
        camps.add_row("(none yet)", "")

    frac = min(1.0, s.elapsed_s / s.duration_s) if s.duration_s > 0 else 1.0
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=1.0, completed=frac, width=40),
        Text(f"{s.elapsed_s:4.0f}s / {s.duration_s:.0f}s   Ctrl-C stops early", style="dim"),
    )
    subtitle = f"engine: {s.engine}   broker: {s.broker}"
    title = "geopush demo" + (f" — {s.stopping}" if s.stopping else "")
    return Panel(
        Group(bar, Text(""), head, Text(""), Text("top campaigns by pushes", style="bold"), camps),
        title=f"[bold]{title}[/]",
        subtitle=Text(subtitle, style="dim"),
        border_style="blue",
    )


def plain_line(s: Snapshot) -> str:
    """One progress line for logs and non-TTY output."""
    top = ", ".join(f"{c}={n}" for c, n in s.top_campaigns[:3]) or "-"
    return (
        f"[{s.elapsed_s:5.1f}s] events={s.events_processed} ({s.events_per_s:.0f}/s) "
        f"visits open={s.visits_open} entered={s.visits_entered} exited={s.visits_exited} "
        f"pushes={s.pushes} latency p50={_ms(s.latency_p50_ms)} p99={_ms(s.latency_p99_ms)} "
        f"dead={s.dead_letters} top: {top}"
    )


def summary_text(s: Snapshot, outputs: dict[str, str]) -> str:
    """The final summary, plain text (printed whether or not stdout is a terminal)."""
    lines = [
        f"geopush demo: {s.stopping or 'done'} after {s.elapsed_s:.1f}s",
        f"  engine      {s.engine}",
        f"  broker      {s.broker}",
        f"  events      {s.events_processed:,} accepted by the engine"
        + (f" of {s.events_total:,} in the trace" if s.events_total else "")
        + f", {s.events_per_s:,.0f}/s",
        f"  visits      {s.visits_entered:,} entered, {s.visits_exited:,} exited, "
        f"{s.visits_open:,} still open, {s.dwells:,} dwell events",
        f"  pushes      {s.pushes:,}",
        f"  latency     event→push p50 {_ms(s.latency_p50_ms)}, p99 {_ms(s.latency_p99_ms)}"
        + (f" ({s.latency_source})" if s.latency_source else ""),
        f"  dead letters {s.dead_letters:,}",
    ]
    if s.top_campaigns:
        lines.append("  top campaigns " + ", ".join(f"{c} ({n})" for c, n in s.top_campaigns))
    for label, path in outputs.items():
        lines.append(f"  {label:<11} {path}")
    return "\n".join(lines)
