"""`geopush run --state redis://... --group NAME`: settings and subscriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.daemon.config import load_settings
from engine.daemon.service import Service
from engine.errors import ConfigError


def test_a_redis_url_survives_as_state_and_writes_no_pid_file_by_default() -> None:
    s = load_settings({"state": "redis://10.0.0.7:6380/2", "group": "g", "client_id": "w3"})
    assert s.redis_url == "redis://10.0.0.7:6380/2"  # not "redis:/10.0.0.7..." (Path eats //)
    assert s.pid_path is None  # not geopush-w3.pid in the working directory
    given = load_settings({"state": "redis://10.0.0.7:6380/2", "pid_file": Path("/run/g/w3.pid")})
    assert given.pid_path == Path("/run/g/w3.pid")
    sqlite = load_settings({"state": Path("/var/lib/geopush/state.sqlite")})
    assert sqlite.redis_url is None
    assert sqlite.pid_path == Path("/var/lib/geopush/state.sqlite.pid")


def test_a_group_needs_shared_state() -> None:
    with pytest.raises(ConfigError, match="--group needs shared state"):
        load_settings({"group": "g", "state": "state.sqlite"})
    with pytest.raises(ConfigError, match="group"):
        load_settings({"group": "a/b", "state": "redis://localhost:6379/0"})


def test_a_worker_subscribes_through_the_shared_group() -> None:
    s = load_settings({"state": "redis://localhost:6379/0", "group": "engines", "client_id": "w1"})
    subs = Service(s, lambda store: store)._subscriptions()
    assert subs == [
        "$share/engines/geopush/events/+",
        "$share/engines/owntracks/+/+",
        "geopush/control/w1",  # control stays per worker
    ]
    alone = Service(load_settings({"state": "x.sqlite"}), lambda store: store)._subscriptions()
    assert "geopush/events/+" in alone and not any(t.startswith("$share") for t in alone)


def test_a_redis_worker_leaves_no_pid_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    svc = Service(load_settings({"state": "redis://localhost:6379/0", "group": "g"}), lambda s: s)
    svc._write_pid()  # what Service.run does at start
    assert list(tmp_path.iterdir()) == []
    svc._remove_pid()
    beside = Service(load_settings({"state": tmp_path / "db" / "s.sqlite"}), lambda s: s)
    beside._write_pid()
    assert (tmp_path / "db" / "s.sqlite.pid").read_text().strip().isdigit()
