"""The HTTP API in a process of its own, supervised by the daemon (``geopush run --http``).

Served inside the daemon's event loop, the API cost the event path 9-13% of its throughput under
100 requests/s (its Python ran between the micro-batches). Now the daemon (``ApiProcess``):

* binds the listening socket itself (a port in use stays a clear ``ConfigError`` at start-up;
  port 0 works and ``port`` tells the one bound) and starts ``python -m engine.api.process``
  with the socket and one end of a socketpair, the **control channel**, as inherited fds;
* sends it its settings over the channel, waits for ``ready`` (the API answers once the daemon
  says it is online) and reports a start-up failure with the child's reason;
* restarts a child that died (kill -9, a crash) with a backoff (0.5 s doubling to 30 s), logged
  and counted (``geopush_api_process_restarts``, ``geopush_api_process_up``); the socket stays
  bound meanwhile, so connections wait in its backlog instead of being refused;
* tells it to reload on SIGHUP (the daemon's own reload), and stops it when it stops: SIGTERM
  (uvicorn finishes the requests in progress, up to 5 s; SSE streams end), SIGKILL after 10 s
  or at the daemon's second stop request. The child runs in its own session (a Ctrl-C in a
  terminal reaches the daemon only) and exits when the control channel closes: it never
  outlives the daemon, even one killed with -9.

The child (``child_main``) loads the catalog and campaigns as the daemon does
(``load_fences_and_campaigns``: the compiled snapshot when current, the state's API changes laid
over) into its **own** fence index and campaign set, and serves ``create_app`` over them with
uvicorn on the inherited socket. A change (store PUT/DELETE/import, campaign PUT/DELETE/pause)
is validated there and persisted in the state exactly as before (``api_stores`` / ``api_seq``,
``api_campaigns``); the engine applies it between two micro-batches (engine/api/follow.py,
every ``--api-follow-ms`` at most). In a worker group (Redis state) the child follows the other
workers' changes from Redis (``ChangeFollower``), as each worker's engine does.

**Visits** (SSE): the child reads the committed visit rows from the state file's outbox on a
connection of its own (``OutboxFollower``, every 50 ms while a stream is open); the visit and
outcome logs copy the outbox there as before. The engine does nothing for them.

**Redemptions** go over the control channel, not a table: the child has no MQTT connection of
its own (and deploy/mosquitto.conf ties client ids to logins), and the channel keeps the API's
answers as they were. The child sends ``{"redeem": n, "topic", "payload"}``; the daemon
publishes it at QoS 1 on its own connection and answers ``published`` after the PUBACK (or
``failed``: the API answers 503, nothing was redeemed). It notes the redemption's (user,
request_id) and, while any is outstanding, looks for its committed answer among each batch's
outbox rows (one prefix test per row; nothing at all when none is outstanding) and sends it to
the child (``answer``). Exactly once holds as before: nothing is redeemed before the engine
commits the answer, and a retry with the same ``request_id`` (after a 503/504, a child or daemon
killed mid-request: the client sees a broken connection) gets ``ok`` again for the redemption
made, never a second one. A table the daemon relays would have survived a daemon crash, but the
child dies with the daemon anyway (its requests fail), so it would add a write per redemption
and a poll for nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from engine.errors import ConfigError

log = logging.getLogger("geopush.api")

BACKOFF_S = (0.5, 30.0)  # a dead child's restart delay: first, most
STOP_WAIT_S = 10.0  # SIGTERM, then this long for the child to finish, then SIGKILL

Publish = Callable[[str, bytes], Awaitable[Any]]


class _Row(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


def _line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


# --- the daemon's side -----------------------------------------------------------------------------


class ApiProcess:
    """Starts, watches, restarts and stops the API's process (see the module)."""

    def __init__(self, settings: Any, metrics: Any = None) -> None:
        from engine.daemon.config import parse_http

        assert settings.http is not None
        self.settings = settings
        self.metrics = metrics
        self.host, self.port = parse_http(settings.http)
        self.publish: Publish | None = None  # the daemon's MQTT link (QoS 1), once it exists
        self.answers = f"{settings.prefix}/redemptions/"
        self.pid: int | None = None
        self.restarts = 0
        self.up = False
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._waiting: dict[tuple[str, str], float] = {}  # (user, request_id) -> give up at
        self._sends: set[asyncio.Future[Any]] = set()

    # --- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, start the child, return once it serves (ConfigError: it could not start)."""
        from engine.api.server import bind_listener

        self._sock = bind_listener(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        try:
            await self._spawn()
        except BaseException:
            self._sock.close()
            self._sock = None
            raise
        self._task = asyncio.create_task(self._supervise(), name="api-process")
        log.info(
            "HTTP API on http://%s:%d/v1 (docs at /docs), process %s",
            self.host,
            self.port,
            self.pid,
        )

    async def _spawn(self) -> None:
        assert self._sock is not None
        mine, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.api.process",
                "--listen-fd", str(self._sock.fileno()), "--control-fd", str(theirs.fileno()),
                pass_fds=(self._sock.fileno(), theirs.fileno()),
                start_new_session=True,  # a terminal's Ctrl-C reaches the daemon, which stops it
            )  # fmt: skip
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=mine, limit=1 << 24)
        s = self.settings
        writer.write(_line({"settings": s.model_dump(mode="json")}))
        error = ""
        while True:
            raw = await reader.readline()
            if not raw:
                writer.close()
                rc = await proc.wait()
                raise ConfigError(
                    f"the HTTP API failed to start: {error or f'its process exited with {rc}'}"
                )
            msg = json.loads(raw)
            if "error" in msg:
                error = str(msg["error"])
            elif msg.get("ready"):
                break
        self._proc, self._reader, self._writer = proc, reader, writer
        self.pid = proc.pid
        self._set_up(True)

    def _set_up(self, up: bool) -> None:
        self.up = up
        if self.metrics is not None:
            self.metrics.api_up.set(1 if up else 0)

    async def _supervise(self) -> None:
        """Read the child's messages; when it dies (not stopping), start another."""
        delay = BACKOFF_S[0]
        while True:
            reader, proc = self._reader, self._proc
            assert reader is not None and proc is not None
            started = time.monotonic()
            with contextlib.suppress(ConnectionError, ValueError):
                while True:
                    raw = await reader.readline()
                    if not raw:
                        break
                    self._on_message(json.loads(raw))
            rc = await proc.wait()
            self._set_up(False)
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._stopping:
                return
            if time.monotonic() - started > 60.0:
                delay = BACKOFF_S[0]  # it ran a while: a new failure, not a crash loop
            self.restarts += 1
            if self.metrics is not None:
                self.metrics.api_restarts.inc()
            log.error(
                "the HTTP API's process %s died (exit %s); restarting it in %.1f s",
                proc.pid, rc, delay,
            )  # fmt: skip
            while not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                if self._stopping:
                    return
                try:
                    await self._spawn()
                except Exception as exc:  # noqa: BLE001  (logged; retried with the backoff)
                    log.error("restarting the HTTP API's process failed: %s", exc)
                    continue
                log.info("the HTTP API's process is back (process %s)", self.pid)
                break

    def reload(self) -> None:
        """The daemon reloads its files (SIGHUP): so does the API's process."""
        self._send({"reload": True})

    def stop_now(self) -> None:
        """The daemon's second stop request: kill the child."""
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def stop(self) -> None:
        """SIGTERM the child (it finishes its requests, up to 5 s), SIGKILL it after
        ``STOP_WAIT_S``; close the socket."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
            except TimeoutError:
                log.warning("the HTTP API's process did not stop in %.0f s: killed", STOP_WAIT_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._set_up(False)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- the channel ---------------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        w = self._writer
        if w is not None and not w.is_closing():
            w.write(_line(msg))

    def _on_message(self, msg: dict[str, Any]) -> None:
        if "redeem" in msg:
            self._redeem(int(msg["redeem"]), str(msg["topic"]), str(msg["payload"]).encode())

    def _redeem(self, n: int, topic: str, payload: bytes) -> None:
        """Publish a redeem event for the child at QoS 1; tell it once the broker took it."""
        if self.publish is None:
            self._send({"failed": n, "error": "the engine is not connected to its broker yet"})
            return
        try:
            data = json.loads(payload)
            key = (str(data["user"]), str(data["request_id"]))
        except (ValueError, KeyError, TypeError):
            self._send({"failed": n, "error": "not a redeem event"})
            return
        now = time.monotonic()
        if len(self._waiting) > 10_000:  # answers never committed here: forget the old ones
            self._waiting = {k: t for k, t in self._waiting.items() if t > now}
        self._waiting[key] = now + 60.0
        try:
            fut = asyncio.ensure_future(self.publish(topic, payload))
        except Exception as exc:  # noqa: BLE001  (reported to the child: a 503)
            self._send({"failed": n, "error": f"{type(exc).__name__}: {exc}"})
            return
        self._sends.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self._sends.discard(f)
            exc = None if f.cancelled() else f.exception()
            if f.cancelled() or exc is not None:
                self._send(
                    {"failed": n, "error": f"{type(exc).__name__}: {exc}" if exc else "cancelled"}
                )
            else:
                self._send({"published": n})

        fut.add_done_callback(done)

    def committed(self, rows: Sequence[_Row]) -> None:
        """A batch's outbox rows, just committed (the outbox's ``on_commit``): the answers to
        the redemptions the child waits for go to it. Nothing to do when none is outstanding."""
        if not self._waiting:
            return
        n = len(self.answers)
        for r in rows:
            if r.topic[:n] != self.answers:
                continue
            data = json.loads(r.payload)
            if self._waiting.pop((data.get("user"), data.get("request_id")), None) is not None:
                self._send({"answer": data})

    def status(self) -> dict[str, Any]:
        return {"pid": self.pid, "up": self.up, "restarts": self.restarts, "port": self.port}


# --- the child -------------------------------------------------------------------------------------


class _Relay:
    """The child's way to the broker: redeem events to the daemon over the control channel."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._n = 0
        self._pending: dict[int, asyncio.Future[None]] = {}

    async def publish(self, topic: str, payload: bytes) -> None:
        self._n += 1
        n = self._n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[n] = fut
        try:
            self.writer.write(_line({"redeem": n, "topic": topic, "payload": payload.decode()}))
            await fut
        finally:
            self._pending.pop(n, None)

    def settle(self, msg: dict[str, Any]) -> None:
        if "published" in msg:
            fut = self._pending.get(int(msg["published"]))
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif "failed" in msg:
            fut = self._pending.get(int(msg["failed"]))
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError(str(msg.get("error"))))


class _View:
    """The child's own catalog and campaigns (a reload swaps them)."""

    def __init__(self, settings: Any, loaded: dict[str, Any]) -> None:
        self.settings = settings
        self.index = loaded["index"]
        self.campaigns = loaded["campaigns"]
        self.store_seq: int = loaded.get("api_seq", 0)
        self.campaign_seq: int | None = loaded.get("api_campaign_seq")
        self.profiles: Any = None
        if settings.profiles is not None:
            from engine.profiles import load_profiles

            self.profiles = load_profiles(settings.profiles)
        from engine.core import CoreConfig

        self.config = CoreConfig(
            max_skew_s=settings.max_skew,
            watermark_quorum=settings.watermark_quorum,
            attribution_window_s=settings.attribution_window_s,
        )

    def target(self) -> Any:
        from engine.api.campaigns import CampaignTarget
        from engine.api.live import FenceTarget

        def swap(cs: Any) -> None:
            self.campaigns = cs

        return FenceTarget(
            lambda: self.index,
            campaigns=CampaignTarget(
                get=lambda: self.campaigns, swap=swap,
                config=lambda: self.config, profiles=lambda: self.profiles,
            ),
        )  # fmt: skip

    async def reload(self) -> None:
        from engine.daemon.loading import load_fences_and_campaigns

        try:
            fresh = await asyncio.to_thread(load_fences_and_campaigns, self.settings)
        except Exception as exc:  # noqa: BLE001  (the engine logs the same failure)
            log.error("the API's reload failed, keeping the previous catalog: %s", exc)
            return
        from engine.api.campaigns import overlay_campaigns_state
        from engine.api.live import overlay_state

        # changes this API made while the files loaded, onto the fresh copies (as the engine)
        overlay_state(fresh["index"], self.settings.state, after=fresh.get("api_seq", 0))
        cseq = fresh.get("api_campaign_seq")
        if cseq is not None:
            fresh["campaigns"], _ = overlay_campaigns_state(
                fresh["campaigns"], self.settings.state, after=cseq
            )
        self.index, self.campaigns = fresh["index"], fresh["campaigns"]
        log.info("the API reloaded its catalog and campaigns")


async def _child(listen_fd: int, control_fd: int) -> int:
    from engine.api.redis_state import is_redis_url
    from engine.api.server import ApiServer
    from engine.api.visits import OutboxFollower
    from engine.daemon.config import Settings
    from engine.daemon.logs import setup_logging

    ctl = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=ctl, limit=1 << 24)
    first = await reader.readline()
    if not first:
        return 1
    settings = Settings.model_validate(json.loads(first)["settings"])
    setup_logging(settings.log_format, settings.log_level)
    listener = socket.socket(fileno=listen_fd)
    followers: list[asyncio.Task[None]] = []
    stoppers: list[Callable[[], None]] = []
    try:
        from engine.daemon.loading import load_fences_and_campaigns

        loaded = await asyncio.to_thread(load_fences_and_campaigns, settings)
        view = _View(settings, loaded)
        target = view.target()
        server = ApiServer(settings.http or "127.0.0.1:0", settings.state, target,
                           prefix=settings.prefix,
                           attribution_window_s=settings.attribution_window_s)  # fmt: skip
        relay = _Relay(writer)
        server.redemptions.publish = relay.publish
        await server.start(listener)
    except Exception as exc:  # noqa: BLE001  (the daemon reports it and stops)
        writer.write(_line({"error": str(exc) or type(exc).__name__}))
        await writer.drain()
        raise
    if is_redis_url(settings.state):
        from engine.api.redis_state import ChangeFollower
        from engine.daemon.loading import LOADED_SEQ

        follower = ChangeFollower(settings.state, target, LOADED_SEQ.get(view.index, 0))
        stoppers.append(follower.stop)
        followers.append(asyncio.create_task(follower.run(), name="api-changes"))
    else:
        outbox = OutboxFollower(settings.state, server.visits)
        followers.append(asyncio.create_task(outbox.run(), name="outbox-follower"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the daemon says when to reload

    async def control() -> None:
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                msg = json.loads(raw)
                if "answer" in msg:
                    server.redemptions.answered(msg["answer"])
                elif msg.get("reload"):
                    await view.reload()
                else:
                    relay.settle(msg)
        except (OSError, ValueError) as exc:  # a daemon killed with -9: a reset connection
            log.debug("control channel: %r", exc)
        finally:  # the daemon is gone (or broke the channel): never outlive it
            if not stop.is_set():
                log.warning("the daemon is gone: the API's process stops")
            stop.set()

    ctl_task = asyncio.create_task(control(), name="control")
    writer.write(_line({"ready": True, "pid": os.getpid()}))
    await writer.drain()
    await stop.wait()
    await server.stop()
    for stop_follower in stoppers:
        stop_follower()
    for t in (*followers, ctl_task):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    writer.close()
    return 0


def child_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.api.process",
                                description="the HTTP API's process, started by `geopush run --http`")  # fmt: skip
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    args = p.parse_args(argv)
    try:
        return asyncio.run(_child(args.listen_fd, args.control_fd))
    except Exception:  # noqa: BLE001  (told to the daemon already when at start-up)
        logging.getLogger("geopush.api").exception("the HTTP API's process failed")
        return 1


__all__ = ["ApiProcess", "child_main"]

if __name__ == "__main__":
    sys.exit(child_main())
