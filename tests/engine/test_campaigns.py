"""Campaign files: JSON and YAML, the schema's rules, every problem reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.campaigns import CampaignSet, load_campaigns, parse_campaigns
from engine.errors import CampaignError, ProfileError
from engine.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]
COUPON = {"title": "t", "value": 1, "currency": "EUR", "expires_in_s": 60}


def test_example_yaml_and_its_json_twin_load_the_same(tmp_path: Path) -> None:
    ex = ROOT / "examples" / "campaigns.yaml"
    a = load_campaigns(ex)
    doc = yaml.safe_load(ex.read_text())
    for c in doc["campaigns"]:  # JSON has no datetime type: ISO strings
        for k in ("valid_from", "valid_until"):
            if k in c.get("schedule", {}):
                c["schedule"][k] = (
                    c["schedule"][k].isoformat()
                    if hasattr(c["schedule"][k], "isoformat")
                    else c["schedule"][k]
                )
    p = tmp_path / "c.json"
    p.write_text(json.dumps(doc))
    b = load_campaigns(p)
    assert a.campaigns == b.campaigns
    assert len(a) == 3 and a.max_pushes_per_user_per_day == 3
    assert a.quiet_hours is not None and (a.quiet_hours.start_min, a.quiet_hours.end_min) == (
        1320,
        480,
    )
    welcome = a.get("coffee-welcome")
    assert welcome is not None and welcome.days == frozenset(range(5))
    assert (welcome.start_min, welcome.end_min) == (420, 660)
    assert welcome.valid_from == 1767225600.0


def test_decision_order_is_priority_then_value_then_id() -> None:
    cs = parse_campaigns(
        [
            {
                "id": "b",
                "merchant_id": "m",
                "trigger": "enter",
                "priority": 1,
                "coupon": {**COUPON, "value": 5},
            },
            {
                "id": "a",
                "merchant_id": "m",
                "trigger": "enter",
                "priority": 1,
                "coupon": {**COUPON, "value": 5},
            },
            {
                "id": "c",
                "merchant_id": "m",
                "trigger": "enter",
                "priority": 1,
                "coupon": {**COUPON, "value": 9},
            },
            {"id": "d", "merchant_id": "m", "trigger": "enter", "priority": 2, "coupon": COUPON},
            {"id": "x", "merchant_id": "m", "trigger": "dwell", "dwell_s": 60, "coupon": COUPON},
        ]
    )
    assert [c.id for c in cs.candidates("m", "enter")] == ["d", "c", "a", "b"]
    assert [c.id for c in cs.candidates("m", "dwell:60")] == ["x"]
    assert cs.candidates("m", "exit") == () and cs.candidates("other", "enter") == ()
    assert cs.dwell_thresholds("m") == (60,)


def test_every_problem_is_reported() -> None:
    bad = [
        {"id": "a", "merchant_id": "m", "trigger": "dwell", "coupon": COUPON},  # no dwell_s
        {"id": "b", "merchant_id": "m", "trigger": "enter", "dwell_s": 5, "coupon": COUPON},
        {"id": "c", "merchant_id": "m", "trigger": "leave", "coupon": COUPON},
        {
            "id": "d",
            "merchant_id": "m",
            "trigger": "enter",
            "coupon": COUPON,
            "caps": {"per_user": 1},
        },
        {
            "id": "e",
            "merchant_id": "m",
            "trigger": "enter",
            "coupon": COUPON,
            "schedule": {"start": "25:00"},
        },
        {"id": "f", "merchant_id": "m", "trigger": "enter", "coupon": COUPON, "inventory": -1},
        {
            "id": "g",
            "merchant_id": "m",
            "trigger": "enter",
            "coupon": COUPON,
            "audience": {"segment": "vip"},
        },
        {
            "id": "a",
            "merchant_id": "m",
            "trigger": "enter",
            "coupon": COUPON,
        },  # duplicate of [0]? [0] is invalid
        {"id": "h", "merchant_id": "m", "trigger": "enter", "coupon": COUPON, "colour": "red"},
        {
            "id": "i",
            "merchant_id": "m",
            "trigger": "enter",
            "coupon": COUPON,
            "schedule": {"valid_from": "2026-02-01", "valid_until": "2026-01-01"},
        },
    ]
    with pytest.raises(CampaignError) as ei:
        parse_campaigns(bad)
    probs = ei.value.problems
    text = "\n".join(probs)
    for cid in "abcdefghi":
        assert f"(id '{cid}')" in text, cid
    assert "dwell_s" in text and "per_user and period_s go together" in text
    assert "valid_until must be after valid_from" in text
    assert "colour" in text


def test_duplicate_ids_and_file_errors(tmp_path: Path) -> None:
    ok = {"id": "a", "merchant_id": "m", "trigger": "enter", "coupon": COUPON}
    with pytest.raises(CampaignError, match="duplicate id"):
        parse_campaigns([ok, ok])
    with pytest.raises(CampaignError, match="cannot read"):
        load_campaigns(tmp_path / "missing.json")
    p = tmp_path / "bad.yaml"
    p.write_text("campaigns: [\n")
    with pytest.raises(CampaignError, match="not valid YAML"):
        load_campaigns(p)
    p = tmp_path / "bad.json"
    p.write_text("{")
    with pytest.raises(CampaignError, match="not valid JSON"):
        load_campaigns(p)
    with pytest.raises(CampaignError, match="expected a list"):
        parse_campaigns("nope")


def test_unquoted_yaml_time_gets_an_actionable_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("quiet_hours: {start: 22:00, end: '08:00'}\ncampaigns: []\n")
    with pytest.raises(CampaignError, match="quoted strings"):
        load_campaigns(p)


def test_instants_accept_epoch_iso_with_offset_and_naive_utc() -> None:
    cs = parse_campaigns(
        [
            {
                "id": "a",
                "merchant_id": "m",
                "trigger": "exit",
                "coupon": COUPON,
                "schedule": {"valid_from": 100, "valid_until": "2026-01-01T02:00:00+02:00"},
            },
            {
                "id": "b",
                "merchant_id": "m",
                "trigger": "exit",
                "coupon": COUPON,
                "schedule": {"valid_from": "2026-01-01T00:00:00", "end": "24:00", "start": "22:00"},
            },
        ]
    )
    a, b = cs.campaigns
    assert a.valid_from == 100.0 and a.valid_until == 1767225600.0
    assert b.valid_from == 1767225600.0 and (b.start_min, b.end_min) == (1320, 1440)
    assert CampaignSet().candidates("m", "enter") == ()


def test_profiles_file(tmp_path: Path) -> None:
    p = tmp_path / "users.jsonl"
    p.write_text('{"user":"u1","tags":["a","b"]}\n\n# comment\n{"user":"u2","opt_out":true}\n')
    book = load_profiles(p)
    assert len(book) == 2 and "u1" in book
    u1, u2 = book.get("u1"), book.get("u2")
    assert u1 is not None and u1.tags == frozenset({"a", "b"}) and not u1.opt_out
    assert u2 is not None and u2.opt_out and book.get("u3") is None
    p.write_text('{"user":"u1"}\nnot json\n{"tags":[]}\n')
    with pytest.raises(ProfileError) as ei:
        load_profiles(p)
    assert (
        "line 2" in str(ei.value) and "line 3" in str(ei.value) and "line 1:" not in str(ei.value)
    )
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "nope.jsonl")


def test_file_level_and_campaign_problems_together(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "quiet_hours: {start: 22:00, end: '08:00'}\nmax_pushes_per_user_per_day: -1\n"
        "campaigns:\n  - {id: s, merchant_id: m, trigger: dwell, coupon: "
        "{title: t, value: 1, currency: EUR, expires_in_s: 60}}\n"
    )
    with pytest.raises(CampaignError) as ei:
        load_campaigns(p)
    probs = ei.value.problems
    assert len(probs) == 3
    assert any("quiet_hours.start" in x for x in probs)
    assert any("max_pushes_per_user_per_day" in x for x in probs)
    assert any("(id 's')" in x and "needs dwell_s" in x for x in probs)
    with pytest.raises(CampaignError, match="campaigns: Field required"):
        parse_campaigns({})


def test_a_missing_field_is_reported_with_the_others() -> None:
    """Rules tying fields together (dwell_s with trigger dwell, per_user with period_s, the
    schedule's bounds) are reported in the same pass as field errors, not after they are fixed."""
    bad = [
        {"id": "a", "merchant_id": "m", "trigger": "dwell", "coupon": {**COUPON, "value": -1}},
        {
            "id": "b",
            "trigger": "dwell",
            "caps": {"per_user": 0},
            "coupon": COUPON,
            "schedule": {"start": "10:00", "end": "10:00", "days": ["moon"]},
        },
    ]
    with pytest.raises(CampaignError) as ei:
        parse_campaigns(bad)
    probs = ei.value.problems
    assert (
        "campaigns: campaigns[0] (id 'a').coupon.value: Input should be greater than or equal to 0"
        in probs
    )
    assert (
        "campaigns: campaigns[0] (id 'a'): trigger 'dwell' needs dwell_s (seconds the visit must last)"
        in probs
    )
    text = "\n".join(probs)
    assert "(id 'b').merchant_id: Field required" in text
    assert "(id 'b'): trigger 'dwell' needs dwell_s" in text
    assert "(id 'b').caps: per_user and period_s go together" in text
    assert "(id 'b').schedule: start and end are equal" in text
    assert "(id 'b').schedule.days.0" in text
    assert "Value error," not in text


def test_unknown_fields_suggest_the_nearest_name() -> None:
    doc = {
        "campaings": [],
        "campaigns": [
            {
                "id": "a",
                "merchant_id": "m",
                "trigger": "enter",
                "priorty": 3,
                "schedule": {"strat": "09:00"},
                "coupon": {**COUPON, "colour": "red"},
            },
        ],
    }
    with pytest.raises(CampaignError) as ei:
        parse_campaigns(doc, "c.yaml")
    probs = ei.value.problems
    assert (
        "c.yaml: campaigns[0] (id 'a'): unknown field 'priorty' (did you mean 'priority'?)" in probs
    )
    assert (
        "c.yaml: campaigns[0] (id 'a').schedule: unknown field 'strat' (did you mean 'start'?)"
        in probs
    )
    assert (
        "c.yaml: campaigns[0] (id 'a').coupon: unknown field 'colour' "
        "(known fields: title, value, currency, expires_in_s)" in probs
    )
    assert "c.yaml: unknown field 'campaings' (did you mean 'campaigns'?)" in probs


def test_one_campaign_is_validated_exactly_as_in_a_file() -> None:
    from engine.campaigns import campaign_problems, parse_campaign

    good = {"id": "a", "merchant_id": "m", "trigger": "dwell", "dwell_s": 60, "coupon": COUPON}
    assert campaign_problems(good) == []
    assert parse_campaign(good).trigger_key == "dwell:60"
    bad = {"id": "a", "merchant_id": "m", "trigger": "dwell", "priorty": 1, "coupon": COUPON}
    assert campaign_problems(bad) == [
        "campaign: unknown field 'priorty' (did you mean 'priority'?)",
        "campaign: trigger 'dwell' needs dwell_s (seconds the visit must last)",
    ]
    with pytest.raises(CampaignError) as ei:
        parse_campaigns([bad], "f.json")
    assert ei.value.problems == [
        p.replace("campaign:", "f.json: campaigns[0] (id 'a'):") for p in campaign_problems(bad)
    ]
    assert campaign_problems("x") == [
        "campaign: a campaign must be an object of fields (id, merchant_id, trigger, coupon, ...), got a string"
    ]


def test_catalog_warnings_alike_for_a_catalog_and_its_stores(tmp_path: Path) -> None:
    """The campaign check over a Catalog (loaded as columns: no Store made, looked up by
    store_id) says what it says over the list of its stores, also after a store is removed."""
    import json

    from engine.campaigns import catalog_warnings, parse_campaigns
    from fences.catalog import dump_catalog, load_catalog
    from fences.synth import synth_city

    stores = synth_city(300, seed=2).stores
    path = tmp_path / "c.geojson"
    dump_catalog(stores, path)
    coupon = {"title": "t", "value": 1.0, "currency": "EUR", "expires_in_s": 60}
    a, b = stores[0], stores[1]
    camps = parse_campaigns(
        {
            "campaigns": [
                {"id": "ok", "merchant_id": a.merchant_id, "trigger": "enter", "coupon": coupon,
                 "stores": [a.store_id]},
                {"id": "nobody", "merchant_id": "m-nobody", "trigger": "enter", "coupon": coupon},
                {"id": "missing", "merchant_id": a.merchant_id, "trigger": "enter",
                 "coupon": coupon, "stores": ["s-missing", a.store_id]},
                {"id": "other", "merchant_id": a.merchant_id, "trigger": "enter",
                 "coupon": coupon, "stores": [b.store_id]},
            ]
        },
        "camps.json",
    )  # fmt: skip
    catalog = load_catalog(path)
    assert catalog.columns() is not None
    got = catalog_warnings(camps, catalog)
    assert got == catalog_warnings(camps, stores) and len(got) == 3
    assert list.count(catalog.stores, None) == len(stores)  # no Store made
    catalog.remove(b.store_id)
    live = [s for _, s in catalog.alive()]
    assert catalog_warnings(camps, catalog) == catalog_warnings(camps, live)
    assert json.dumps(catalog_warnings(camps, live)).count("is not in the catalog") == 2
