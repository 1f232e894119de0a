"""`geopush run --http`: settings, a port in use, and the daemon's SIGTERM stopping the API."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from daemon.conftest import broker  # noqa: F401  (the daemon's real-broker fixture)

from engine.api.live import FenceTarget
from engine.api.server import ApiServer
from engine.daemon.config import load_settings
from engine.errors import ConfigError
from fences.index import FenceIndex

from .test_daemon_api import Files


def test_http_setting_from_flag_environment_and_its_errors(monkeypatch):
    assert load_settings({"http": "127.0.0.1:8080"}).http == "127.0.0.1:8080"
    monkeypatch.setenv("GEOPUSH_HTTP", "[::1]:9000")
    assert load_settings({}).http == "[::1]:9000"
    monkeypatch.delenv("GEOPUSH_HTTP")
    assert load_settings({}).http is None  # off by default
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        load_settings({"http": "8080"})
    # a worker group serves the API too (its changes and tokens in Redis: tests/scaleout)
    group = {"http": "127.0.0.1:8080", "state": "redis://localhost:6379/0", "group": "g"}
    assert load_settings(group).http == "127.0.0.1:8080"


async def test_a_port_in_use_is_a_clear_error(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        index = FenceIndex([])
        server = ApiServer(f"127.0.0.1:{port}", tmp_path / "s.db", FenceTarget(lambda: index))
        with pytest.raises(ConfigError, match="cannot listen"):
            await server.start()
    finally:
        busy.close()


async def test_responses_go_out_without_waiting_for_nagle(tmp_path):
    """Every accepted connection has TCP_NODELAY: without it each response waited ~40 ms for
    the client's delayed ACK (asyncio sets it only on sockets made with IPPROTO_TCP)."""
    index = FenceIndex([])
    server = ApiServer("127.0.0.1:0", tmp_path / "s.db", FenceTarget(lambda: index))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.get("/v1/health")).status_code == 200
            conns = list(server.server.server_state.connections)
            assert conns
            for proto in conns:
                sock = proto.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        await server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_stops_the_daemon_and_its_api(broker, tmp_path):  # noqa: F811
    files = Files(tmp_path)
    port = _free_port()
    cmd = [
        sys.executable, "-m", "engine", "run", "--broker", broker.url,
        "--state", str(tmp_path / "s.db"), "--fences", str(files.fences),
        "--campaigns", str(files.campaigns), "--http", f"127.0.0.1:{port}", "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    r = await http.get("/v1/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the API never came up"
                    await asyncio.sleep(0.1)
        assert r.json() == {"status": "ok", "stores": 1, "streams": 0}
        proc.send_signal(signal.SIGTERM)  # the daemon's handler: drain, then the API stops
        assert proc.wait(30) == 0, proc.communicate()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_state_file_the_api_cannot_open_stops_the_start_with_the_reason(tmp_path):
    (tmp_path / "state.db").write_text("this is not a SQLite database, it is a text file. " * 40)
    index = FenceIndex([])
    server = ApiServer("127.0.0.1:0", tmp_path / "state.db", FenceTarget(lambda: index))
    with pytest.raises(ConfigError, match="the HTTP API failed to start: .*not a database"):
        await server.start()
