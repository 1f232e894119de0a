"""TimerQueue against the obvious oracle: a heapq of the same tuples."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.timers import TimerQueue

dues = st.one_of(
    st.floats(min_value=0.0, max_value=50.0, allow_nan=False),
    st.integers(min_value=0, max_value=50).map(float),  # whole seconds: bucket edges
    st.just(float("inf")),
)
timer = st.tuples(dues, st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["a", "b"]), st.text("xy", max_size=2))
step = st.one_of(
    st.tuples(st.just("push"), timer),
    st.tuples(st.just("pop"), st.floats(min_value=-1.0, max_value=60.0, allow_nan=False)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=80))
def test_pops_what_a_heap_pops_in_the_same_order(steps: list[tuple[str, object]]) -> None:
    q = TimerQueue()
    heap: list[tuple[float, str, str, str]] = []
    for kind, arg in steps:
        if kind == "push":
            q.push(arg)  # type: ignore[arg-type]
            heapq.heappush(heap, arg)  # type: ignore[arg-type]
        else:
            up_to = float(arg)  # type: ignore[arg-type]
            want = []
            while heap and heap[0][0] < up_to:
                want.append(heapq.heappop(heap))
            assert q.pop_due(up_to) == want
        assert len(q) == len(heap)
    assert q.pop_due(float("inf")) == [t for t in sorted(heap) if t[0] < float("inf")]


def test_a_partly_due_second_keeps_the_rest() -> None:
    q = TimerQueue()
    for due in (10.9, 10.1, 10.5, 11.0):
        q.push((due, "u", "s", str(due)))
    assert [t[0] for t in q.pop_due(10.5)] == [10.1]
    assert [t[0] for t in q.pop_due(10.5)] == []
    q.push((10.2, "u", "s", "late"))  # queued late, still before the next cut
    assert [t[0] for t in q.pop_due(12.0)] == [10.2, 10.5, 10.9, 11.0]
    assert len(q) == 0
