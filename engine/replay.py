"""Offline replay: run the core over a recorded trace in event time, exactly like the daemon.

The trace is JSON Lines, one wire event (or batch) per line, as ``geopush simulate`` or the
importers write it. Lines are decoded with the daemon's decoder; a line that does not decode goes
to ``deadletter.jsonl`` with its line number and reason, and replay goes on. Events are fed to
``Core.process`` in micro-batches of ``batch_size`` and each batch's outputs are committed to the
(in-memory) store, the same loop the daemon runs. At the end, ``Core.flush`` at the core's watermark (the
newest event time several users reached: not one device's clock) fires the dwells and timeouts
due by then; visits still open at that time stay open
(replay invents no exit after the data ends) and are counted in the summary.

Outputs (``out_dir``): ``visits.jsonl``, ``pushes.jsonl``, ``holdouts.jsonl`` (decisions a campaign
holdout kept back), ``redemptions.jsonl`` (answers to redeem events), ``orders.jsonl`` (payments
attributed to a push or a holdout decision), ``deadletter.jsonl``, ``summary.json``; ``geopush
report`` reads them (engine/report.py). The same inputs give the same files, byte for byte:
nothing depends on wall time or hash order. Coupon codes are keyed by ``CoreConfig.coupon_secret``
(a fixed public default unless given, so that replays are reproducible).
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from engine.campaigns import CampaignSet, catalog_warnings, load_campaigns
from engine.core import Core, CoreConfig
from engine.errors import DecodeError, GeopushError
from engine.events import Event, decode
from engine.outputs import Holdout, Order, Push, RedeemResult, VisitEvent, encode_output
from engine.profiles import ProfileBook, load_profiles
from engine.state import MemoryStore, Output
from fences.index import FenceIndex

PathLike = str | os.PathLike[str]

# Output type -> the file replay writes it to (in this order).
OUTPUT_FILES: dict[type[Output], str] = {
    VisitEvent: "visits.jsonl",
    Push: "pushes.jsonl",
    Holdout: "holdouts.jsonl",
    RedeemResult: "redemptions.jsonl",
    Order: "orders.jsonl",
}


class ReplayError(GeopushError):
    """The trace cannot be read or the output folder cannot be written."""


def _index(fences: PathLike | FenceIndex, snapshot: PathLike | None = None) -> FenceIndex:
    if isinstance(fences, FenceIndex):
        return fences
    from fences.snapshot import load_index

    return load_index(fences, snapshot)[0]


def _campaigns(c: PathLike | CampaignSet) -> CampaignSet:
    return c if isinstance(c, CampaignSet) else load_campaigns(c)


def _profiles(p: PathLike | ProfileBook | None) -> ProfileBook | None:
    if p is None or isinstance(p, ProfileBook):
        return p
    return load_profiles(p)


@contextmanager
def _progress(enabled: bool, total: int | None, label: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [TextColumn("[bold]replay[/] {task.description}"), BarColumn()]
    cols += [TextColumn("{task.percentage:>5.1f}%"), TimeRemainingColumn()] if total else [MofNCompleteColumn()]
    cols.append(TimeElapsedColumn())
    with Progress(*cols, transient=False, console=Console(stderr=True)) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n: prog.update(task, completed=n)


def replay(
    trace: PathLike,
    fences: PathLike | FenceIndex,
    campaigns: PathLike | CampaignSet,
    profiles: PathLike | ProfileBook | None = None,
    *,
    out_dir: PathLike,
    progress: bool = True,
    config: CoreConfig | None = None,
    batch_size: int = 1024,
    on_warning: Callable[[str], None] | None = None,
    fences_snapshot: PathLike | None = None,
) -> dict[str, Any]:
    """Replay ``trace`` and write the four output files; returns the summary (also in
    ``summary.json``). Campaigns that match nothing in the catalog (``catalog_warnings``) are
    passed to ``on_warning`` before the replay starts and listed in the summary's
    ``campaign_warnings``. ``fences_snapshot``: a compiled snapshot of the catalog file to start
    from, written when missing or stale (fences.snapshot)."""
    from engine.errors import TraceImportError
    from engine.traces import read_trace

    if not Path(trace).is_file():
        raise ReplayError(f"cannot open trace {trace}: no such file; check the path")
    index = _index(fences, fences_snapshot)
    camps = _campaigns(campaigns)
    warnings = catalog_warnings(camps, index.catalog)
    if on_warning is not None:
        for w in warnings:
            on_warning(w)
    book = _profiles(profiles)
    store = MemoryStore()
    core = Core(index, camps, store, config or CoreConfig(), book)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplayError(f"cannot create output folder {out}: {exc}") from exc

    tpath = Path(trace)
    total = tpath.stat().st_size if tpath.suffix != ".gz" and tpath.is_file() else None
    lines = 0
    dead: dict[str, int] = {}
    batch: list[Event] = []
    with ExitStack() as stack:
        try:
            files = {t: stack.enter_context(open(out / name, "wb")) for t, name in OUTPUT_FILES.items()}
            f_dead = stack.enter_context(open(out / "deadletter.jsonl", "wb"))
        except OSError as exc:
            raise ReplayError(f"cannot write to {out}: {exc}") from exc

        def run(events: list[Event]) -> None:
            outs = core.process(events)
            store.commit(outs)
            _write(outs, files)
            # User records live until the end: move them out of the collector's generations so
            # full collections do not rescan millions of them (~25% of replay time otherwise).
            # The core makes no reference cycles, so nothing is leaked by freezing.
            gc.freeze()

        update = stack.enter_context(_progress(progress, total, tpath.name))
        done = 0
        try:
            for no, raw in read_trace(tpath):
                lines += 1
                done += len(raw) + 1
                try:
                    evs = decode(raw)
                except DecodeError as exc:
                    dead[exc.reason] = dead.get(exc.reason, 0) + 1
                    rec = {
                        "line": no,
                        "reason": exc.reason,
                        "detail": exc.detail,
                        "raw": raw.decode("utf-8", "backslashreplace"),
                    }
                    f_dead.write(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
                    continue
                batch += evs
                if len(batch) >= batch_size:
                    run(batch)
                    batch = []
                    if update is not None:
                        update(done)
        except TraceImportError as exc:
            raise ReplayError(str(exc)) from exc
        if batch:
            run(batch)
        newest = core.watermark
        if newest > float("-inf"):
            outs = core.flush(newest)
            store.commit(outs)
            _write(outs, files)
        if update is not None:
            update(total if total is not None else done)

    gc.unfreeze()
    summary = _summary(core, store, tpath, lines, dead)
    summary["campaign_warnings"] = warnings
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _write(outs: list[Output], files: Mapping[type[Output], IO[bytes]]) -> None:
    v = [encode_output(o) for o in outs if type(o) is VisitEvent]
    if v:
        files[VisitEvent].write(b"\n".join(v) + b"\n")
    if len(v) == len(outs):
        return
    by: dict[type[Output], list[bytes]] = {}
    for o in outs:
        t = type(o)
        if t is not VisitEvent:
            by.setdefault(t, []).append(encode_output(o))
    for t, lines in by.items():
        files[t].write(b"\n".join(lines) + b"\n")


def _summary(core: Core, store: MemoryStore, trace: Path, lines: int, dead: dict[str, int]) -> dict[str, Any]:
    s = core.stats.to_dict()
    rejected = dict(s.pop("rejected_by_reason"))
    for reason, n in dead.items():
        rejected[f"decode:{reason}"] = n
    open_now = sum(len(u.visits) for u in store.all_users().values())
    return {
        "trace": trace.name,
        "lines": lines,
        "deadletter": sum(dead.values()),
        "events": sum(s["events_by_type"].values()),
        "users": len(store.all_users()),
        "rejected_by_reason": rejected,
        "open_visits_at_end": open_now,
        "inventory_left": store.inventory(),
        **s,
    }
