"""Start a throw-away MQTT broker on a free local port: mosquitto when installed, else amqtt.

One launcher for the demo and for tests (the daemon's tests use it too), so a fresh machine
without mosquitto still gets a working broker:

* ``mosquitto`` (preferred): a subprocess with a temporary config (loopback listener on a free
  port, anonymous access, a large per-client queue so a slow subscriber does not lose QoS 1
  messages, optional persistence and extra config lines such as ACLs).
* ``amqtt`` 0.12 (fallback): an in-process broker on its own event loop in a daemon thread, so it
  works from sync and async callers alike. MQTT 3.1.1 only, 5-10k msg/s: fine for a low-rate demo
  and functional tests, not for throughput tests or shared subscriptions.

    with start_broker() as broker:
        print(broker.url)          # mqtt://127.0.0.1:PORT
        broker.restart()           # same port (mosquitto keeps sessions when persistence=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from engine.errors import TransportError

Kind = Literal["auto", "mosquitto", "amqtt"]

_MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (PATH first, then the sbin dirs distros put it in)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in _MOSQUITTO_DIRS:
        p = Path(d) / "mosquitto"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def wait_listening(
    host: str, port: int, timeout: float = 10.0, alive: Callable[[], bool] = lambda: True
) -> bool:
    """True once something accepts TCP connections on host:port; False after ``timeout`` or as
    soon as ``alive()`` says the process that should listen has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.02)
    return False


class EmbeddedBroker:
    """Common surface of both brokers: ``url``, ``start()``, ``stop()``, ``restart()``, context."""

    kind: str = ""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MosquittoBroker(EmbeddedBroker):
    """mosquitto as a child process with a generated config in a temporary directory."""

    kind = "mosquitto"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        binary: str | None = None,
        persistence: bool = False,
        extra_config: str = "",
        max_queued_messages: int = 1_000_000,
    ) -> None:
        super().__init__(host, port)
        binary = binary or find_mosquitto()
        if binary is None:
            raise TransportError(
                "mosquitto not found on PATH (install it, or use the amqtt broker)"
            )
        self.binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="geopush-mosquitto-"))
        self.config_path = self._dir / "mosquitto.conf"
        self.log_path = self._dir / "mosquitto.log"
        lines = [
            f"listener {self.port} {host}",
            "allow_anonymous true",
            # mosquitto's default of 1000 queued messages per client acks then DROPS QoS 1
            # messages for a slow subscriber; a demo/test broker must not lose anything.
            f"max_queued_messages {max_queued_messages}",
            # A client that acks late (the engine acks after its commit) gets at most this many
            # unacked messages: its intake buffer, as in deploy/mosquitto.conf.
            "max_inflight_messages 2000",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self._dir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        self.config_path.write_text("\n".join(lines) + "\n" + extra_config.strip() + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not wait_listening(self.host, self.port, alive=lambda: self.running):
            err = self._stop_proc(kill=True)
            raise TransportError(f"mosquitto did not start on {self.url}: {err or self.log_tail()}")

    def stop(self) -> None:
        self._stop_proc(kill=False)

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        self._stop_proc(kill=True)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its connections but answers nothing (no PUBACK) until
        ``resume``; for tests of a broker that stalls."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def _stop_proc(self, kill: bool) -> str:
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            if not kill:
                proc.send_signal(signal.SIGCONT)  # a paused broker must see the SIGTERM
            (proc.kill if kill else proc.terminate)()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return (err or b"").decode(errors="replace").strip()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __del__(self) -> None:  # last resort: never leave a broker process behind
        with contextlib.suppress(Exception):
            self._stop_proc(kill=True)


class AmqttBroker(EmbeddedBroker):
    """amqtt's broker on a private event loop in a daemon thread (works beside any caller loop)."""

    kind = "amqtt"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        super().__init__(host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def running(self) -> bool:
        return self._broker is not None

    def start(self) -> None:
        if self.running:
            return
        # amqtt logs every connection at INFO and tracebacks on client resets; keep the demo quiet.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="amqtt-broker", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            fut = asyncio.run_coroutine_threadsafe(self._start_broker(), loop)
            self._broker = fut.result(timeout=15)
        except Exception as exc:
            self._close_loop()
            raise TransportError(f"amqtt broker did not start on {self.url}: {exc}") from exc

    async def _start_broker(self) -> Any:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only anonymous auth: the default plugin set also logs every packet and runs $SYS.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        broker = Broker(config)
        await broker.start()
        return broker

    def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None and self._loop is not None:
            fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=10)
        self._close_loop()

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()


def start_broker(
    kind: Kind = "auto",
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    **mosquitto_options: Any,
) -> EmbeddedBroker:
    """Start and return a broker on a free port. ``auto``: mosquitto when found, else amqtt.

    ``mosquitto_options`` (persistence, extra_config, max_queued_messages) apply to mosquitto only.
    """
    if kind == "mosquitto" or (kind == "auto" and find_mosquitto() is not None):
        broker: EmbeddedBroker = MosquittoBroker(host, port, **mosquitto_options)
    elif kind in ("auto", "amqtt"):
        broker = AmqttBroker(host, port)
    else:
        raise TransportError(f"unknown broker kind {kind!r}: use auto, mosquitto or amqtt")
    broker.start()
    return broker
