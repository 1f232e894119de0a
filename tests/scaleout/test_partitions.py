"""The partition function and partition ownership (engine/partitions.py, cluster_store.owner_of)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.partitions import check_partitions, fnv1a32, partition_of
from engine.stores.cluster_store import owner_of
from simulator.embedded_broker import free_port, wait_listening


def test_fnv1a32_matches_the_published_vectors() -> None:
    # FNV-1a 32 test vectors (Fowler/Noll/Vo reference, draft-eastlake-fnv).
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_partitions_are_stable_and_spread() -> None:
    users = [f"user-{i}" for i in range(25_600)]
    counts = [0] * 256
    for u in users:
        counts[partition_of(u, 256)] += 1
    assert partition_of("user-7", 256) == partition_of("user-7", 256)
    assert min(counts) > 50 and max(counts) < 160, (min(counts), max(counts))


def test_bad_partition_counts_are_refused() -> None:
    for bad in (0, -1, 20000, 2.5, True):
        with pytest.raises(ConfigError, match="whole number"):
            check_partitions(bad)  # type: ignore[arg-type]
    assert check_partitions(256) == 256


def test_rendezvous_owners_move_only_what_a_join_takes() -> None:
    before = {p: owner_of(p, ["w1", "w2"]) for p in range(256)}
    after = {p: owner_of(p, ["w1", "w2", "w3"]) for p in range(256)}
    moved = [p for p in range(256) if before[p] != after[p]]
    assert all(after[p] == "w3" for p in moved)
    assert 50 < len(moved) < 120, len(moved)
    assert owner_of(0, []) is None
    for names in (["w1", "w2"], ["w1", "w2", "w3"], ["engine-1", "engine-2"]):
        shares = Counter(owner_of(p, names) for p in range(256))
        assert min(shares[n] for n in names) > 256 / len(names) * 0.7, shares
        small = Counter(owner_of(p, names) for p in range(16))
        assert all(small[n] >= 2 for n in names), small


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="needs the nats-server binary")
def test_engine_and_nats_subject_mapping_agree(tmp_path: Path) -> None:
    """A real nats-server with the mapping the clustered transport uses routes each user to the
    partition ``partition_of`` computes."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"port: {port}\nmappings = {{\n"
        '  "geopush.events.*": "geopush.p.{{partition(16,1)}}.{{wildcard(1)}}"\n}\n'
    )
    proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_listening("127.0.0.1", port, timeout=10, alive=lambda: proc.poll() is None)
        users = [f"u{i}" for i in range(40)] + ["alice", "8f3a-44b1", "用户"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.recv(4096)  # INFO
            s.sendall(b'CONNECT {"verbose":false}\r\nSUB geopush.p.> 1\r\n')
            for u in users:
                s.sendall(f"PUB geopush.events.{u} 0\r\n\r\n".encode())
            s.sendall(b"PING\r\n")
            got: dict[str, int] = {}
            buf = b""
            deadline = time.monotonic() + 10
            while len(got) < len(users) and time.monotonic() < deadline:
                buf += s.recv(65536)
                for line in buf.split(b"\r\n"):
                    if line.startswith(b"MSG "):
                        subj = line.split()[1].decode()
                        _, _, p, user = subj.split(".", 3)
                        got[user] = int(p)
        assert got == {u: partition_of(u, 16) for u in users}
    finally:
        proc.kill()
        proc.wait()


def test_worker_cli_says_what_is_wrong(redis_server: object, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.daemon.partitioned_cli import main

    base = ["worker", "--client-id", "w1", "--fences", "x", "--campaigns", "y"]
    assert main([*base, "--state", "redis://127.0.0.1:1", "--partitions", "0"]) == 1
    assert "--partitions 0: give a whole number" in capsys.readouterr().err
    assert main([*base, "--state", "http://x"]) == 1
    assert "looks like redis://HOST:PORT" in capsys.readouterr().err
    url = redis_server.url.rsplit("/", 1)[0]  # type: ignore[attr-defined]
    assert main([*base, "--state", url]) == 1
    assert "Cluster mode is not enabled" in capsys.readouterr().err
