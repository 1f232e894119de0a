"""geopush replay: outputs, dead letters, summary, byte-identical reruns, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from _corekit import T0, beacon, campaign, circle, gps, nfc, pay, wifi

from engine.cli import main
from engine.core import CoreConfig
from engine.events import encode_event
from engine.outputs import decode_output
from engine.replay import ReplayError, replay
from engine.replay_cli import ATTRIBUTION_WINDOW_S, TUNING
from fences.catalog import dump_catalog

STORES = [
    circle("A", 0, 0, 50, wifi=["aa:00:00:00:00:01"]),
    circle("B", 30, 0, 50, beacon_minor=2),
    circle("C", 900, 0, 50, nfc=["tag-c"]),
]


def _inputs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    fences = tmp_path / "stores.geojson"
    dump_catalog(STORES, fences)
    camps = tmp_path / "campaigns.json"
    camps.write_text(
        json.dumps(
            {
                "campaigns": [
                    campaign("a", "m-A", inventory=3),
                    campaign("b", "m-B", "dwell", dwell_s=60),
                    campaign("c", "m-C", "exit", audience={"segment": "returning"}),
                ]
            }
        )
    )
    profiles = tmp_path / "users.jsonl"
    profiles.write_text('{"user": "u3", "opt_out": true}\n')
    lines: list[bytes] = []
    for i, u in enumerate(["u1", "u2", "u3", "u4"]):
        t = T0 + i * 7
        evs = [
            gps(u, t, 0, 0),
            wifi(u, t + 10, ("aa:00:00:00:00:01", -60.0)),
            beacon(u, t + 20, 2, -55.0),
            gps(u, t + 100, 15, 0),
            pay(u, t + 110, "m-C"),
            nfc(u, t + 400, "tag-c"),
            gps(u, t + 500, 50_000, 0),  # 50 km in 400 s: spoofing
            gps(u, t + 300, 900, 0),  # out of order
            gps(u, t + 2000, 2000, 0),  # C lapsed at t + 400 + 900: exit
        ]
        lines += [encode_event(e) for e in evs]
    lines.insert(5, b'{"type":"gps","user":"x"}')
    lines.insert(9, b"not json at all")
    lines.insert(12, b"")  # blank: skipped, not dead
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    return trace, fences, camps, profiles


def test_replay_outputs_deadletter_and_summary(tmp_path: Path) -> None:
    trace, fences, camps, profiles = _inputs(tmp_path)
    s = replay(trace, fences, camps, profiles, out_dir=tmp_path / "out", progress=False)
    out = tmp_path / "out"
    dead = [json.loads(x) for x in (out / "deadletter.jsonl").read_text().splitlines()]
    assert [(d["line"], d["reason"]) for d in dead] == [(6, "missing_field"), (10, "malformed_json")]
    assert dead[1]["raw"] == "not json at all"
    visits = [decode_output(x) for x in (out / "visits.jsonl").read_bytes().splitlines()]
    pushes = [decode_output(x) for x in (out / "pushes.jsonl").read_bytes().splitlines()]
    assert s["events"] == 36 and s["lines"] == 38 and s["deadletter"] == 2
    assert s["events_by_type"] == {"gps": 20, "wifi": 4, "beacon": 4, "payment": 4, "nfc": 4}
    assert s["rejected_by_reason"] == {
        "decode:malformed_json": 1,
        "decode:missing_field": 1,
        "out_of_order": 4,
        "speed": 4,
    }
    assert s["spoofing_suspected"] == 4
    assert s["visits"]["enter"] == sum(1 for v in visits if v.event == "enter")
    assert s["pushes"] == len(pushes)
    by = s["pushes_by_campaign"]
    assert by["a"] == 3  # inventory 3, four users, u3 opted out: u1, u2, u4
    assert all(p.user != "u3" for p in pushes)
    assert by["b"] == 3 and by["c"] == 3
    assert s["new_customer_rate"] == 1.0 and s["payments"] == 4
    assert s["inventory_left"] == {"a": 0}
    assert json.loads((out / "summary.json").read_text()) == s


def test_replay_is_byte_identical(tmp_path: Path) -> None:
    trace, fences, camps, profiles = _inputs(tmp_path)
    replay(trace, fences, camps, profiles, out_dir=tmp_path / "r1", progress=False)
    replay(trace, fences, camps, profiles, out_dir=tmp_path / "r2", progress=True)
    for name in ("visits.jsonl", "pushes.jsonl", "deadletter.jsonl", "summary.json"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes(), name
    assert (tmp_path / "r1" / "visits.jsonl").stat().st_size > 0


def test_cli_replay_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, fences, camps, _ = _inputs(tmp_path)
    rc = main(["replay", str(trace), "--fences", str(fences), "--campaigns", str(camps),
               "--out", str(tmp_path / "o"), "--no-progress", "--presence-timeout-s", "600"])
    assert rc == 0
    assert "36 events from 38 lines (2 dead-lettered)" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x"}]')
    rc = main(["replay", str(trace), "--fences", str(fences), "--campaigns", str(bad), "--out", str(tmp_path / "o2")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "campaigns[0] (id 'x').merchant_id: Field required" in err
    with pytest.raises(ReplayError):
        replay(tmp_path / "missing.jsonl", fences, camps, out_dir=tmp_path / "o3", progress=False)


def test_cli_defaults_match_core_config() -> None:
    defaults = dataclasses.asdict(CoreConfig())
    assert {k: v for k, (v, _) in TUNING.items()} == {k: defaults[k] for k in TUNING}
    assert defaults["attribution_window_s"] == ATTRIBUTION_WINDOW_S


def test_bench_replay_runs_small_and_accounts_every_event() -> None:
    from simulator.bench.replay import measure

    r = measure(300, 2000, 5000, batch=256, seed=3, progress=False)
    assert sum(r["events_by_type"].values()) == 5000
    assert r["events_per_s"] > 0 and r["events_per_cpu_s"] > 0
    assert abs(sum(r["share"].values()) - 1.0) < 0.01
    assert r["visits"]["enter"] >= r["visits"]["exit"] > 0


def test_bench_replay_loop_pairs_the_workloads() -> None:
    """--loop: the same number of events both ways; the loop pass redeems pushed codes (mostly
    ok), attributes payments and holds users out."""
    from simulator.bench.replay import measure_loop

    r = measure_loop(300, 2000, 20_000, batch=256, seed=3, progress=False, rounds=1)
    by = r["loop_events_by_type"]
    assert sum(by.values()) == 20_000 and by["redeem"] > 0 and by["payment"] > 0
    red = r["loop_redemptions_by_status"]
    assert red.get("ok", 0) > red.get("not_found", 0)
    assert r["loop_held_out"] > 0 and r["loop_attributed_orders"] > 0
    assert r["events_per_s_plain"] > 0 and r["events_per_s_loop"] > 0


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_examples_replay_to_pushes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/: the catalog, trace and profiles go with examples/campaigns.yaml (the command in
    docs/campaigns.md): each campaign pushes once, and nothing is warned about."""
    rc = main(["replay", str(EXAMPLES / "trace.jsonl"), "--fences", str(EXAMPLES / "stores.geojson"),
               "--campaigns", str(EXAMPLES / "campaigns.yaml"), "--profiles", str(EXAMPLES / "users.jsonl"),
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "pushes: 3;" in out and "warning" not in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pushes"] > 0 and summary["campaign_warnings"] == []
    assert summary["pushes_by_campaign"] == {"coffee-welcome": 1, "coffee-stay": 1, "books-goodbye": 1}


def test_replay_warns_about_campaigns_that_match_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, fences, _, _ = _inputs(tmp_path)
    camps = tmp_path / "c.json"
    camps.write_text(json.dumps({"campaigns": [campaign("a", "m-a"), campaign("b", "m-B", stores=["B", "A", "Z"])]}))
    rc = main(["replay", str(trace), "--fences", str(fences), "--campaigns", str(camps),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "geopush: warning: campaign 'a': merchant_id 'm-a' has no store in the catalog, so the "
        "campaign never pushes (did you mean 'm-A'?)",
        "geopush: warning: campaign 'b': store 'A' belongs to merchant 'm-A', not 'm-B', so the "
        "campaign never pushes there",
        "geopush: warning: campaign 'b': store 'Z' is not in the catalog, so the campaign never "
        "pushes there (the catalog's stores of 'm-B': 'B')",
    ]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["campaign_warnings"] == [e.removeprefix("geopush: warning: ") for e in err]


def test_replay_from_a_fences_snapshot_is_byte_identical(tmp_path: Path) -> None:
    """A replay started from the compiled snapshot writes exactly what a cold start writes."""
    snap = tmp_path / "stores.snapshot"
    outs = []
    for k in range(3):  # cold (no snapshot), cold writing it, from it
        out = tmp_path / f"out{k}"
        args = ["replay", str(EXAMPLES / "trace.jsonl"), "--fences", str(EXAMPLES / "stores.geojson"),
                "--campaigns", str(EXAMPLES / "campaigns.yaml"), "--profiles", str(EXAMPLES / "users.jsonl"),
                "--out", str(out), "--no-progress"]  # fmt: skip
        if k:
            args += ["--fences-snapshot", str(snap)]
        assert main(args) == 0
        assert snap.exists() == bool(k)
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1] == outs[2]
    assert outs[2]["pushes.jsonl"].strip()  # the examples push
