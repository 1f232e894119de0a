"""Score detected visits against ground truth: precision, recall and timing per signal type.

Inputs:
* truth (``truth.jsonl``): ``{"user","store_id","start","end","signals":[...]}`` per real stay;
* detected (``visits.jsonl`` from ``geopush replay``): merchant visit events
  ``{visit_id,user,store_id,merchant_id,event,ts,signal}``; a visit runs from its ``enter`` to its
  ``exit`` (an unfinished visit runs to the end of the data).

Matching: a detected visit and a truth stay can match when they have the same user and store and
their intervals overlap once the truth stay is widened by ``tolerance`` seconds on each side.
Pairs are matched one to one, largest overlap first. An unmatched truth stay is a miss; an
unmatched detected visit (including a second detection of one stay) is spurious.

``min_stay`` ("visits of 5 minutes or more"): truth stays shorter than this are optional
(missing one costs no recall, and a visit matched to one is not counted), and detected visits
shorter than this are not counted for precision (they still match, so a long stay found by a
visit that was cut short counts as recalled). With the default 0 everything counts.

Groups: truth stays by the strongest signal the phone produced during the stay,
near-field (beacon or nfc) > wifi > gps (GPS only) > none; detected visits by the strongest
``signal`` among their events. Recall is per truth group, precision per detected group. Timing
(matched pairs, by truth group): enter delay = detected enter - true start, exit delay =
detected exit - true end, in seconds (positive = late); median and 90th percentile.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import GeopushError

GROUPS = ("near-field", "wifi", "gps", "none")
_RANK = {"nfc": 3, "beacon": 3, "wifi": 2, "gps": 1}


class ScoreError(GeopushError):
    """Bad truth or visits input (the message says which file and line)."""


@dataclass(frozen=True, slots=True)
class TruthStay:
    user: str
    store_id: str
    start: float
    end: float
    signals: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        s = set(self.signals)
        if s & {"beacon", "nfc"}:
            return "near-field"
        if "wifi" in s:
            return "wifi"
        return "gps" if "gps" in s else "none"


@dataclass(frozen=True, slots=True)
class Detected:
    visit_id: str
    user: str
    store_id: str
    start: float
    end: float | None  # None: no exit seen
    signal: str = "gps"

    @property
    def group(self) -> str:
        if self.signal in ("beacon", "nfc"):
            return "near-field"
        return "wifi" if self.signal == "wifi" else "gps"


@dataclass
class GroupScore:
    truth: int = 0  # required truth stays
    matched: int = 0  # of those, matched
    detected: int = 0  # counted detected visits (not matched to an optional stay)
    true_positive: int = 0  # of those, matched
    enter_delays: list[float] = field(default_factory=list)
    exit_delays: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.matched / self.truth if self.truth else None

    @property
    def precision(self) -> float | None:
        return self.true_positive / self.detected if self.detected else None

    def summary(self) -> dict[str, Any]:
        return {
            "truth": self.truth,
            "matched": self.matched,
            "detected": self.detected,
            "true_positive": self.true_positive,
            "precision": _r(self.precision),
            "recall": _r(self.recall),
            "enter_delay_median_s": _r(quantile(self.enter_delays, 0.5), 1),
            "enter_delay_p90_s": _r(quantile(self.enter_delays, 0.9), 1),
            "exit_delay_median_s": _r(quantile(self.exit_delays, 0.5), 1),
            "exit_delay_p90_s": _r(quantile(self.exit_delays, 0.9), 1),
        }


@dataclass
class ScoreReport:
    min_stay_s: float
    tolerance_s: float
    groups: dict[str, GroupScore]
    overall: GroupScore
    optional_truth: int = 0
    ignored_detected: int = 0  # detected visits not counted (short, or matched to a short stay)

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_stay_s": self.min_stay_s,
            "tolerance_s": self.tolerance_s,
            "optional_truth": self.optional_truth,
            "ignored_detected": self.ignored_detected,
            "overall": self.overall.summary(),
            "groups": {g: s.summary() for g, s in self.groups.items()},
        }


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


# --- loading --------------------------------------------------------------------------------------


class _TruthLine(msgspec.Struct):
    user: str
    store_id: str
    start: float
    end: float
    signals: list[str] = []


class _VisitLine(msgspec.Struct):
    visit_id: str
    user: str
    store_id: str
    event: str
    ts: float
    signal: str = "gps"


def _lines(path: Path) -> Iterable[tuple[int, bytes]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScoreError(f"{path}: cannot read ({exc.strerror})") from exc
    for no, line in enumerate(data.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith(b"#"):
            yield no, s


def load_truth(path: str | Path) -> list[TruthStay]:
    p = Path(path)
    dec = msgspec.json.Decoder(_TruthLine)
    out = []
    for no, line in _lines(p):
        try:
            t = dec.decode(line)
        except msgspec.DecodeError as exc:
            raise ScoreError(f"{p}:{no}: not a truth stay ({exc}); expected "
                             '{"user","store_id","start","end","signals":[...]}') from exc
        if t.end < t.start:
            raise ScoreError(f"{p}:{no}: end {t.end} is before start {t.start}")
        out.append(TruthStay(t.user, t.store_id, t.start, t.end, tuple(t.signals)))
    return out


def load_visits(path: str | Path) -> list[Detected]:
    """Detected visits from merchant visit events (visits.jsonl), one per visit_id."""
    p = Path(path)
    dec = msgspec.json.Decoder(_VisitLine)
    first: dict[str, _VisitLine] = {}
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    sig: dict[str, str] = {}
    for no, line in _lines(p):
        try:
            v = dec.decode(line)
        except msgspec.DecodeError as exc:
            raise ScoreError(f"{p}:{no}: not a visit event ({exc}); expected "
                             "{visit_id,user,store_id,event,ts,signal} as geopush replay writes") from exc
        vid = v.visit_id
        first.setdefault(vid, v)
        if v.event == "enter":
            start[vid] = min(start.get(vid, v.ts), v.ts)
        elif v.event == "exit":
            end[vid] = max(end.get(vid, v.ts), v.ts)
        if _RANK.get(v.signal, 0) > _RANK.get(sig.get(vid, ""), 0):
            sig[vid] = v.signal
    out = []
    for vid, v in first.items():
        s = start.get(vid, v.ts)  # no enter seen (file cut): the first event we have
        out.append(Detected(vid, v.user, v.store_id, s, end.get(vid), sig.get(vid, v.signal)))
    return out


# --- matching and scoring -------------------------------------------------------------------------


def match(truth: Sequence[TruthStay], detected: Sequence[Detected], tolerance: float = 60.0,
          horizon: float | None = None) -> list[tuple[int, int]]:
    """One-to-one (truth index, detected index) pairs, largest overlap first."""
    if horizon is None:
        horizon = _horizon(truth, detected)
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for j, d in enumerate(detected):
        by_key[(d.user, d.store_id)].append(j)
    cands: list[tuple[float, float, int, int]] = []
    for i, t in enumerate(truth):
        lo, hi = t.start - tolerance, t.end + tolerance
        for j in by_key.get((t.user, t.store_id), ()):
            d = detected[j]
            d_end = horizon if d.end is None else d.end
            ov = min(hi, d_end) - max(lo, d.start)
            if ov >= 0:
                cands.append((-ov, abs(d.start - t.start), i, j))
    cands.sort()
    used_t: set[int] = set()
    used_d: set[int] = set()
    pairs = []
    for _, _, i, j in cands:
        if i not in used_t and j not in used_d:
            used_t.add(i)
            used_d.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def _horizon(truth: Sequence[TruthStay], detected: Sequence[Detected]) -> float:
    ends = [t.end for t in truth] + [d.end if d.end is not None else d.start for d in detected]
    return max(ends) if ends else 0.0


def score(truth: Sequence[TruthStay], detected: Sequence[Detected], *, min_stay: float = 0.0,
          tolerance: float = 60.0) -> ScoreReport:
    horizon = _horizon(truth, detected)
    pairs = match(truth, detected, tolerance, horizon)
    t2d = dict(pairs)
    d2t = {j: i for i, j in pairs}
    groups = {g: GroupScore() for g in GROUPS}
    overall = GroupScore()
    rep = ScoreReport(min_stay, tolerance, groups, overall)
    for i, t in enumerate(truth):
        if t.end - t.start < min_stay:
            rep.optional_truth += 1
            continue
        for gs in (groups[t.group], overall):
            gs.truth += 1
            j = t2d.get(i)
            if j is None:
                continue
            gs.matched += 1
            d = detected[j]
            gs.enter_delays.append(d.start - t.start)
            if d.end is not None and t.end < horizon:
                gs.exit_delays.append(d.end - t.end)
    for j, d in enumerate(detected):
        ti = d2t.get(j)
        d_len = (horizon if d.end is None else d.end) - d.start
        if d_len < min_stay or (ti is not None and truth[ti].end - truth[ti].start < min_stay):
            rep.ignored_detected += 1
            continue
        for gs in (groups[d.group], overall):
            gs.detected += 1
            if ti is not None:
                gs.true_positive += 1
    return rep


def stores_with_tag(catalog: str | Path, tag: str) -> set[str]:
    """store_ids whose catalog ``tags`` include ``tag`` (to score a subset, e.g. malls)."""
    p = Path(catalog)
    try:
        doc = msgspec.json.decode(p.read_bytes())
        return {str(f["properties"]["store_id"]) for f in doc["features"]
                if tag in (f["properties"].get("tags") or [])}
    except (OSError, msgspec.DecodeError, KeyError, TypeError) as exc:
        raise ScoreError(f"{p}: cannot read store tags from this catalog ({exc})") from exc


def score_files(truth: str | Path, visits: str | Path, *, min_stay: float = 0.0,
                tolerance: float = 60.0, keep_stores: set[str] | None = None,
                drop_stores: set[str] | None = None) -> ScoreReport:
    """Score files; ``keep_stores`` / ``drop_stores`` restrict both sides to a subset of stores."""
    t, d = load_truth(truth), load_visits(visits)

    def ok(store_id: str) -> bool:
        return (keep_stores is None or store_id in keep_stores) and not (
            drop_stores is not None and store_id in drop_stores)

    t = [x for x in t if ok(x.store_id)]
    d = [x for x in d if ok(x.store_id)]
    return score(t, d, min_stay=min_stay, tolerance=tolerance)


def render_table(rep: ScoreReport) -> Any:
    """A rich Table of the report."""
    from rich.table import Table

    def f(v: float | None, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if pct else f"{v:+.0f}"

    tab = Table(title=f"visit scoring (min stay {rep.min_stay_s:g} s, tolerance {rep.tolerance_s:g} s)")
    for col in ("signal", "truth", "recall", "detected", "precision", "enter med/p90 s",
                "exit med/p90 s"):
        tab.add_column(col, justify="left" if col == "signal" else "right")
    rows = [(g, rep.groups[g]) for g in GROUPS] + [("all", rep.overall)]
    for name, g in rows:
        s = g.summary()
        tab.add_row(
            name, str(g.truth), f(g.recall, True), str(g.detected), f(g.precision, True),
            f"{f(s['enter_delay_median_s'])} / {f(s['enter_delay_p90_s'])}",
            f"{f(s['exit_delay_median_s'])} / {f(s['exit_delay_p90_s'])}",
            end_section=name == "none",
        )
    tab.caption = (f"recall by the truth stay's strongest signal, precision by the detected "
                   f"visit's; shorter than the minimum: {rep.optional_truth} truth stays "
                   f"(optional), {rep.ignored_detected} detected visits (not counted)")
    return tab


__all__ = [
    "Detected", "GroupScore", "ScoreError", "ScoreReport", "TruthStay", "load_truth",
    "load_visits", "match", "quantile", "render_table", "score", "score_files", "asdict",
]
