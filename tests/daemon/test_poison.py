"""No message can crash the daemon, or crash-loop it; dead letters stay bounded and get delivered."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.daemon.pipeline import Topics, deadletter_row
from engine.daemon.poison import Breadcrumb

from .conftest import (
    BROKER_EXTRA,
    Collector,
    World,
    gps,
    needs_mosquitto,
    publish_all,
    received_outputs,
    running_service,
    wait_online,
)

OUT_TOPICS = ["geopush/push/#", "geopush/visits/#", "geopush/status/#", "geopush/deadletter"]
HELPER = Path(__file__).with_name("crashing_engine.py")
CRASH_EXIT = 70
DEADLETTER_MAX = 16 * 1024  # documented bound with the default --deadletter-payload


def _deep(depth: int, obj: bool = False) -> bytes:
    return (b'{"a":' * depth + b"1" + b"}" * depth) if obj else (b"[" * depth + b"]" * depth)


def _deep_gps(user: str, depth: int, obj: bool = False) -> bytes:
    """A valid gps event with an (ignored) extra field nested ``depth`` levels deep."""
    return gps(user, 5.0)[:-1] + b',"x":' + _deep(depth, obj) + b"}"


# --- dead letters: bounded, and the excerpt still says what came ---------------------------------


def test_deadletter_of_a_huge_control_character_payload_is_bounded() -> None:
    payload = b'{"type":"gps","x":"' + b"\x01" * 250_000 + b'"}'
    row = deadletter_row(Topics(), "geopush/events/bob", payload, "too_large", "d", b"k" * 16, 1.0)
    assert len(row.payload) < DEADLETTER_MAX  # was 1.5 MB: more than the broker accepts
    d = json.loads(row.payload)
    assert d["size"] == len(payload) and d["truncated"] is True
    assert d["sha256"] == hashlib.sha256(payload).hexdigest()
    assert d["encoding"] == "base64"  # escaping would grow it 6x
    assert base64.b64decode(d["payload"]) == payload[:4096]


def test_deadletter_text_excerpt_cut_on_a_character_boundary() -> None:
    payload = ("é" * 5000).encode()  # 2 bytes each: byte 4096 starts a character, 4095 does not
    row = deadletter_row(Topics(), "t", payload, "r", "d", b"k" * 16, 1.0, limit=4095)
    d = json.loads(row.payload)
    assert d["encoding"] == "text" and d["payload"] == "é" * 2047 and d["truncated"] is True
    small = deadletter_row(Topics(), "t", b'{"a":1}', "r", "d", b"k" * 16, 1.0)
    assert json.loads(small.payload)["payload"] == '{"a":1}'
    assert json.loads(small.payload)["truncated"] is False


def test_breadcrumb_survives_the_process_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "s.db.inflight"
    keys = [bytes([i]) * 16 for i in range(3)]
    code = (
        "import os, sys; from engine.daemon.poison import Breadcrumb; "
        f"c = Breadcrumb({str(path)!r}, 2); c.mark([b'x' * 16] * 5); "
        f"c.mark({keys!r}, isolated=True); os._exit(1)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 1
    crumb = Breadcrumb(path)
    assert crumb.previous == (True, keys)
    crumb.clear()
    crumb.close()
    assert Breadcrumb(path).previous == (False, [])


# --- over the wire, in process ------------------------------------------------------------------


async def test_deep_nesting_is_dead_lettered_and_the_daemon_stays_up(broker, tmp_path):
    bad = [("geopush/events/bob", _deep_gps("bob", d, obj)) for d in (1000, 2000) for obj in (0, 1)]
    good = [("geopush/events/carol", gps("carol", float(i))) for i in range(1, 11)]
    async with Collector(broker.url, ["geopush/push/#", "geopush/deadletter"]) as col:
        async with running_service(broker.url, tmp_path / "s.db") as svc:
            await publish_all(broker.url, bad + good)
            await col.wait_for(
                lambda c: len(c.on("geopush/push/")) == 10 and len(c.on("geopush/deadletter")) == 4
            )
            assert svc.totals["deadletters"] == 4
        letters = col.json_on("geopush/deadletter")
    assert {d["reason"] for d in letters} == {"too_deep"}


class _ExplodingDecoder:
    """A decoder bug stand-in: anything from eve raises a plain exception."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __call__(self, topic: str, payload: bytes) -> list[Any]:
        if topic.endswith("/eve"):
            raise KeyError("decoder bug")
        return self.real(topic, payload)


async def test_any_decoder_exception_dead_letters_only_that_message(broker, tmp_path):
    msgs = [("geopush/events/carol", gps("carol", float(i))) for i in range(1, 6)]
    msgs.insert(2, ("geopush/events/eve", gps("eve", 3.0)))
    async with Collector(broker.url, ["geopush/push/#", "geopush/deadletter"]) as col:
        async with running_service(broker.url, tmp_path / "s.db") as svc:
            svc.decoder = _ExplodingDecoder(svc.decoder)
            await publish_all(broker.url, msgs)
            await col.wait_for(
                lambda c: len(c.on("geopush/push/")) == 5 and len(c.on("geopush/deadletter")) == 1
            )
        (letter,) = col.json_on("geopush/deadletter")
    assert letter["reason"] == "decode_error" and letter["detail"] == "KeyError: 'decoder bug'"


@needs_mosquitto
async def test_a_flood_of_huge_bad_messages_is_delivered_and_does_not_grow_the_state(
    mosquitto_factory, tmp_path
):
    """50 payloads of 250 KB of control characters, through a broker that refuses messages over
    256 KiB as deploy/mosquitto.conf does: every dead letter reaches the topic (each bounded),
    their rows leave the outbox once sent, the state file stays small; past --deadletter-rate
    they come without their excerpt."""
    from engine.stores.sqlite_store import SQLiteStore

    broker = mosquitto_factory(
        persistence=True, extra_config=BROKER_EXTRA + "message_size_limit 262144\n"
    )
    state = tmp_path / "s.db"
    junk = [
        ("geopush/events/bob", bytes([1 + i % 30]) * 250_000 + str(i).encode()) for i in range(50)
    ]
    async with Collector(broker.url, ["geopush/deadletter"]) as col:
        # 0.001/s: a burst of one excerpt, then none for the rest of the test
        async with running_service(broker.url, state, deadletter_rate=0.001) as svc:
            await publish_all(broker.url, junk)
            await col.wait_for(lambda c: len(c.on("geopush/deadletter")) == 50, timeout=30)
            await col.wait_for(lambda c: svc.outbox.pending == 0)
            assert svc.totals["deadletter_payloads_dropped"] == 49
        letters = col.json_on("geopush/deadletter")
    assert all(len(p) < DEADLETTER_MAX for _, p in col.on("geopush/deadletter"))
    assert sorted(d["sha256"] for d in letters) == sorted(
        hashlib.sha256(p).hexdigest() for _, p in junk
    )
    assert sum(d["encoding"] == "none" for d in letters) == 49
    store = SQLiteStore(state)
    try:
        assert store.count("outbox") == 0  # delivered dead letters are not kept
        assert store.logged_inputs() == 50
    finally:
        store.close()
    size = sum(f.stat().st_size for f in tmp_path.glob("s.db*"))
    assert size < 2_000_000, size  # was ~100 MB


# --- a message that kills the process: quarantined after the second death ------------------------


def _spawn_crashing(url: str, state: Path, world: World, crash_user: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, str(HELPER), crash_user, "--broker", url, "--state", str(state),
        "--fences", str(world.fences), "--campaigns", str(world.campaigns),
        "--status-interval", "0.3", "--log-level", "WARNING", "--batch-size", "16",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@needs_mosquitto
async def test_a_message_that_kills_the_process_is_quarantined_not_replayed(broker, tmp_path):
    world = World(tmp_path, users=20, per_user=15)
    expected = world.oracle()  # without the poison message: it must never be processed
    poison = ("geopush/events/mallory", gps("mallory", 1_700_000_000.0))
    msgs = list(world.messages)
    msgs.insert(len(msgs) // 3, poison)
    state = tmp_path / "s.db"
    crashes = 0
    async with Collector(broker.url, OUT_TOPICS) as col:
        proc = _spawn_crashing(broker.url, state, world, "mallory")
        try:
            await wait_online(col, proc.pid)
            await publish_all(broker.url, msgs)
            deadline = time.monotonic() + 90  # a guard against a hang, not a timing assertion
            while True:
                while proc.poll() is None and not (
                    col.on("geopush/deadletter") and received_outputs(col) == expected
                ):
                    assert time.monotonic() < deadline, "neither settled nor crashed"
                    await asyncio.sleep(0.05)
                if proc.poll() is None:
                    break  # settled
                assert proc.returncode == CRASH_EXIT, proc.stderr.read().decode()  # type: ignore[union-attr]
                crashes += 1
                assert crashes <= 3, "a crash loop: the message is replayed at every restart"
                proc = _spawn_crashing(broker.url, state, world, "mallory")
            await asyncio.sleep(0.3)  # anything extra would show up now
            proc.terminate()
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # Died once in its batch, once alone; then dead-lettered instead of processed again.
    assert crashes == 2
    (letter,) = col.json_on("geopush/deadletter")
    assert letter["reason"] == "poison" and letter["topic"] == poison[0]
    assert letter["payload"].encode() == poison[1]
    assert received_outputs(col) == expected  # every other message processed, none twice


async def test_breadcrumb_suspects_run_alone_and_a_lone_isolated_one_is_quarantined(broker, tmp_path):
    """What a dead process left in <state>.inflight: a batch's messages are only run alone (an
    ordinary kill -9 quarantines nothing); a message it died on while alone is dead-lettered as
    poison, acknowledged, and not processed; after a clean stop nothing is left."""
    from engine.daemon.pipeline import digest

    state = tmp_path / "s.db"
    crumb_path = tmp_path / "s.db.inflight"
    m1, m2, m3, m4 = (
        (f"geopush/events/{u}", gps(u, float(i))) for i, u in enumerate(("al", "bo", "cy", "di"), 1)
    )
    crumb = Breadcrumb(crumb_path)
    crumb.mark([digest(*m1), digest(*m2)])  # a normal batch in hand when the process died
    crumb.close()
    async with Collector(broker.url, ["geopush/push/#", "geopush/deadletter"]) as col:
        async with running_service(broker.url, state) as svc:
            assert len(svc.guard.suspects) == 2
            await publish_all(broker.url, [m1, m2])
            await col.wait_for(lambda c: len(c.on("geopush/push/")) == 2)
            assert not svc.guard.suspects
        assert Breadcrumb(crumb_path).previous == (False, [])  # a clean stop clears it
        crumb = Breadcrumb(crumb_path)
        crumb.mark([digest(*m3)], isolated=True)  # died on m3 while it was alone
        crumb.close()
        async with running_service(broker.url, state) as svc:
            await publish_all(broker.url, [m3, m4])
            await col.wait_for(
                lambda c: len(c.on("geopush/push/")) == 3 and len(c.on("geopush/deadletter")) == 1
            )
            assert svc.totals["deadletters"] == svc.totals["deadletter:poison"] == 1
    (letter,) = col.json_on("geopush/deadletter")
    assert letter["reason"] == "poison" and letter["payload"].encode() == m3[1]
    assert {t for t, _ in col.on("geopush/push/")} == {f"geopush/push/{u}" for u in ("al", "bo", "di")}
