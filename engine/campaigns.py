"""Campaigns: merchants' rules that turn visits into coupon pushes.

A campaign file (JSON or YAML, schema in docs/campaigns.md) is validated at the edge with pydantic
v2 plus the rules tying fields together (``_rules``, on the raw data so that they are reported
with the field errors), every problem reported at once (``CampaignError.problems``), then turned
into plain frozen dataclasses for the hot path. ``campaign_problems``/``parse_campaign`` check one
campaign exactly as a file's entries are checked; ``catalog_warnings`` lists what matches nothing
in a store catalog. ``CampaignSet`` indexes them by (merchant, trigger) in decision
order: highest priority, then highest coupon value, then campaign id (determinism).

Times: ``schedule.start``/``end`` are local wall-clock times in the STORE's time zone (``Store.tz``);
``valid_from``/``valid_until`` are instants (ISO 8601 with offset, naive = UTC, or epoch seconds).
Quiet hours are local store time too.
"""

from __future__ import annotations

import difflib
import json
import operator
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.errors import CampaignError

if TYPE_CHECKING:
    from fences.catalog import Catalog
    from fences.store import Store

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ALL_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAYS: tuple[str, ...] = _ALL_DAYS
TRIGGERS = ("enter", "dwell", "exit")
SEGMENTS = ("all", "new", "returning", "followers")


# --- plain data for the hot path -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CouponSpec:
    title: str
    value: float
    currency: str
    expires_in_s: int


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    merchant_id: str
    trigger: str  # "enter" | "dwell" | "exit"
    coupon: CouponSpec
    dwell_s: int | None = None
    stores: frozenset[str] | None = None  # None = every store of the merchant
    segment: str = "all"
    tags_any: frozenset[str] = frozenset()
    exclude_tags: frozenset[str] = frozenset()
    days: frozenset[int] = frozenset(range(7))  # 0 = Monday
    start_min: int = 0  # minutes after local midnight, inclusive
    end_min: int = 24 * 60  # exclusive; end < start = overnight window
    valid_from: float | None = None
    valid_until: float | None = None  # exclusive
    per_user: int | None = None
    period_s: float | None = None
    cooldown_s: float = 0.0
    inventory: int | None = None  # None = unlimited
    priority: int = 0
    holdout_pct: float = 0.0  # share (percent) of eligible users decided but not pushed
    # Fast-path flags (set by the loader; False = "check it", always correct):
    any_time: bool = False  # every day, all day, no validity bounds
    anyone: bool = False  # segment all, no tags
    uncapped: bool = False  # no per-user cap, no cooldown

    @property
    def trigger_key(self) -> str:
        """The trigger as decisions key it: ``enter``, ``exit`` or ``dwell:<seconds>``."""
        return f"dwell:{self.dwell_s}" if self.trigger == "dwell" else self.trigger


@dataclass(frozen=True, slots=True)
class QuietHours:
    start_min: int
    end_min: int  # exclusive; end < start = overnight (e.g. 22:00-08:00)


@dataclass(frozen=True)
class CampaignSet:
    campaigns: tuple[Campaign, ...] = ()
    max_pushes_per_user_per_day: int | None = None  # across merchants; UTC day
    quiet_hours: QuietHours | None = None
    # (merchant_id, trigger_key) -> campaigns in decision order, and merchant_id -> distinct
    # dwell_s ascending; built in __post_init__. defaultdicts, so that their bound subscripts,
    # ``lookup`` and ``dwells_of``, serve the core's hot path with no Python frame per call (a
    # key never seen is added with ``()``: bounded by the merchants and triggers the core meets).
    _by_key: defaultdict[tuple[str, str], tuple[Campaign, ...]] = field(
        default_factory=lambda: defaultdict(tuple), init=False, repr=False, compare=False
    )
    _dwells: defaultdict[str, tuple[int, ...]] = field(
        default_factory=lambda: defaultdict(tuple), init=False, repr=False, compare=False
    )
    lookup: Callable[[tuple[str, str]], tuple[Campaign, ...]] = field(
        init=False, repr=False, compare=False
    )
    dwells_of: Callable[[str], tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups: dict[tuple[str, str], list[Campaign]] = {}
        dwells: dict[str, set[int]] = {}
        for c in self.campaigns:
            groups.setdefault((c.merchant_id, c.trigger_key), []).append(c)
            if c.dwell_s is not None:
                dwells.setdefault(c.merchant_id, set()).add(c.dwell_s)
        for key, cs in groups.items():
            cs.sort(key=lambda c: (-c.priority, -c.coupon.value, c.id))
            self._by_key[key] = tuple(cs)
        for m, ds in dwells.items():
            self._dwells[m] = tuple(sorted(ds))
        object.__setattr__(self, "lookup", self._by_key.__getitem__)
        object.__setattr__(self, "dwells_of", self._dwells.__getitem__)

    def candidates(self, merchant_id: str, trigger_key: str) -> tuple[Campaign, ...]:
        """Campaigns of this merchant on this trigger, in decision order."""
        return self._by_key.get((merchant_id, trigger_key), ())

    def dwell_thresholds(self, merchant_id: str) -> tuple[int, ...]:
        """Distinct ``dwell_s`` of this merchant's dwell campaigns, ascending."""
        return self._dwells.get(merchant_id, ())

    def get(self, campaign_id: str) -> Campaign | None:
        for c in self.campaigns:
            if c.id == campaign_id:
                return c
        return None

    def __len__(self) -> int:
        return len(self.campaigns)


# --- pydantic models at the edge -----------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CouponModel(_Model):
    title: str = Field(min_length=1)
    value: float = Field(ge=0)
    currency: str = Field(min_length=1, max_length=8)
    expires_in_s: int = Field(gt=0)


class AudienceModel(_Model):
    segment: Literal["all", "new", "returning", "followers"] = "all"
    tags_any: list[str] = Field(default_factory=list)
    exclude_tags: list[str] = Field(default_factory=list)


def _hhmm_before(v: Any) -> Any:
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError(
            "write times of day as quoted strings like '07:00' "
            "(YAML reads an unquoted 07:00 as the number 420)"
        )
    return v


_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _parse_hhmm(v: str) -> int:
    m = _HHMM.match(v) if isinstance(v, str) else None
    if m is None:
        raise ValueError(
            f"{v!r} is not a time of day like '09:30' (00:00 to 23:59; end may be 24:00)"
        )
    return int(m.group(1)) * 60 + int(m.group(2))


def _parse_instant(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected an ISO 8601 date-time or epoch seconds, not a boolean")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError as exc:
            raise ValueError(
                f"{v!r} is not an ISO 8601 date-time like '2026-01-31T00:00:00Z'"
            ) from exc
    else:
        raise ValueError("expected an ISO 8601 date-time or epoch seconds")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class ScheduleModel(_Model):
    days: list[Day] = Field(default_factory=lambda: list(_ALL_DAYS), min_length=1)
    start: str = "00:00"
    end: str = "24:00"
    valid_from: float | None = None
    valid_until: float | None = None

    _hhmm_type = field_validator("start", "end", mode="before")(_hhmm_before)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if v != "24:00":
            _parse_hhmm(v)
        return v

    @field_validator("valid_from", "valid_until", mode="before")
    @classmethod
    def _instant(cls, v: Any) -> float | None:
        return None if v is None else _parse_instant(v)


class CapsModel(_Model):
    per_user: int | None = Field(default=None, ge=1)
    period_s: float | None = Field(default=None, gt=0)
    cooldown_s: float = Field(default=0.0, ge=0)


class CampaignModel(_Model):
    id: str = Field(min_length=1)
    merchant_id: str = Field(min_length=1)
    stores: list[str] | None = None
    trigger: Literal["enter", "dwell", "exit"]
    dwell_s: int | None = Field(default=None, gt=0)
    audience: AudienceModel = Field(default_factory=AudienceModel)
    schedule: ScheduleModel = Field(default_factory=ScheduleModel)
    caps: CapsModel = Field(default_factory=CapsModel)
    inventory: int | None = Field(default=None, ge=0)
    priority: int = 0
    holdout_pct: float = 0.0
    coupon: CouponModel

    @field_validator("holdout_pct")
    @classmethod
    def _pct(cls, v: float) -> float:
        if not 0.0 <= v < 100.0:
            raise ValueError(
                f"{v:g} is not a share of users: holdout_pct is the percent of eligible users "
                "held out to measure lift, from 0 (none, the default) to below 100, e.g. 10"
            )
        return v


class QuietHoursModel(_Model):
    start: str
    end: str

    _hhmm_type = field_validator("start", "end", mode="before")(_hhmm_before)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        _parse_hhmm(v)
        return v


class CampaignFileModel(_Model):
    max_pushes_per_user_per_day: int | None = Field(default=None, ge=0)
    quiet_hours: QuietHoursModel | None = None
    campaigns: list[dict[str, Any]]


def _to_campaign(m: CampaignModel) -> Campaign:
    s = m.schedule
    a = m.audience
    return Campaign(
        any_time=(
            len(set(s.days)) == 7
            and s.start == "00:00"
            and s.end == "24:00"
            and s.valid_from is None
            and s.valid_until is None
        ),
        anyone=a.segment == "all" and not a.tags_any and not a.exclude_tags,
        uncapped=m.caps.per_user is None and m.caps.cooldown_s == 0.0,
        id=m.id,
        merchant_id=m.merchant_id,
        trigger=m.trigger,
        dwell_s=m.dwell_s,
        coupon=CouponSpec(m.coupon.title, m.coupon.value, m.coupon.currency, m.coupon.expires_in_s),
        stores=frozenset(m.stores) if m.stores is not None else None,
        segment=m.audience.segment,
        tags_any=frozenset(m.audience.tags_any),
        exclude_tags=frozenset(m.audience.exclude_tags),
        days=frozenset(DAYS.index(d) for d in s.days),
        start_min=_parse_hhmm(s.start),
        end_min=24 * 60 if s.end == "24:00" else _parse_hhmm(s.end),
        valid_from=s.valid_from,
        valid_until=s.valid_until,
        per_user=m.caps.per_user,
        period_s=m.caps.period_s,
        cooldown_s=m.caps.cooldown_s,
        inventory=m.inventory,
        priority=m.priority,
        holdout_pct=m.holdout_pct,
    )


def _rules(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The rules that tie fields together, as (path, message), checked on the raw campaign so
    that they are reported together with the field errors (a pydantic model validator runs only
    once every field is valid, which would hide them until the rest is fixed). Fields of the
    wrong type are skipped here: the field check reports them."""
    out: list[tuple[str, str]] = []
    trigger, dwell_s = raw.get("trigger"), raw.get("dwell_s")
    if trigger == "dwell" and dwell_s is None:
        out.append(("", "trigger 'dwell' needs dwell_s (seconds the visit must last)"))
    if trigger in ("enter", "exit") and dwell_s is not None:
        out.append(("", f"dwell_s is only for trigger 'dwell', not {trigger!r}"))
    if raw.get("stores") == []:
        out.append(("stores", "stores is empty: omit it for every store of the merchant"))
    caps = raw.get("caps")
    if isinstance(caps, dict) and (caps.get("per_user") is None) != (caps.get("period_s") is None):
        out.append(("caps", "per_user and period_s go together (N pushes per period_s seconds)"))
    sched = raw.get("schedule")
    if isinstance(sched, dict):
        bounds = []
        for key in ("valid_from", "valid_until"):
            try:
                bounds.append(None if sched.get(key) is None else _parse_instant(sched[key]))
            except ValueError:
                bounds.append(None)
        if bounds[0] is not None and bounds[1] is not None and bounds[1] <= bounds[0]:
            out.append(("schedule", "valid_until must be after valid_from"))
        start, end = sched.get("start", "00:00"), sched.get("end", "24:00")
        if isinstance(start, str) and start == end:
            out.append(
                ("schedule", "start and end are equal: an empty window (omit both for all day)")
            )
    return out


def _model_at(model: type[BaseModel], path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the object at ``path`` under ``model`` (None if the
    path leads elsewhere, e.g. into a list)."""
    for part in path:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            return None
        kinds = [info.annotation, *get_args(info.annotation)]
        sub = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return model


def _unknown_field(name: str, model: type[BaseModel] | None) -> str:
    """'unknown field ...' with the nearest known name, or the known names when none is near."""
    if model is None:
        return f"unknown field {name!r}"
    known = list(model.model_fields)
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return f"unknown field {name!r} (did you mean {near[0]!r}?)"
    return f"unknown field {name!r} (known fields: {', '.join(known)})"


def _fmt_error(
    where: str, exc: ValidationError, model: type[BaseModel], file_level: bool = False
) -> list[str]:
    """One line per pydantic error, ``where`` then the field path joined with dots (e.g.
    ``campaigns[0] (id 'x').coupon.currency: Field required``). ``file_level``: the path follows
    ``where`` after ': ' and the errors inside the file's campaigns are left out (they are
    checked one by one)."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if file_level and len(loc) > 1 and loc[0] == "campaigns":
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            msg = _unknown_field(loc[-1], _model_at(model, loc[:-1]))
            loc = loc[:-1]
        out.append(_line(where, ".".join(str(p) for p in loc), msg, ": " if file_level else "."))
    return out


def _line(where: str, path: str, msg: str, sep: str = ".") -> str:
    return f"{where}{sep}{path}: {msg}" if path else f"{where}: {msg}"


def _check_campaign(raw: Any, where: str) -> tuple[Campaign | None, list[str]]:
    if not isinstance(raw, dict):
        got = {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
            type(raw), "null" if raw is None else type(raw).__name__
        )
        return None, [
            f"{where}: a campaign must be an object of fields (id, merchant_id, trigger, coupon, ...), got {got}"
        ]
    problems: list[str] = []
    model: CampaignModel | None = None
    try:
        model = CampaignModel.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_fmt_error(where, exc, CampaignModel))
    problems.extend(_line(where, path, msg) for path, msg in _rules(raw))
    if problems or model is None:
        return None, problems
    return _to_campaign(model), []


def campaign_problems(raw: Any, where: str = "campaign") -> list[str]:
    """Every problem of one campaign (as one entry of a campaign file, docs/campaigns.md), each a
    line starting with ``where``; empty when it is valid. A file is validated with exactly this
    check per campaign, plus unique ids and the file-level settings."""
    return _check_campaign(raw, where)[1]


def parse_campaign(raw: Any, where: str = "campaign") -> Campaign:
    """One validated campaign; raises ``CampaignError`` listing every problem."""
    campaign, problems = _check_campaign(raw, where)
    if campaign is None:
        raise CampaignError(problems)
    return campaign


def parse_campaigns(doc: Any, source: str = "campaigns") -> CampaignSet:
    """Validate a parsed campaign document (a list of campaigns, or an object with ``campaigns``
    plus the global settings); raise ``CampaignError`` listing every problem."""
    if isinstance(doc, list):
        doc = {"campaigns": doc}
    if not isinstance(doc, dict):
        raise CampaignError(
            [f"{source}: expected a list of campaigns or an object with 'campaigns'"]
        )
    problems: list[str] = []
    top: CampaignFileModel | None = None
    try:
        top = CampaignFileModel.model_validate(doc)
    except ValidationError as exc:
        problems.extend(_fmt_error(source, exc, CampaignFileModel, file_level=True))
    raw_campaigns = doc.get("campaigns")
    if not isinstance(raw_campaigns, list):
        raise CampaignError(problems)
    campaigns: list[Campaign] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_campaigns):
        cid = raw.get("id") if isinstance(raw, dict) else None
        where = f"{source}: campaigns[{i}]" + (f" (id {cid!r})" if cid else "")
        campaign, found = _check_campaign(raw, where)
        problems.extend(found)
        if isinstance(cid, str) and cid:
            if cid in seen:
                problems.append(f"{where}: duplicate id, also campaigns[{seen[cid]}]")
            else:
                seen[cid] = i
        if campaign is not None:
            campaigns.append(campaign)
    if problems or top is None:
        raise CampaignError(problems)
    quiet = None
    if top.quiet_hours is not None:
        quiet = QuietHours(_parse_hhmm(top.quiet_hours.start), _parse_hhmm(top.quiet_hours.end))
    return CampaignSet(tuple(campaigns), top.max_pushes_per_user_per_day, quiet)


def load_campaigns(path: str | os.PathLike[str]) -> CampaignSet:
    """Read a campaign file: ``.yaml``/``.yml`` as YAML, anything else as JSON."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError([f"{p}: cannot read campaign file ({exc})"]) from exc
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: a syntax error
        raise CampaignError(
            [f"{p}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {exc}"]
        ) from exc
    return parse_campaigns(doc, str(p))


def catalog_warnings(campaigns: CampaignSet, stores: Iterable[Store] | Catalog) -> list[str]:
    """What in ``campaigns`` matches nothing in the store catalog and so can never push: a
    merchant_id with no store, a listed store that is missing or belongs to another merchant.
    Not errors (the catalog may be updated later): ``geopush replay`` and ``geopush run`` print
    them at load. ``stores``: the catalog's live stores, or the Catalog (which then need not
    make the Store objects of a snapshot)."""
    owner_of: Callable[[str], str | None]
    if hasattr(stores, "owners"):  # a Catalog (not imported here: fast --help)
        catalog = cast("Catalog", stores)
        merchants = set(map(operator.itemgetter(1), catalog.owners()))  # at C speed
        peek = getattr(catalog.stores, "owner", None)  # no Store made (fences.columns)

        def owner_of(sid: str) -> str | None:
            slot = catalog.slot_of(sid)
            if slot is None:
                return None
            return peek(slot)[1] if peek is not None else catalog.stores[slot].merchant_id

        def pairs() -> Iterable[tuple[str, str]]:
            return catalog.owners()

    else:
        by_id = {s.store_id: s.merchant_id for s in stores}
        merchants = set(by_id.values())
        owner_of = by_id.get
        pairs = by_id.items
    out: list[str] = []
    for c in campaigns.campaigns:
        if c.merchant_id not in merchants:
            out.append(
                f"campaign {c.id!r}: merchant_id {c.merchant_id!r} has no store in the catalog, "
                f"so the campaign never pushes{_nearest(c.merchant_id, merchants, 'merchants')}"
            )
            continue
        for sid in sorted(c.stores or ()):
            owner = owner_of(sid)
            if owner is None:
                own = [s for s, m in pairs() if m == c.merchant_id]
                out.append(
                    f"campaign {c.id!r}: store {sid!r} is not in the catalog, so the campaign "
                    f"never pushes there{_nearest(sid, own, f'stores of {c.merchant_id!r}')}"
                )
            elif owner != c.merchant_id:
                out.append(
                    f"campaign {c.id!r}: store {sid!r} belongs to merchant {owner!r}, not "
                    f"{c.merchant_id!r}, so the campaign never pushes there"
                )
    return out


def _nearest(name: str, known: Iterable[str], what: str) -> str:
    names = sorted(known)
    folded = {n.casefold(): n for n in reversed(names)}  # the first of names that fold alike
    near = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.6)
    if near:
        return f" (did you mean {folded[near[0]]!r}?)"
    shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    return f" (the catalog's {what}: {shown})" if names else " (the catalog is empty)"
