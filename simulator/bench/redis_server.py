"""Start a throw-away ``redis-server`` on a free local port (tests and ``geopush bench e2e``).

The server runs with the persistence a geopush deployment needs (docs/operations.md, "Scaling
out"): ``appendonly yes`` and ``appendfsync always``, so a commit the engine saw acknowledged is
in the AOF file on disk, and a restart (``stop`` then ``start``, or ``kill`` then ``start``)
loads it back.

    with RedisServer() as srv:
        print(srv.url)      # redis://127.0.0.1:PORT/0
        srv.restart()       # same port, same data directory
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from engine.errors import StateError
from simulator.embedded_broker import free_port, wait_listening


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server subprocess with its own data directory (deleted on ``close``)."""

    def __init__(self, port: int | None = None, *, fsync: str = "always") -> None:
        exe = find_redis_server()
        if exe is None:
            raise StateError("redis-server not found on PATH (apt-get install redis-server)")
        self.exe = exe
        self.port = port or free_port()
        self.fsync = fsync
        self._tmp = tempfile.TemporaryDirectory(prefix="geopush-redis-")
        self.dir = Path(self._tmp.name)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running():
            return
        args = [
            self.exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_listening("127.0.0.1", self.port, timeout=15.0, alive=self.running):
            tail = self.log_tail()
            self.stop()
            raise StateError(f"redis-server did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: Redis flushes the AOF and exits)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """``kill -9``: only what was fsynced survives (everything acknowledged, with ``always``)."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.kill()
        self._tmp.cleanup()

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave a server process behind
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
