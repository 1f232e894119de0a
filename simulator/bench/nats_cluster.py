"""Start a throw-away 3-node NATS cluster (JetStream + MQTT listeners) on free local ports.

Each node gets its own config and store directory in one temporary directory, the cluster routes
to the others, JetStream, an MQTT listener, and the partition mapping every node must share
(docs/scaling.md):

    "{prefix}.events.*": "{prefix}.p.{{partition(P,1)}}.{{wildcard(1)}}"

so a phone's MQTT publish to ``geopush/events/{user}`` is stored under
``$MQTT.msgs.geopush.p.{partition_of(user, P)}.{user}`` and the engine consumes partitions.

    with NatsCluster(partitions=16) as c:
        c.nats_urls      # nats://127.0.0.1:P1,... (for --intake)
        c.mqtt_url(0)    # mqtt://127.0.0.1:M1 (phones, and the engine's outputs)
        c.kill(1)        # SIGKILL node 1; c.start_node(1) brings it back with its store

Run alone: ``python -m simulator.bench.nats_cluster`` prints the URLs and waits for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import TransportError
from simulator.embedded_broker import free_port, wait_listening

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin")


def find_nats_server() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    for d in _SBIN:
        p = Path(d) / "nats-server"
        if p.exists():
            return str(p)
    return None


def mapping(prefix: str, partitions: int) -> dict[str, str]:
    """The subject mapping that puts a user's events into its partition."""
    p = prefix.replace("/", ".")
    return {f"{p}.events.*": f"{p}.p.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"}


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    mqtt_port: int
    monitor_port: int
    conf: Path
    proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """Three (``size``) nats-server processes forming one JetStream cluster (``partitions`` 0:
    without the partition mapping)."""

    def __init__(self, size: int = 3, *, partitions: int = 16, prefix: str = "geopush") -> None:
        exe = find_nats_server()
        if exe is None:
            raise TransportError("nats-server not found (apt-get install nats-server)")
        self.exe = exe
        self.partitions = partitions
        self.prefix = prefix
        self._tmp = tempfile.TemporaryDirectory(prefix="geopush-nats-")
        self.dir = Path(self._tmp.name)
        self.nodes: list[Node] = []
        self._pick_ports(size)

    def _pick_ports(self, size: int) -> None:
        """Free ports for every node, and their configuration files."""
        self.nodes = [
            Node(
                f"n{i}", free_port(), free_port(), free_port(), free_port(), self.dir / f"n{i}.conf"
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.conf.write_text(self._config(node))

    def _config(self, node: Node) -> str:
        routes = [f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node]
        store = self.dir / node.name
        pairs = mapping(self.prefix, self.partitions).items() if self.partitions else []
        maps = "\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
        return f"""server_name: {node.name}
listen: 127.0.0.1:{node.port}
http: 127.0.0.1:{node.monitor_port}
jetstream {{
  store_dir: {json.dumps(str(store))}
  max_memory_store: 256MB
  max_file_store: 4GB
}}
cluster {{
  name: geopush
  listen: 127.0.0.1:{node.cluster_port}
  routes: [{", ".join(routes)}]
}}
mqtt {{
  listen: 127.0.0.1:{node.mqtt_port}
  stream_replicas: {min(3, len(self.nodes))}
}}
mappings {{
{maps}
}}
"""

    @property
    def nats_urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{n.port}" for n in self.nodes)

    def mqtt_url(self, i: int = 0) -> str:
        return f"mqtt://127.0.0.1:{self.nodes[i].mqtt_port}"

    def running(self, i: int) -> bool:
        p = self.nodes[i].proc
        return p is not None and p.poll() is None

    def start_node(self, i: int) -> None:
        node = self.nodes[i]
        if self.running(i):
            return
        log = open(self.dir / f"{node.name}.log", "ab")  # noqa: SIM115  (the process owns it)
        node.proc = subprocess.Popen(
            [self.exe, "-c", str(node.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start every node and wait for JetStream. A port taken between ``free_port`` picking
        it and the server binding it (another process got it meanwhile: seen in CI) means new
        ports for every node (the routes name them all) and another try."""
        for attempt in range(attempts):
            try:
                self._start_all(timeout)
                return
            except TransportError as exc:
                if "address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self._stop_all()
                for node in self.nodes:
                    shutil.rmtree(self.dir / node.name, ignore_errors=True)
                    (self.dir / f"{node.name}.log").unlink(missing_ok=True)
                self._pick_ports(len(self.nodes))

    def _start_all(self, timeout: float) -> None:
        for i in range(len(self.nodes)):
            self.start_node(i)
        for i, n in enumerate(self.nodes):
            alive = functools.partial(self.running, i)
            if not wait_listening("127.0.0.1", n.mqtt_port, timeout, alive=alive):
                raise TransportError(f"nats-server {n.name} did not start: {self.log(i)[-2000:]}")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running node reports JetStream healthy (a meta leader elected)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        for i, n in enumerate(self.nodes):
            if not self.running(i):
                continue
            while True:
                try:
                    url = f"http://127.0.0.1:{n.monitor_port}/healthz"
                    with urllib.request.urlopen(url, timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TransportError(f"nats-server {n.name}: JetStream not ready")
                time.sleep(0.2)

    def log(self, i: int) -> str:
        p = self.dir / f"{self.nodes[i].name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill(self, i: int) -> None:
        """SIGKILL one node (a crash: no goodbye to the cluster)."""
        p = self.nodes[i].proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def index_of(self, server_name: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.name == server_name)

    def close(self) -> None:
        self._stop_all()
        with contextlib.suppress(OSError):
            self._tmp.cleanup()

    def _stop_all(self) -> None:
        for i in range(len(self.nodes)):
            p = self.nodes[i].proc
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> int:
    with NatsCluster(partitions=int(sys.argv[1]) if len(sys.argv) > 1 else 16) as c:
        print(f"nats:  {c.nats_urls}")
        for i in range(len(c.nodes)):
            print(f"mqtt:  {c.mqtt_url(i)}")
        print(f"dir:   {c.dir}  (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
