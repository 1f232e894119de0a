"""A background MQTT subscriber: connect, subscribe, and hand every received batch to a callback.

Shared by the e2e bench's status/push watcher and the daemon tests' collector, which differ only
in what they keep from each message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from engine.transport.mqtt import Inbound, MqttLink, parse_broker_url

# paho reads one packet per event-loop turn unless pumped (see MqttLink.pump): read up to this
# many buffered messages before each take.
PUMP_LIMIT = 10_000


class Subscriber:
    """Calls ``on_batch`` with each batch of received messages, oldest first, from a background
    task between ``start()`` and ``stop()`` (or inside ``async with``)."""

    def __init__(
        self,
        url: str,
        topics: list[str],
        on_batch: Callable[[list[Inbound]], None],
        *,
        client_id: str | None = None,
        take_limit: int = 10_000,
    ) -> None:
        self.link = MqttLink(parse_broker_url(url), client_id=client_id)
        self.topics = topics
        self.on_batch = on_batch
        self.take_limit = take_limit
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.link.connect()
        await self.link.subscribe(self.topics, qos=1)
        self._task = asyncio.create_task(self._pump())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.link.disconnect()

    async def __aenter__(self) -> Subscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _pump(self) -> None:
        link = self.link
        while True:
            await link.wait_inbound()
            link.pump(PUMP_LIMIT)
            self.on_batch(link.take(self.take_limit))
