"""The core's MemoryStore shortcut (the sweep reusing the record queued with a visit) against the
plain path a durable store takes: same outputs, same stats."""

from __future__ import annotations

from typing import Any

from engine.core import Core
from engine.events import decode
from engine.outputs import encode_output
from engine.state import MemoryStore, UserState
from simulator.bench.replay import T0, build_workload


class PlainStore(MemoryStore):
    """MemoryStore taking the durable stores' path: not ``in_memory``, so the core sends loading
    hints and its sweep looks each user up again, as for SQLite and Redis."""

    in_memory = False

    def user(self, user: str) -> UserState:
        return self.all_users().get(user) or self._create(user)

    def _create(self, user: str) -> UserState:
        st = self.all_users()[user] = UserState(user=user)
        return st


def _run(store: MemoryStore, index: Any, campaigns: Any, lines: list[bytes]) -> tuple[list[bytes], dict[str, Any]]:
    core = Core(index, campaigns, store)
    outs: list[Any] = []
    for i in range(0, len(lines), 256):
        evs = [ev for raw in lines[i : i + 256] for ev in decode(raw)]
        outs += core.process(evs)
    outs += core.flush(T0 + 7200.0)
    return [encode_output(o) for o in outs], core.stats.to_dict()


def test_memory_store_creates_each_record_once() -> None:
    s = MemoryStore()
    a = s.user("u1")
    assert a.user == "u1" and a.visits == {}
    assert s.user("u1") is a
    assert list(s.all_users()) == ["u1"]


def test_memory_shortcuts_match_the_plain_path() -> None:
    # dense enough that visits open, dwell and time out through the sweep
    index, campaigns, lines = build_workload(300, 400, 20_000, seed=5, jitter_m=40.0)
    assert Core(index, campaigns, PlainStore())._keep_records is False  # the other path
    fast = _run(MemoryStore(), index, campaigns, lines)
    plain = _run(PlainStore(), index, campaigns, lines)
    assert fast[1]["visits"]["exit"] > 0 and fast[1]["exits_by_cause"].get("timeout", 0) > 0
    assert fast == plain


def test_a_subclass_overriding_user_keeps_its_method() -> None:
    calls: list[str] = []

    class Counting(MemoryStore):
        def user(self, user: str) -> UserState:
            calls.append(user)
            return super().user(user)

    s = Counting()
    s.user("u1")
    assert calls == ["u1"]
    assert MemoryStore().user("u2").user == "u2"
