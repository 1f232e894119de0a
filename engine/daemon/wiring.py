"""The daemon's companions, wired to its core and state (``Service.run``): the HTTP API's
process (--http, engine/api/process.py) and the followers of the changes made through it, and
the webhook dispatcher (engine/daemon/webhooks.py). Imported lazily: the web stack and redis-py
are not loaded when these are not used.
"""

from __future__ import annotations

from typing import Any

from engine.daemon.config import Settings
from engine.daemon.loading import LOADED_SEQ, LOADED_SEQS, campaign_target
from engine.daemon.metrics import Metrics
from engine.errors import StateError
from engine.stores.redis_store import RedisStore
from engine.stores.sqlite_store import SQLiteStore


def live_index(core: Any) -> Any:
    """The core's live fence index (one the API can change), or None (a stand-in core)."""
    index = getattr(core, "index", None)
    return index if index is not None and hasattr(index, "add") else None


def fence_target(core: Any) -> Any:
    """engine.api.live.FenceTarget over the core's live fence index."""
    from engine.api.live import FenceTarget

    def index() -> Any:
        idx = getattr(core, "index", None)
        if idx is None or not hasattr(idx, "add"):
            raise StateError("this engine has no live fence index to change")
        return idx

    def removed(ids: list[str]) -> None:
        hook = getattr(core, "stores_removed", None)
        if hook is not None:
            hook(ids)

    return FenceTarget(index, removed)


def state_follower(settings: Settings, core: Any) -> Any:
    """With --http and a SQLite state: an engine.api.follow.StateFollower applying the changes
    the API's process makes (stores, campaigns) to the live core, from the last ones laid over
    the files at load; it has checked what changed since. None with Redis state or without a
    live fence index."""
    index = live_index(core)
    if settings.redis_url is not None or index is None:
        return None
    from engine.api.follow import StateFollower

    target = fence_target(core)
    target.campaigns = campaign_target(core)
    seqs = LOADED_SEQS.get(index, (0, 0))
    follow = StateFollower(
        settings.state, target, store_seq=seqs[0], campaign_seq=seqs[1],
        every=settings.api_follow_ms / 1000.0,
    )  # fmt: skip
    follow.check()  # what changed since the files were loaded
    return follow


def change_follower(url: str, core: Any) -> Any:
    """A group's worker: an engine.api.redis_state.ChangeFollower applying the store changes
    made through any worker's API (kept in Redis) to this worker's live fence index, from the
    last one laid over it at load; None without a live fence index (a stand-in core)."""
    index = live_index(core)
    if index is None:
        return None
    from engine.api.redis_state import ChangeFollower

    return ChangeFollower(url, fence_target(core), LOADED_SEQ.get(index, 0))


def webhook_dispatcher(settings: Settings, store: Any, metrics: Metrics) -> Any:
    """An engine.daemon.webhooks.WebhookDispatcher over the SQLite state file, or in a group
    over Redis (this worker's own outputs, engine/daemon/webhooks_redis.py); None for another
    store. Not started."""
    from engine.daemon.webhooks import WebhookDispatcher

    queue: Any  # the SQLite state file, or a WebhookQueue
    if isinstance(store, SQLiteStore):
        queue = settings.state
    elif isinstance(store, RedisStore) and settings.redis_url is not None:
        from engine.daemon.webhooks_redis import RedisWebhookStore

        queue = RedisWebhookStore(
            settings.redis_url, worker=store.worker, outbox=store, prefix=store.prefix
        )
    else:
        return None
    return WebhookDispatcher(queue, metrics)


__all__ = [
    "change_follower",
    "fence_target",
    "live_index",
    "state_follower",
    "webhook_dispatcher",
]
