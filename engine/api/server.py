"""uvicorn in an event loop: ``ApiServer`` serves the API over a fence target in this process.

The daemon runs it in the API's own process (engine/api/process.py), over that process's copy
of the catalog; tests run it beside a stand-in engine. The process's owner handles the signals:
``_Server`` is a ``uvicorn.Server`` whose ``capture_signals`` does nothing, and ``stop`` stops
it. The socket is bound before serving (``bind_listener``: a port in use is a clear
``ConfigError`` at start-up; the daemon binds it and hands it to the API's process), and a failed
lifespan start-up (uvicorn calls ``sys.exit`` then) becomes a ``ConfigError`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from engine.api.app import _HANDLERS, create_app
from engine.api.fast import FastStores
from engine.api.live import FenceTarget
from engine.api.redemptions import RedemptionDesk
from engine.api.visits import VisitHub
from engine.daemon.config import parse_http
from engine.errors import ConfigError
from engine.loop import ATTRIBUTION_WINDOW_S

log = logging.getLogger("geopush.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon handles SIGTERM/SIGINT and stops us (Service.request_stop)


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ConfigError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so (with proto 0
    # every response waited ~40 ms for the client's delayed ACK: Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--http {host}:{port}: cannot listen ({exc.strerror}); pick a free port"
        ) from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ApiServer:
    """The HTTP API on ``HOST:PORT`` over ``state`` and the fence index of ``target``."""

    def __init__(
        self,
        address: str,
        state: str | Path,
        target: FenceTarget,
        *,
        visits: VisitHub | None = None,
        prefix: str = "geopush",
        attribution_window_s: float = ATTRIBUTION_WINDOW_S,
    ) -> None:
        self.host, self.port = parse_http(address)
        self.visits = visits or VisitHub(f"{prefix}/visits/", lambda: 0)
        self.redemptions = RedemptionDesk(prefix)
        self.app = create_app(
            state,
            target,
            visits=self.visits,
            redemptions=self.redemptions,
            attribution_window_s=attribution_window_s,
        )
        config = uvicorn.Config(
            FastStores(self.app, _HANDLERS),  # the hot store calls without FastAPI's overhead
            http="auto",  # httptools (declared) when installed, else h11
            lifespan="on",
            log_config=None,  # the daemon's logging setup applies
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    def committed(self, rows: Any) -> None:
        """A batch's outbox rows, just committed: to the SSE streams and waiting redemptions."""
        self.visits.committed(rows)
        self.redemptions.committed(rows)

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind (or serve ``sock``, bound already), serve in this loop, return once accepting
        connections."""
        if sock is None:
            sock = bind_listener(self.host, self.port)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._serve(sock), name="http-api")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises the start-up failure
                raise ConfigError("the HTTP API stopped during start-up (see the log)")
            await asyncio.sleep(0.01)
        log.info("HTTP API on http://%s:%d/v1 (docs at /docs)", self.host, self.port)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self.server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits the process when the lifespan fails
            cause = getattr(self.app.state, "startup_error", None)
            raise ConfigError(
                f"the HTTP API failed to start: {cause or 'see the log'}"
            ) from (cause or exc)

    def stop_now(self) -> None:
        """The daemon's second stop request: the next ``stop`` does not wait for requests."""
        self.server.should_exit = True
        self.server.force_exit = True
        self.visits.close()

    async def stop(self) -> None:
        """Finish the requests in progress (up to 5 s), then close."""
        task = self._task
        if task is None:
            return
        self.server.should_exit = True
        self.visits.close()  # the SSE streams end (clients resume with Last-Event-ID)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


__all__ = ["ApiServer", "bind_listener", "parse_http"]
