"""`geopush simulate publish` (simulator.publish.publish_trace) over a real broker."""

from __future__ import annotations

import asyncio
import json

from simulator.publish import publish_trace

from .conftest import Collector


async def test_publish_trace_routes_each_line_to_its_user_topic(broker, tmp_path):
    lines = [
        json.dumps({"type": "gps", "user": f"u{i % 3}", "ts": 1000.0 + i, "lon": 1, "lat": 1, "acc": 5})
        for i in range(30)
    ]
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"type": "gps", "ts": 1}))  # no user: cannot be routed
    lines.append(json.dumps({"type": "batch", "user": "u9", "events": [{"type": "nfc", "ts": 1031.0, "tag": "t"}]}))
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    async with Collector(broker.url, ["geopush/events/#"]) as col:
        stats = await asyncio.to_thread(publish_trace, trace, broker.url, progress=False)
        assert stats.published == 31 and stats.skipped == 2 and stats.skipped_lines == [6, 10]
        await col.wait_for(lambda c: len(c.messages) == 31)
        # paced by the trace's clock, 100x: 30 events 1 s apart take ~0.3 s (not asserted: timing)
        stats2 = await asyncio.to_thread(publish_trace, trace, broker.url, speed=100.0, progress=False)
        assert stats2.published == 31
        await col.wait_for(lambda c: len(c.messages) == 62)
    topics = {t for t, _ in col.messages}
    assert topics == {"geopush/events/u0", "geopush/events/u1", "geopush/events/u2", "geopush/events/u9"}
    first = [json.loads(p) for t, p in col.messages[:31] if t == "geopush/events/u0"]
    assert [e["ts"] for e in first] == sorted(e["ts"] for e in first)  # order kept per user
