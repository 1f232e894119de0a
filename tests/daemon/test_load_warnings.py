"""`geopush run` warns, in its log and in its start-up message, about campaigns that match
nothing in the catalog (they would never push)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from engine.daemon.config import load_settings
from engine.daemon.service import Service, real_core_factory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_start_up_message_carries_the_campaign_warnings(
    broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    camps = tmp_path / "campaigns.yaml"
    camps.write_text((EXAMPLES / "campaigns.yaml").read_text().replace("m-books", "m-book"))
    settings = load_settings(
        {
            "broker": broker.url,
            "state": tmp_path / "s.db",
            "status_interval": 0.5,
            "fences": EXAMPLES / "stores.geojson",
            "campaigns": camps,
        }
    )
    caplog.set_level(logging.INFO, logger="geopush.daemon")
    warnings: list[str] = []
    factory = real_core_factory(settings, warnings)
    expected = (
        "campaign 'books-goodbye': merchant_id 'm-book' has no store in the catalog, so the "
        "campaign never pushes (did you mean 'm-books'?)"
    )
    assert warnings == [expected]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [expected]
    svc = Service(settings, factory, load_warnings=warnings)
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.ready.wait(), 15)
    finally:
        svc.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connected to")]
    assert started and started[0].endswith(f"; 1 load warning(s): {expected}")
