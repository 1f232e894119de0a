"""Start a throw-away Redis Cluster (3 masters + 3 replicas by default) on free local ports.

Each node is a ``redis-server --cluster-enabled yes`` with its own data directory, AOF on
(``appendfsync always``), node timeout 2 s (a dead master's replica is promoted in ~3-4 s); the
cluster is formed with ``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``.

    with RedisClusterServer() as cl:
        cl.url                      # redis://127.0.0.1:PORT (any node; the client finds the rest)
        port = cl.master_of_slot(1234)
        cl.kill(port)               # kill -9 a master ...
        cl.wait_failover(port)      # ... until its replica serves its slots (cluster_state ok)
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from engine.errors import StateError
from simulator.embedded_broker import wait_listening


def find_redis_cli() -> str | None:
    return shutil.which("redis-cli")


def _free_cluster_port() -> int:
    """A port free together with its cluster bus port (port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise StateError("no free port pair (port, port + 10000) for a Redis Cluster node")


class RedisClusterServer:
    """``masters`` masters with ``replicas`` replica each, as subprocesses (killed on close)."""

    def __init__(self, masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000) -> None:
        exe, cli = shutil.which("redis-server"), find_redis_cli()
        if exe is None or cli is None:
            raise StateError("redis-server and redis-cli must be on PATH (apt-get install redis)")
        self.exe, self.cli = exe, cli
        self.masters, self.replicas, self.node_timeout_ms = masters, replicas, node_timeout_ms
        self._tmp = tempfile.TemporaryDirectory(prefix="geopush-cluster-")
        self.dir = Path(self._tmp.name)
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        alive = [p for p in self.ports if self.alive(p)]
        return f"redis://127.0.0.1:{alive[0]}"

    def alive(self, port: int) -> bool:
        p = self.procs.get(port)
        return p is not None and p.poll() is None

    def start(self) -> None:
        n = self.masters * (1 + self.replicas)
        self.ports = [_free_cluster_port() for _ in range(n)]
        for port in self.ports:
            self.start_node(port)
        args = [self.cli, "--cluster", "create"]
        args += [f"127.0.0.1:{p}" for p in self.ports]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        res = subprocess.run(args, capture_output=True, timeout=60, check=False)
        if res.returncode != 0:
            self.close()
            raise StateError(f"redis-cli --cluster create failed:\n{res.stdout.decode()[-2000:]}")
        self.wait_ok()
        self.wait_synced()

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Until every live replica's link to its master is up (a replica that never synced
        cannot be promoted: a failover test must wait for this first)."""
        deadline = time.monotonic() + timeout
        while True:
            late = [
                p for p in self.ports if self.alive(p)
                and "role:slave" in (rep := self.cmd(p, "INFO", "replication"))
                and "master_link_status:up" not in rep
            ]  # fmt: skip
            if not late:
                return
            if time.monotonic() > deadline:
                raise StateError(f"replicas {late} not in sync after {timeout:.0f} s")
            time.sleep(0.1)

    def start_node(self, port: int) -> None:
        d = self.dir / str(port)
        d.mkdir(exist_ok=True)
        args = [
            self.exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--repl-diskless-sync-delay", "0",
            "--daemonize", "no", "--logfile", str(d / "redis.log"),
        ]  # fmt: skip
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_listening("127.0.0.1", port, timeout=15.0, alive=lambda: self.alive(port)):
            raise StateError(f"cluster node did not start on port {port}")

    def cmd(self, port: int, *args: str) -> str:
        res = subprocess.run(
            [self.cli, "-p", str(port), *args], capture_output=True, timeout=10, check=False
        )
        return res.stdout.decode()

    def info(self, port: int) -> dict[str, str]:
        out = {}
        for line in self.cmd(port, "CLUSTER", "INFO").splitlines():
            if ":" in line:
                k, v = line.strip().split(":", 1)
                out[k] = v
        return out

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES as seen by a live node: port, role (master/slave), flags, slots."""
        port = next(p for p in self.ports if self.alive(p))
        rows = []
        for line in self.cmd(port, "CLUSTER", "NODES").splitlines():
            f = line.split()
            if len(f) < 8:
                continue
            rows.append({
                "id": f[0], "port": f[1].split("@")[0].rsplit(":", 1)[1], "flags": f[2],
                "role": "master" if "master" in f[2] else "slave",
                "slots": " ".join(f[8:]),
            })  # fmt: skip
        return rows

    def master_of_slot(self, slot: int) -> int:
        for n in self.nodes():
            if n["role"] != "master" or "fail" in n["flags"]:
                continue
            for rng in n["slots"].split():
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(n["port"])
        raise StateError(f"no live master serves slot {slot}")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports cluster_state:ok and all 16384 slots served."""
        deadline = time.monotonic() + timeout
        while True:
            live = [p for p in self.ports if self.alive(p)]
            infos = [self.info(p) for p in live]
            if infos and all(
                i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384" for i in infos
            ):
                return
            if time.monotonic() > deadline:
                raise StateError(f"cluster not ok after {timeout:.0f} s: {infos}")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        p = self.procs.get(port)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

    def wait_failover(self, dead: int, timeout: float = 30.0) -> int:
        """Until a replica took over the slots of the dead master ``dead``; returns its port."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.wait_ok(timeout=1.0)
                live_masters = [
                    int(n["port"]) for n in self.nodes()
                    if n["role"] == "master" and "fail" not in n["flags"] and n["slots"]
                ]  # fmt: skip
                if dead not in live_masters and len(live_masters) >= self.masters:
                    return next(p for p in live_masters if p not in self._old_masters(dead))
            except StateError:
                pass
            if time.monotonic() > deadline:
                raise StateError(f"no replica promoted for {dead} after {timeout:.0f} s")
            time.sleep(0.1)

    def _old_masters(self, dead: int) -> set[int]:
        return set(self.ports[: self.masters]) - {dead}

    def close(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        self._tmp.cleanup()

    def __enter__(self) -> RedisClusterServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave a server process behind
        with contextlib.suppress(Exception):
            for p in self.procs.values():
                if p.poll() is None:
                    p.kill()
