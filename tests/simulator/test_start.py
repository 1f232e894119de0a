"""`--start`: one parser for `geopush simulate city` and `geopush demo`, one meaning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import build_parser, main
from simulator.city import DAY0
from simulator.start import Start, parse_start

NOON = DAY0 + 12 * 3600.0  # Monday 2026-03-02 12:00 UTC


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("12", Start(12.0)),
        ("12.5", Start(12.5)),
        ("12:30", Start(12.5)),
        ("06:15:36", Start(6.26)),
        ("0", Start(0.0)),
        ("24:00", Start(24.0)),
        ("2026-03-02T12:00", Start(12.0, NOON)),
        ("2026-03-02T12:00:00Z", Start(12.0, NOON)),
        ("2026-03-02T13:00+01:00", Start(12.0, NOON)),
        (str(int(NOON)), Start(12.0, NOON)),
    ],
)
def test_the_forms_of_a_start(text: str, want: Start) -> None:
    got = parse_start(text)
    assert got.epoch == want.epoch and got.hour == pytest.approx(want.hour)


@pytest.mark.parametrize("text", ["", "noon", "25", "12:75", "24:30", "-3", "5000", "1:2:3:4"])
def test_a_bad_start_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="--start") as err:
        parse_start(text)
    assert "0-24" in str(err.value) or "at most 24:00" in str(err.value)


def _city(tmp_path: Path, name: str, *start: str) -> tuple[dict[str, object], bytes]:
    out = tmp_path / name
    argv = ["simulate", "city", "--stores", "20", "--users", "10", "--hours", "0.5", "--seed", "4",
            "--out", str(out), "--quiet", *start]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "city.json").read_text()), (out / "trace.jsonl").read_bytes()


def test_simulate_city_takes_every_form_to_the_same_city(tmp_path: Path) -> None:
    """A time of day, an ISO date-time, epoch seconds (the old form) and the old --start-hour
    make the same city: the same instant and the same time of day in the people's routines."""
    base_info, base_trace = _city(tmp_path, "hour", "--start", "12")
    assert base_info["t0"] == NOON
    for i, start in enumerate(
        [["--start", "12:00"], ["--start", "2026-03-02T12:00Z"], ["--start", str(int(NOON))],
         ["--start-hour", "12"]]
    ):  # fmt: skip
        info, trace = _city(tmp_path, f"c{i}", *start)
        assert info["t0"] == NOON, start
        assert trace == base_trace, start


def test_simulate_city_refuses_two_times_of_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "city", "--stores", "20", "--out", str(tmp_path), "--start", "12",
                 "--start-hour", "9"]) != 0  # fmt: skip
    assert "not both" in capsys.readouterr().err


def test_the_demo_takes_a_time_of_day_as_simulate_city_does(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["demo", "--start", "12:30"]).start.hour == 12.5
    assert parser.parse_args(["demo"]).start.hour == 12.0
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--start", "2026-03-02T12:00"])
    err = capsys.readouterr().err
    assert "a time of day" in err and "12:30" in err
