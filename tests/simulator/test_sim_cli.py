"""CLI smoke tests on tiny sizes: simulate city -> replay -> score, importers, help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main


@pytest.fixture(scope="module")
def tiny_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    assert main(["simulate", "city", "--stores", "200", "--users", "150", "--hours", "10",
                 "--seed", "5", "--out", str(out), "--quiet"]) == 0
    return out


def test_city_command_writes_every_file(tiny_city: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("stores.geojson", "campaigns.json", "profiles.jsonl", "trace.jsonl",
                 "truth.jsonl", "city.json"):
        assert (tiny_city / name).stat().st_size > 0


def test_city_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "city", "--stores", "20", "--users", "10", "--hours", "1",
                 "--out", str(tmp_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["events"] > 0 and rep["events_per_s"] > 0 and rep["stores"] == 20


def test_bad_sizes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "city", "--stores", "0", "--out", str(tmp_path)])
    assert "must be >= 1" in capsys.readouterr().err


def test_replay_and_score_meet_the_targets(tiny_city: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The whole loop of issue 5 on a tiny city: replay with the engine, score against truth.
    Targets: near-field and WiFi >= 0.95, GPS-only visits of 5 minutes or more >= 0.9."""
    run = tmp_path / "run"
    assert main(["replay", str(tiny_city / "trace.jsonl"), "--fences",
                 str(tiny_city / "stores.geojson"), "--campaigns", str(tiny_city / "campaigns.json"),
                 "--profiles", str(tiny_city / "profiles.jsonl"), "--out", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["score", "--truth", str(tiny_city / "truth.jsonl"), "--visits",
                 str(run / "visits.jsonl"), "--min-stay", "300", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for group, target in (("near-field", 0.95), ("wifi", 0.95), ("gps", 0.9)):
        g = rep["groups"][group]
        assert g["truth"] > 5, group
        assert g["recall"] >= target, (group, g)
        assert g["precision"] >= target, (group, g)
    # The table form prints too.
    assert main(["score", "--truth", str(tiny_city / "truth.jsonl"), "--visits",
                 str(run / "visits.jsonl")]) == 0
    assert "precision" in capsys.readouterr().out


def test_score_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "t.jsonl"
    bad.write_text("not json\n")
    assert main(["score", "--truth", str(bad), "--visits", str(bad)]) == 1
    assert "t.jsonl:1" in capsys.readouterr().err


def test_import_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_text("user,ts,lat,lon,acc\nu1,1700000000,60.17,24.94,12\nu1,1700000030,60.171,24.941,9\n")
    out = tmp_path / "trace.jsonl"
    assert main(["import", "csv", str(src), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["type"] == "gps"


def test_import_mall(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "mall", str(shared_data / "near_field" / "mall"), "--out",
                 str(tmp_path)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["stores"] == 53 and (tmp_path / "truth.jsonl").exists()


@pytest.mark.parametrize("argv", [["simulate", "--help"], ["simulate", "city", "--help"],
                                  ["simulate", "publish", "--help"], ["import", "--help"],
                                  ["import", "mall", "--help"], ["score", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: geopush" in capsys.readouterr().out


def test_publish_to_a_real_broker(tiny_city: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`geopush simulate publish` hands the trace to simulator.publish over a real mosquitto."""
    from simulator.embedded_broker import find_mosquitto, start_broker

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    trace = tmp_path / "head.jsonl"
    trace.write_bytes(b"".join((tiny_city / "trace.jsonl").read_bytes().splitlines(True)[:300]))
    with start_broker("mosquitto") as broker:
        assert main(["simulate", "publish", str(trace), "--broker", broker.url, "--quiet"]) == 0
    assert "published 300 messages" in capsys.readouterr().out
