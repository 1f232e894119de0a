"""Worker processes for the scale-out and cluster tests (tests/scaleout, tests/cluster): one
``WorkerProcs`` base holds them by name and kills, freezes and stops them; each test's class
adds how its workers start (``start``) and, where they log to a file, ``log``."""

from __future__ import annotations

import signal
import subprocess


class WorkerProcs:
    """Worker processes by name. ``stop_all`` sends SIGTERM to every live one and asserts that
    each stopped within ``stop_wait_s`` and exited 0 (or -9: killed by the test)."""

    stop_wait_s = 20.0

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> str:
        """The tail of the worker's output (here its stderr pipe; read once it has exited)."""
        p = self.procs[name]
        return p.stderr.read().decode(errors="replace")[-3000:] if p.stderr else ""

    def freeze(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                rc = p.wait(self.stop_wait_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError(
                    f"worker {name} did not stop on SIGTERM:\n{self.log(name)}"
                ) from None
            assert rc in (0, -9), f"worker {name} exited {rc}:\n{self.log(name)}"
