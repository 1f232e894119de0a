"""`geopush bench start` runs small: every start reaches online, the restart uses the snapshot
(its child process refuses to report otherwise), and the table prints."""

from __future__ import annotations

import argparse

import pytest


def test_bench_start_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.bench import start

    r = start.measure(300, seed=2, repeat=1)
    for mode in ("baseline", "cold", "snapshot"):
        assert r[mode]["online"]["wall_s"] > 0
    assert "catalog" in r["baseline"] and "snapshot_save" in r["cold"]
    assert "snapshot_load" in r["snapshot"] and "catalog" not in r["snapshot"]
    assert r["snapshot_mb"] > 0
    start._print_table(r)
    assert "snapshot_load" in capsys.readouterr().out


def test_bench_start_is_registered_with_its_flags() -> None:
    from simulator.bench import start

    parser = argparse.ArgumentParser()
    start.register(parser.add_subparsers())
    args = parser.parse_args(["start", "--stores", "1000", "--repeat", "2"])
    assert (args.stores, args.repeat, args.func) == (1000, 2, start._run)
