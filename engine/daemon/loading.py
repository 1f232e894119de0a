"""Loading the fences and campaigns from their files (at start and for a reload) and laying the
HTTP API's changes over them, with the bookkeeping of which API changes a loaded index holds
(``API_SEQ``, ``LOADED_SEQ``, ``LOADED_SEQS``); the warm-up run before connecting.

The daemon (engine/daemon/service.py) and the API's process (engine/api/process.py) load through
``load_fences_and_campaigns``.
"""

from __future__ import annotations

import gc
import logging
import weakref
from typing import Any

from engine.daemon.config import Settings
from engine.errors import GeopushError

log = logging.getLogger("geopush.daemon")


def load_fences_and_campaigns(
    settings: Settings, warnings: list[str] | None = None
) -> dict[str, Any]:
    """Fresh fence index and campaigns from the configured files (also the SIGHUP reloader).
    Campaigns that match nothing in the catalog are logged as warnings (and appended to
    ``warnings``)."""
    from engine.campaigns import catalog_warnings, load_campaigns
    from fences.snapshot import load_index

    if settings.fences is None or settings.campaigns is None:
        raise GeopushError("--fences and --campaigns are required (flags, GEOPUSH_* or config file)")
    index, info = load_index(settings.fences, settings.fences_snapshot_path)
    took = ", ".join(f"{k} {v:.2f} s" for k, v in info.seconds.items())
    if info.source == "snapshot":
        log.info("fences: %d stores from the snapshot %s (%s)", len(index), info.snapshot, took)
    else:
        why = f"; {info.reason}" if info.reason else ""
        log.info("fences: %d stores loaded from %s (%s%s)", len(index), settings.fences, took, why)
    loaded: dict[str, Any] = {}
    from engine.api.live import overlay_state

    # The file is the baseline; stores changed through the HTTP API are kept in the state (the
    # SQLite file, or a group's Redis). API_SEQ: the last change laid over (a reload catches up
    # with later ones, Service._reload; a group's worker follows the later ones,
    # Service._follow_api_changes, engine/daemon/service.py).
    loaded[API_SEQ] = overlay_state(index, settings.state)
    LOADED_SEQ[index] = loaded[API_SEQ]
    campaigns = load_campaigns(settings.campaigns)
    if settings.redis_url is None:
        from engine.api.campaigns import overlay_campaigns_state

        # Likewise the campaign file is the baseline; the API's campaign changes are laid over.
        campaigns, loaded[API_CAMPAIGN_SEQ] = overlay_campaigns_state(campaigns, settings.state)
        LOADED_SEQS[index] = (loaded[API_SEQ], loaded[API_CAMPAIGN_SEQ])
    found = catalog_warnings(campaigns, index.catalog)
    for w in found:
        log.warning("%s", w)
    if warnings is not None:
        warnings.extend(found)
    loaded["index"] = index
    loaded["campaigns"] = campaigns
    return loaded


API_SEQ = "api_seq"
API_CAMPAIGN_SEQ = "api_campaign_seq"


def campaign_target(core: Any) -> Any:
    """Where the HTTP API's campaign changes go: the core's live ``CampaignSet``, swapped by
    ``core.reload(campaigns=...)`` (None for a core without campaigns)."""
    from engine.api.campaigns import CampaignTarget

    if not hasattr(core, "campaigns") or not hasattr(core, "reload"):
        return None
    return CampaignTarget(
        get=lambda: core.campaigns,
        swap=lambda cs: core.reload(campaigns=cs),
        config=lambda: getattr(core, "config", None),
        profiles=lambda: getattr(core, "profiles", None),
        counter_changed=lambda cid: getattr(core.store, "forget_inventory", _noop)(cid),
    )


def _noop(*_a: Any) -> None:
    return None


# fence index -> the last API store change laid over it at load (where a group's worker starts
# following the changes of the other workers' APIs)
LOADED_SEQ: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
# fence index -> (store, campaign) API changes laid over the files at load (SQLite state): where
# the engine starts following the API process's changes (engine/api/follow.py)
LOADED_SEQS: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def warm_up(index: Any, campaigns: Any) -> None:
    """Run a throwaway core over a few fixes before connecting: numba compiles (or loads) the
    match kernels on first use, 1-2 s during which the first real events would wait."""
    from engine.core import Core
    from engine.events import Gps
    from engine.state import MemoryStore

    # The loaded catalog and campaigns are long-lived and acyclic (the daemon freezes what is
    # alive after every batch, service.py): out of the collector's generations before numba's
    # first use creates thousands of classes, whose collections would otherwise traverse the
    # catalog's 500,000-slot lists again and again (0.25 -> 0.18 s of warm-up at 500k stores).
    gc.freeze()
    stores = index.catalog.stores
    if not stores:
        return
    st = stores[0]
    if st.center is not None:
        lon, lat = st.center
    else:
        pt = st.polygon.representative_point()
        lon, lat = pt.x, pt.y
    core = Core(index, campaigns, MemoryStore())
    fixes = [Gps(user="~warmup", ts=1.0 + i, lon=lon, lat=lat, acc=10.0) for i in range(3)]
    for batch in (fixes[:1], fixes[1:]):  # one-fix and many-fix paths
        core.process(batch)
    core.flush(1e9)


__all__ = [
    "API_CAMPAIGN_SEQ",
    "API_SEQ",
    "LOADED_SEQ",
    "LOADED_SEQS",
    "campaign_target",
    "load_fences_and_campaigns",
    "warm_up",
]
