"""Webhook test parts: a REAL HTTP receiver (http.server on its own thread and a fixed free port)
that can answer 2xx, fail with 503, hang, or be stopped (connection refused) and started again;
outputs committed into a real SQLite state file as the daemon commits them."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from engine.daemon.pipeline import Renderer, Topics
from engine.outputs import Coupon, Push, VisitEvent
from engine.stores.sqlite_store import SQLiteStore

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def docs_receiver() -> dict[str, Any]:
    """The receiver example of docs/api.md's webhook section, executed: its names."""
    text = DOCS.read_text()
    section = text[text.index("## Webhooks") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "docs/api.md's webhook section has no python example"
    names: dict[str, Any] = {}
    exec(code.group(1), names)  # noqa: S102  (our own documentation)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


@dataclass
class Receiver:
    """``mode``: "ok" (204), "fail" (503) or "hang" (waits for ``release``)."""

    port: int = field(default_factory=free_port)
    mode: str = "ok"
    hits: list[Hit] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if rec.mode == "hang":
                    rec.release.wait(60)
                status = 204 if rec.mode in ("ok", "hang") else 503
                with rec._lock:
                    rec.hits.append(
                        Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, time.time())
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: connections are refused until ``start`` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[str]:
        """The ids answered 2xx, in order (duplicates kept)."""
        with self._lock:
            return [h.headers["webhook-id"] for h in self.hits if h.status < 300]

    def failed(self) -> int:
        with self._lock:
            return sum(1 for h in self.hits if h.status >= 300)


def outputs_for(merchant: str, n: int, start: int = 0, user: str = "u", tag: str = "") -> list[Any]:
    """``n`` visit enters and ``n`` pushes of ``merchant``, as the core makes them (``tag`` in
    their ids)."""
    outs: list[Any] = []
    for i in range(start, start + n):
        vid = f"{merchant}{tag}-v{i}"
        outs.append(VisitEvent(visit_id=vid, user=f"{user}{i}", store_id="s1", merchant_id=merchant,
                               event="enter", ts=1_700_000_000.0 + i, signal="gps"))
        outs.append(Push(push_id=f"{merchant}{tag}-p{i}", user=f"{user}{i}", campaign_id="c1", store_id="s1",
                         merchant_id=merchant, visit_id=vid, trigger="enter", ts=1_700_000_000.0 + i,
                         coupon=Coupon(title="10%", value=10, currency="EUR", expires_in_s=3600)))
    return outs


def commit_outputs(state: Path, merchant: str, n: int, start: int = 0, user: str = "u") -> list[str]:
    """Commit ``n`` visit enters and ``n`` pushes of ``merchant`` into the state file's outbox,
    as the daemon does (SQLiteStore.commit); their out_ids."""
    store = SQLiteStore(state, render=Renderer(Topics()))
    try:
        rows = store.commit(outputs_for(merchant, n, start, user))
        return [r.out_id for r in rows]
    finally:
        store.close()


def payloads(state: Path) -> dict[str, bytes]:
    """out_id -> the MQTT payload committed in the outbox."""
    store = SQLiteStore(state)
    try:
        return {o: bytes(p) for o, _t, p, _s in store.outbox()}
    finally:
        store.close()


def loads(b: bytes) -> Any:
    return json.loads(b)
