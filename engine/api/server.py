"""uvicorn inside the daemon: ``ApiServer`` serves the API in the daemon's own event loop.

The daemon owns the process's signals (SIGTERM/SIGINT drain, SIGHUP reloads): ``_Server`` is a
``uvicorn.Server`` whose ``capture_signals`` does nothing, and the daemon stops it when it stops.
The socket is bound before serving, so a port in use is a clear ``ConfigError`` at start-up, and
a failed lifespan start-up (uvicorn calls ``sys.exit`` then) becomes one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
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

log = logging.getLogger("geopush.api")


class _Writer:
    """One thread that sends the API's responses: a send to a local client costs ~0.1-0.4 ms of
    kernel time (the receiver's side of loopback TCP runs in it), half of a request's cost,
    and the event loop does not have to wait for it (the GIL is released while it runs)."""

    _queue: queue.SimpleQueue[Callable[[], object]] | None = None
    _guard = threading.Lock()

    @classmethod
    def put(cls, job: Callable[[], object]) -> None:
        if cls._queue is None:
            with cls._guard:
                if cls._queue is None:
                    q: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
                    threading.Thread(target=cls._run, args=(q,), name="http-send", daemon=True).start()
                    cls._queue = q
        cls._queue.put(job)

    @staticmethod
    def _run(q: queue.SimpleQueue[Callable[[], object]]) -> None:
        while True:
            job = q.get()
            with contextlib.suppress(Exception):
                job()


class _Coalescing:
    """A transport whose writes within one turn of the event loop go out in one ``send`` (a
    response's head and body: one syscall and one packet, not two; TCP_NODELAY is on), sent by
    ``_Writer`` on a duplicate of the socket's descriptor (so the descriptor cannot be closed
    and reused under a send in progress). What the kernel does not take at once, and anything
    written while the transport holds unsent data, goes through the transport as usual, in
    order."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._buf: list[bytes] = []
        self._lock = threading.Lock()
        self._pending = False  # a send handed to the writer, not finished
        self._close_wanted = False
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        self._wsock: socket.socket | None = None
        if sock is not None:
            with contextlib.suppress(OSError):
                self._wsock = socket.socket(fileno=os.dup(sock.fileno()))

    def write(self, data: bytes) -> None:
        if not self._buf:
            self._loop.call_soon(self._flush)
        self._buf.append(bytes(data))

    def _flush(self) -> None:
        with self._lock:
            if self._pending or not self._buf:
                return  # (the writer's completion flushes what came meanwhile)
            data = b"".join(self._buf)
            self._buf.clear()
            t = self._transport
            direct = self._wsock is None or t.is_closing() or t.get_write_buffer_size() > 0
            self._pending = not direct
        wsock = self._wsock
        if not direct and wsock is not None:
            _Writer.put(lambda: self._send(wsock, data))
        elif not self._transport.is_closing():
            self._transport.write(data)

    def _send(self, wsock: socket.socket, data: bytes) -> None:  # in the writer's thread
        try:
            n = wsock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            n = len(data)  # a broken connection: the transport finds out by itself
        rest = data[n:]
        with self._lock:
            done = not (rest or self._buf or self._close_wanted)
            if done:
                self._pending = False
        if not done:
            with contextlib.suppress(RuntimeError):  # (the loop is closed)
                self._loop.call_soon_threadsafe(self._done, rest)

    def _done(self, rest: bytes) -> None:
        with self._lock:
            self._pending = False
        if rest and not self._transport.is_closing():
            self._transport.write(rest)
        if self._buf:
            self._flush()
        if self._close_wanted:
            self.close()

    def close(self) -> None:
        self._flush()
        with self._lock:
            if self._pending:
                self._close_wanted = True
                return
        self._transport.close()
        self.release()

    def release(self) -> None:
        """The duplicate descriptor closes after the sends queued before."""
        wsock, self._wsock = self._wsock, None
        if wsock is not None:
            _Writer.put(wsock.close)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) over ``_Coalescing``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Protocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            self._coalescing = _Coalescing(transport)
            super().connection_made(self._coalescing)

        def connection_lost(self, exc: Exception | None) -> None:
            self._coalescing.release()
            super().connection_lost(exc)

    return Protocol


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon handles SIGTERM/SIGINT and stops us (Service.request_stop)


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
    ) -> None:
        self.host, self.port = parse_http(address)
        self.visits = visits or VisitHub(f"{prefix}/visits/", lambda: 0)
        self.redemptions = RedemptionDesk(prefix)
        self.app = create_app(state, target, visits=self.visits, redemptions=self.redemptions)
        config = uvicorn.Config(
            FastStores(self.app, _HANDLERS),  # the hot store calls without FastAPI's overhead
            http=_protocol(),
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

    async def start(self) -> None:
        """Bind, serve in this loop, return once accepting connections."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so (with proto 0
        # every response waited ~40 ms for the client's delayed ACK: Nagle)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"--http {self.host}:{self.port}: cannot listen ({exc.strerror}); pick a free port"
            ) from exc
        sock.listen(128)
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


__all__ = ["ApiServer", "parse_http"]
