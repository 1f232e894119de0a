"""`geopush bench e2e`: the daemon end to end over a real mosquitto, against the transport ceiling.

What it runs (all on this machine, each in its own process so nobody shares a core by accident):

* mosquitto on a free port (unless ``--broker``), in-flight window 2000, unbounded queues;
* the transport ceiling: a bare aiomqtt subscriber (QoS 1, auto-ack) that only counts;
* the engine: ``geopush run`` as a subprocess over a synthetic city (simulator.bench.workload:
  20 x 20 stores, one enter campaign each, users walking; 1 fix in 10 inside a store);
* publishers: ``--publishers`` processes publishing QoS 1 with up to 1000 messages in flight
  each, through a raw-socket MQTT client (simulator.bench.pub): pre-encoded packets, one
  ``send`` per chunk of due messages, PUBACKs read in bulk. On 2 cores a paho/aiomqtt publisher
  (~17-20 µs of CPU per message) took the core the engine needed; this one costs ~2-3 µs.

Maximum rates (ceiling and engine) are measured by draining a backlog: the consumer's persistent
session is created, the consumer stops, the publishers preload N messages into the broker, the
consumer starts again and we time 10% -> 90% of the drain. That isolates the consumer from the
publishers' CPU. Latency is then measured live at 25/50/90% of the engine's maximum: publishers
pace their sends, a collector subscribes to the pushes, and event-to-push latency is the time from
the publisher handing a message to the socket to the collector receiving the push it caused.
All of it for single-event messages and for batch messages of 50 events.

``--loop`` runs it twice in the same run, each time on a fresh engine: the plain workload, then
the same one with the loop closed ("loop"): after each visit that got a push, the user's second
and third fixes outside are replaced by a ``redeem`` of that push's code and a ``payment`` at its
merchant (the codes are known beforehand: the publishers replay their users' fixes through the
core with the engine's coupon secret, ``LOOP_SECRET``). Same messages, same visits and pushes;
1 event in 10 is a redemption or a payment, each answered and attributed by the engine. That is
the stress case, every push redeemed and paid for; ``--loop-share F`` closes the loop after a
fraction F of the pushes only (chosen by a hash of the push id), the rest of the fixes unchanged,
for the cost at a realistic share. Both
workloads' live phases offer the same rates (fractions of ``--rate``, or of the first plain
engine's drain), so CPU per event compares the same events at the same rate; ``--rounds N``
repeats the pair N times, the order swapped every other round, and reports the median
loop/plain ratio of engine CPU per event at each load. (CPU per event falls with the rate, as
micro-batches grow: compare the workloads at the same rate, never at their own maxima.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 50
PERIOD = 20  # a user's walk repeats every PERIOD fixes ...
STAY = 2  # ... the last STAY of them inside a store: 10% of fixes inside, 5% enter, 5% exit
CITY_SIDE = 20
LOADS = (0.25, 0.5, 0.9)
ENGINE_ID = "bench-engine"
LOOP_SECRET = "geopush-bench-e2e-loop-secret"  # the engine's coupon secret (--loop)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "e2e",
        help="end to end over MQTT: events/s and event-to-push latency vs the transport ceiling",
        description=plain_help(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", metavar="URL", help="use this broker instead of starting mosquitto")
    p.add_argument("--duration", type=float, default=4.0, metavar="S",
                   help="seconds per measurement (each of ~10 phases; default 4)")
    p.add_argument("--publishers", type=int, default=2, metavar="N", help="publisher processes (default 2)")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N", help="the engine's --batch-size")
    p.add_argument("--uvloop", action="store_true", help="run the engine and the ceiling on uvloop")
    p.add_argument("--only", choices=["single", "batch"], help="measure one message kind only")
    p.add_argument("--transport", choices=["fast", "plain", "both"], default="fast",
                   help="the engine's MQTT path: fast (default), plain (`geopush run --mqtt-plain`), "
                        "or both, one after the other against the same broker and ceiling")
    p.add_argument("--loop", action="store_true",
                   help="also measure the workload with redemptions and payments (1 event in 10), "
                        "in the same run on a fresh engine: results under plain and loop")
    p.add_argument("--loop-share", type=float, default=1.0, metavar="F",
                   help="with --loop: the fraction of pushes followed by a redemption of their code and "
                        "a payment at their merchant (default 1.0, every push: the stress case); the "
                        "others' fixes stay fixes. Which pushes: by a hash of the push id, the same in "
                        "every run")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="with --loop: N rounds of both workloads, interleaved (plain, loop, then loop, "
                        "plain, ...), each on a fresh engine at the same offered rates; the summary "
                        "gives the median loop/plain ratio of engine CPU per event (default 1)")
    p.add_argument("--in-process", action="store_true",
                   help="with --loop: no broker, no engine process: the daemon's batch path in this "
                        "process (decode, core, SQLite commit with the rendered outbox rows, the "
                        "previous batch's rows marked sent in it) on the same messages, micro-batches "
                        "of 16 and 256 single-event messages and of 20 batch messages, --rounds "
                        "interleaved: CPU per event, plain and loop")
    p.add_argument("--rate", type=float, metavar="MSGS",
                   help="with --loop: the live phases offer 25/50/90%% of MSGS messages/s to every "
                        "engine (default: of the first plain engine's drain rate, which a busy "
                        "machine can make small)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `geopush run` (repeatable), e.g. --engine-arg=--state=redis://...")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_main)  # fmt: skip
    # --workers N [--state redis://...]: the worker-group benchmark (simulator/bench/workers.py)
    from simulator.bench.workers import add_arguments

    add_arguments(p)


def plain_help(doc: str) -> str:
    """A docstring as --help text: no reStructuredText. ``--flag`` -> --flag, ``two words`` ->
    `two words`, :role:`~a.b.Name` -> Name; a leading "`command`: " summary prefix goes."""
    import re

    text = re.sub(r":[a-z]+(?::[a-z]+)?:`(~?)([^`]+)`",
                  lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], doc)  # fmt: skip
    text = re.sub(r"``([^`]+)``", lambda m: f"`{m.group(1)}`" if " " in m.group(1) else m.group(1), text)
    head = re.match(r"`[^`]+`: (\w)", text)
    if head:
        text = head.group(1).upper() + text[head.end() :]
    return text.strip() + "\n"


# --- message generation (in the publisher processes) -----------------------------------------------


def redeemed(push_id: str, share: float) -> bool:
    """Whether the loop workload redeems (and pays for) this push, at ``share`` of them: by a
    hash of its push id, so the same pushes in every run and publisher process."""
    if share >= 1.0:
        return True
    import hashlib

    h = int.from_bytes(hashlib.blake2b(push_id.encode(), digest_size=8).digest(), "big")
    return h < share * 2**64


def _close_loop(evs: list[list[dict[str, Any]]], per_msg: int, share: float = 1.0) -> int:
    """Replace, after each visit that gets a push (``share`` of them, ``redeemed``), the user's
    2nd and 3rd fixes outside with a redemption of the push's code and a payment at its merchant
    (decisions and visits unchanged: the users are outside by then, and the bench city's
    campaigns have no audience rules). The pushes come from replaying the fixes through the
    core, in the order they are published, with the engine's coupon secret. Returns the events
    replaced."""
    import tempfile

    from engine.campaigns import load_campaigns
    from engine.core import Core, CoreConfig
    from engine.events import decode
    from engine.outputs import Push
    from engine.state import MemoryStore
    from fences.catalog import load_catalog
    from fences.index import FenceIndex
    from simulator.bench.workload import City

    with tempfile.TemporaryDirectory() as tmp:
        fences, camps = City(CITY_SIDE).write(Path(tmp))
        core = Core(FenceIndex(load_catalog(fences)), load_campaigns(camps), MemoryStore(),
                    CoreConfig(coupon_secret=LOOP_SECRET))  # fmt: skip
    where = {(e["user"], e["ts"]): (u, i) for u, ev in enumerate(evs) for i, e in enumerate(ev)}
    pushes: list[Any] = []
    longest = max(len(ev) for ev in evs)
    for r in range(0, longest, per_msg):
        chunk = [decode(json.dumps(e).encode())[0] for ev in evs for e in ev[r : r + per_msg]]
        pushes += [o for o in core.process(chunk) if type(o) is Push]
    n = 0
    for p in pushes:
        if not redeemed(p.push_id, share):
            continue
        u, i = where[(p.user, p.ts)]  # the enter fix; i + STAY: the exit; then ours
        ev = evs[u]
        if i + STAY + 2 < len(ev):
            t1, t2 = ev[i + STAY + 1]["ts"], ev[i + STAY + 2]["ts"]
            ev[i + STAY + 1] = {"type": "redeem", "user": p.user, "ts": t1, "merchant_id": p.merchant_id,
                                "code": p.code}  # fmt: skip
            ev[i + STAY + 2] = {"type": "payment", "user": p.user, "ts": t2, "merchant_id": p.merchant_id,
                                "amount": 12.5}  # fmt: skip
            n += 2
    return n


def _messages(kind: str, prefix: str, users: int, count: int, topic_prefix: str,
              loop: bool = False, share: float = 1.0) -> tuple[list[tuple[str, bytes]], list[list[tuple[str, float]]]]:  # fmt: skip
    """``count`` messages for ``users`` fresh users, and per message the (user, ts) of the fixes
    inside a store (each causes an enter and, by the campaigns, a push). ``loop``: ``share`` of
    the pushes redeemed and paid for (``_close_loop``)."""
    from simulator.bench.workload import City, user_events

    city = City(CITY_SIDE)
    per_msg = 1 if kind == "single" else BATCH
    rounds = max(1, math.ceil(count / users))
    # Each user starts at its own phase of the walk: in lockstep every user would enter a store in
    # the same round, a burst of pushes every PERIOD rounds that real phones do not produce.
    phase = [u % PERIOD for u in range(users)]
    evs = [user_events(city, f"{prefix}{u}", rounds * per_msg + PERIOD, seed=7, inside_every=PERIOD, stay=STAY)[phase[u]:] for u in range(users)]
    if loop and share > 0:
        _close_loop(evs, per_msg, share)
    msgs: list[tuple[str, bytes]] = []
    keys: list[list[tuple[str, float]]] = []
    dumps = json.dumps
    for r in range(rounds):
        for u in range(users):
            if len(msgs) >= count:
                break
            user = f"{prefix}{u}"
            chunk = evs[u][r * per_msg : (r + 1) * per_msg]
            if kind == "single":
                payload = dumps(chunk[0], separators=(",", ":")).encode()
            else:
                inner = [{k: v for k, v in e.items() if k != "user"} for e in chunk]
                payload = dumps({"type": "batch", "user": user, "events": inner}, separators=(",", ":")).encode()
            msgs.append((f"{topic_prefix}/{user}", payload))
            keys.append([(user, e["ts"]) for i, e in enumerate(chunk) if (phase[u] + r * per_msg + i) % PERIOD == PERIOD - STAY])
    return msgs, keys


def _publisher(url: str, kind: str, prefix: str, users: int, count: int, rate: float | None,
               topic_prefix: str, out: Any, go: Any, abort: Any, loop: float = 0.0) -> None:  # fmt: skip
    """Child process: publish ``count`` messages (paced at ``rate`` msg/s, or flat out) through
    the raw-socket publisher (simulator.bench.pub: ~2-3 µs of CPU per message where the
    paho-based ``publish_paced`` took 6-17), every one acknowledged. Messages are generated and
    encoded and the connection made before the clock starts: the child then says ``ready`` and
    waits for ``go`` (all publishers start together). ``cpu`` is the publishing part only,
    ``cpu_setup`` the generation. ``loop``: the share of pushes redeemed (0: the plain workload)."""
    from simulator.bench.pub import RawPublisher

    try:
        cpu0 = time.process_time()
        msgs, keys = _messages(kind, prefix, users, count, topic_prefix, loop > 0, loop)
        packets = RawPublisher.prepare(msgs)
        setup = time.process_time() - cpu0
        with RawPublisher(url, client_id=f"bench-pub-{prefix}{os.getpid()}", max_in_flight=1000) as pub:
            out.put({"ready": True})
            if not go.wait(600) or abort.is_set():
                out.put({"error": "aborted before the start (another publisher failed)"})
                return
            rep = pub.publish(packets, rate)
    except Exception as exc:  # noqa: BLE001  (reported by the parent, which would wait forever)
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        return
    # (user, ts) of each fix that causes a push -> when its message was handed to the socket
    times = rep.send_times()
    sent = {k: times[i] for i, ks in enumerate(keys) for k in ks}
    out.put({"n": rep.n, "seconds": rep.seconds, "sent": sent, "cpu": rep.cpu_seconds,
             "cpu_setup": setup, "max_in_flight": rep.max_in_flight_seen,
             "max_chunk": rep.max_chunk})  # fmt: skip


def _publish(url: str, kind: str, tag: str, count: int, rate: float | None, procs: int,
             topic_prefix: str = "geopush/events", on_start: Any = None,
             loop: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Run ``procs`` publisher processes sharing ``count`` messages and ``rate``; wait for all.
    ``loop``: the share of pushes redeemed and paid for (0: the plain workload).
    ``on_start()`` runs when every publisher is ready (messages encoded, connected), just
    before they all start publishing."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go, abort = ctx.Event(), ctx.Event()
    ps = []
    # Enough messages per user that walks reach stores (1 fix in 10 is inside one), and enough
    # users that the engine's batches span many of them.
    each = max(1, count // procs)
    users = max(5, min(500, each // (2 * PERIOD))) if kind == "single" else max(5, min(200, each // 4))
    for i in range(procs):
        p = ctx.Process(
            target=_publisher,
            args=(url, kind, f"{tag}p{i}u", users, count // procs, rate / procs if rate else None,
                  topic_prefix, q, go, abort, loop),
        )  # fmt: skip
        p.start()
        ps.append(p)
    results: list[dict[str, Any]] = []
    ready = 0
    try:
        while len(results) < len(ps):
            try:
                msg = q.get(timeout=1.0)
            except queue.Empty:
                if all(p.exitcode is not None for p in ps):  # died without a word (killed?)
                    with contextlib.suppress(queue.Empty):
                        results.append(q.get(timeout=2.0))
                        continue
                    codes = [p.exitcode for p in ps]
                    raise RuntimeError(f"bench: publisher processes exited without a result: {codes}") from None
                continue
            if "ready" in msg:
                ready += 1
                if ready == len(ps):
                    if on_start is not None:
                        on_start()
                    go.set()
                continue
            if "error" in msg and not go.is_set():
                abort.set()
                go.set()
            results.append(msg)
    finally:
        abort.set()  # (no effect on publishers already started)
        go.set()
        for p in ps:
            p.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        from simulator.bench.pub import BenchPublishError

        raise BenchPublishError(f"bench: a publisher failed: {errors[0]}")
    sent: dict[tuple[str, float], float] = {}
    for r in results:
        sent.update(r["sent"])
    return {"n": sum(r["n"] for r in results), "seconds": max(r["seconds"] for r in results), "sent": sent,
            "cpu": sum(r["cpu"] for r in results), "cpu_setup": sum(r["cpu_setup"] for r in results),
            "max_chunk": max(r["max_chunk"] for r in results)}


# --- the ceiling: a bare aiomqtt subscriber that only counts -----------------------------------


def _ceiling(url: str, topic: str, n: int, subscribe_only: bool, use_uvloop: bool, out: Any) -> None:
    """Child process. The one aiomqtt use outside mqtt.py: the bare client IS what we measure."""
    import aiomqtt

    from engine.transport.mqtt import parse_broker_url

    addr = parse_broker_url(url)

    async def run() -> dict[str, float]:
        async with aiomqtt.Client(addr.host, addr.port, identifier="bench-ceiling", clean_session=False,
                                  protocol=aiomqtt.ProtocolVersion.V311) as client:  # fmt: skip
            await client.subscribe(topic, qos=1)
            if subscribe_only:
                return {}
            count = 0
            lo, hi = int(n * 0.1), int(n * 0.9)
            t_lo = t_hi = 0.0
            async for _m in client.messages:
                count += 1
                if count == lo:
                    t_lo = time.perf_counter()
                elif count == hi:
                    t_hi = time.perf_counter()
                if count >= n:
                    break
            return {"msgs_per_s": (hi - lo) / (t_hi - t_lo)}

    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            out.put(uvloop.run(run()))
            return
    out.put(asyncio.run(run()))


def _run_ceiling(url: str, kind: str, n: int, procs: int, use_uvloop: bool) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    topic = f"bench/{kind}/+"
    p = ctx.Process(target=_ceiling, args=(url, topic, n, True, use_uvloop, q))
    p.start()
    q.get()
    p.join()
    _publish(url, kind, f"ceil-{kind}-", n, None, procs, topic_prefix=f"bench/{kind}")
    p = ctx.Process(target=_ceiling, args=(url, topic, n, False, use_uvloop, q))
    p.start()
    res = q.get()
    p.join()
    return float(res["msgs_per_s"])


# --- the engine, its status and the push collector -----------------------------------------------


class Watch:
    """Orchestrator-side subscriber: the engine's retained status and the pushes.

    A raw-socket subscriber (simulator.bench.pub.RawSubscriber, QoS 1, PUBACKs of a read in
    one write; ~30% less CPU per push than paho's client, which mattered most in the drains, at
    thousands of pushes/s). A push's receive time is when the read holding it returned."""

    def __init__(self, url: str) -> None:
        from simulator.bench.pub import RawSubscriber

        self.sub = RawSubscriber(
            url,
            [f"geopush/status/{ENGINE_ID}", "geopush/push/#"],
            self._record,
            client_id=f"bench-watch-{os.getpid()}",
        )
        self.status: list[dict[str, Any]] = []
        self.pushes: list[tuple[str, float, float]] = []

    async def start(self) -> None:
        await self.sub.start()

    async def stop(self) -> None:
        await self.sub.stop()

    def _record(self, msgs: list[tuple[str, bytes]], received: float) -> None:
        loads = json.loads
        for topic, payload in msgs:
            if topic.startswith("geopush/push/"):
                d = loads(payload)
                self.pushes.append((d["user"], d["ts"], received))
            else:
                self.status.append(loads(payload))

    def messages(self, pid: int) -> int:
        for s in reversed(self.status):
            if s.get("pid") == pid:
                return int(s.get("counters", {}).get("messages", 0))
        return 0

    def idle(self, pid: int, n: int) -> bool:
        """The engine has processed ``n`` messages and published every output."""
        for s in reversed(self.status):
            if s.get("pid") == pid:
                return bool(s.get("counters", {}).get("messages", 0) >= n and s.get("outbox_pending", 1) == 0)
        return False

    async def wait(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.sub.lost is not None:
                raise RuntimeError(f"bench: the watch lost its broker connection: {self.sub.lost}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench: timed out waiting for {what}")
            await asyncio.sleep(0.02)


class Engine:
    def __init__(self, url: str, folder: Path, args: argparse.Namespace, transport: str = "fast",
                 workload: str = "plain", tag: str = "") -> None:  # fmt: skip
        # the share of pushes redeemed and paid for (0.0: the plain workload)
        self.loop = args.loop_share if workload == "loop" else 0.0
        self.cmd = [
            sys.executable, "-m", "engine", "run", "--broker", url, "--client-id", ENGINE_ID,
            "--state", str(folder / f"state-{transport}-{workload}{tag}.sqlite"), "--fences", str(folder / "fences.geojson"),
            "--campaigns", str(folder / "campaigns.json"), "--status-interval", "0.1",
            "--batch-size", str(args.batch_size), "--log-level", "WARNING", "--no-owntracks",
            *(["--uvloop"] if args.uvloop else []), *args.engine_arg,
            *(["--mqtt-plain"] if transport == "plain" else []),
        ]  # fmt: skip
        from simulator.embedded_broker import free_port

        self.metrics_port = free_port()
        self.cmd += ["--metrics-port", str(self.metrics_port)]
        self.proc: subprocess.Popen[bytes] | None = None

    def e2p_buckets(self) -> dict[float, float]:
        """The engine's own event-to-push histogram (receipt -> broker PUBACK of the push)."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith("geopush_event_to_push_seconds_bucket"):
                le = line.split('le="')[1].split('"')[0]
                out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        return out

    async def start(self, watch: Watch) -> int:
        env = {**os.environ, "GEOPUSH_COUPON_SECRET": LOOP_SECRET}  # the codes _close_loop made
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, env=env)
        pid = self.proc.pid
        await watch.wait(
            lambda: any(s.get("pid") == pid and s["state"] == "online" for s in watch.status)
            or self.proc.poll() is not None,  # type: ignore[union-attr,unused-ignore]
            60, "the engine to come online",
        )  # fmt: skip
        if self.proc.poll() is not None:
            raise RuntimeError(f"engine exited with {self.proc.returncode}: {' '.join(self.cmd)}")
        return pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (nan elsewhere)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _drain_rate(status: list[dict[str, Any]], pid: int, n: int) -> float:
    """Sustained msgs/s of a drain of ``n`` messages: from the engine's status when 10% were
    received to the first status with all ``n`` processed AND every output acknowledged by the
    broker (the outbox can buffer outputs; they count). Times are the engine's own (``ts``)."""
    pts = [
        (s["ts"], s["counters"].get("messages", 0), s.get("outbox_pending", 0))
        for s in status
        if s.get("pid") == pid and "counters" in s
    ]
    lo = next((p for p in pts if p[1] >= 0.1 * n), None)
    hi = next((p for p in pts if p[1] >= n and p[2] == 0), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return float(hi[1] - lo[1]) / float(hi[0] - lo[0])


def _bucket_q(delta: dict[float, float], q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding quantile ``q`` (cumulative counts)."""
    total = max(delta.values(), default=0.0)
    if total <= 0:
        return float("nan")
    for le in sorted(delta):
        if delta[le] >= q * total:
            return le * 1000 if le != float("inf") else float("inf")
    return float("inf")


def _backlog(kind: str, duration: float) -> int:
    return int((10_000 if kind == "single" else 1_000) * duration)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _measure_kind(url: str, kind: str, args: argparse.Namespace, engine: Engine, watch: Watch,
                        ceiling: float, say: Any, broker_pid: int | None = None,
                        base_max: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The drain (maximum) and the live phases of one message kind on one engine. The live
    phases offer fractions of ``base_max`` msg/s when given (``--loop``: the plain workload's
    maximum, so that both workloads are compared at the same offered rates), else of this
    engine's own maximum."""
    per = 1 if kind == "single" else BATCH
    # 1) maximum: drain a preloaded backlog (engine stopped while the broker queues it)
    n = _backlog(kind, args.duration)  # the same backlog the ceiling drained: same broker work
    engine.stop()
    say(f"[{kind}] preloading {n} messages for the engine")
    await asyncio.to_thread(_publish, url, kind, f"max-{kind}-", n, None, args.publishers, loop=engine.loop)
    pid = await engine.start(watch)
    # (no CPU figure here: the engine reports "online" only after its first batches, so the CPU
    # it used for the drain cannot be read from /proc; the live phases below give CPU per event)
    await watch.wait(lambda: watch.idle(pid, n), 600, f"the engine to drain {n} messages")
    max_msgs = _drain_rate(watch.status, pid, n)
    res: dict[str, Any] = {
        "events_per_message": per,
        "max_msgs_per_s": round(max_msgs),
        "max_events_per_s": round(max_msgs * per),
        "ceiling_msgs_per_s": round(ceiling),
        "ratio_to_ceiling": round(max_msgs / ceiling, 3),
        "loads": [],
    }
    if base_max is not None:
        res["rates_of_msgs_per_s"] = round(base_max)
    say(f"[{kind}] engine max {max_msgs:,.0f} msg/s = {max_msgs * per:,.0f} events/s ({max_msgs / ceiling:.0%} of ceiling {ceiling:,.0f} msg/s)")
    # 2) latency at fractions of the maximum, live
    for frac in LOADS:
        rate = (base_max if base_max is not None else max_msgs) * frac
        count = int(rate * args.duration)
        watch.pushes.clear()
        base = watch.messages(pid)
        b0 = engine.e2p_buckets()
        c0s: list[tuple[float, float, float, float]] = []

        def start() -> None:  # all publishers ready: the phase's clock and CPU counts start
            c0s.append((proc_cpu(pid), proc_cpu(broker_pid), time.monotonic(), time.process_time()))  # noqa: B023

        pub = await asyncio.to_thread(_publish, url, kind, f"l{int(frac * 100)}-{kind}-", count, rate,
                                      args.publishers, on_start=start, loop=engine.loop)  # fmt: skip
        c0 = c0s[0]
        await watch.wait(lambda: watch.idle(pid, base + pub["n"]), 120, "the engine to catch up")  # noqa: B023
        c1 = (proc_cpu(pid), proc_cpu(broker_pid), time.monotonic(), time.process_time())
        await asyncio.sleep(0.5)  # last pushes in flight
        lat = [(t - pub["sent"][(u, ts)]) * 1000 for u, ts, t in watch.pushes if (u, ts) in pub["sent"]]
        b1 = engine.e2p_buckets()
        delta = {le: b1[le] - b0.get(le, 0.0) for le in sorted(b1)}
        row = {
            "load": frac,
            "offered_msgs_per_s": round(rate),
            "achieved_msgs_per_s": round(pub["n"] / pub["seconds"]),
            "achieved_events_per_s": round(pub["n"] * per / pub["seconds"]),
            "pushes": len(lat),
            # the most messages one publisher sent in one write (a paced publisher that fell
            # behind catches up at ~2x its rate, in chunks of 2 ms of it: simulator/bench/pub.py)
            "publisher_max_chunk": pub["max_chunk"],
            "p50_ms": round(_pct(lat, 0.5), 2),
            "p99_ms": round(_pct(lat, 0.99), 2),
            # inside the engine: receipt of the message -> broker's PUBACK of the push (bucket
            # upper bounds of the Prometheus histogram)
            "engine_p50_ms_le": _bucket_q(delta, 0.5),
            "engine_p99_ms_le": _bucket_q(delta, 0.99),
            # who used the 2 cores during the phase: CPU µs per event, and cores busy
            "cpu_us_per_event": {
                "engine": round((c1[0] - c0[0]) / (pub["n"] * per) * 1e6, 1),
                "broker": round((c1[1] - c0[1]) / (pub["n"] * per) * 1e6, 1),
                "publishers": round(pub["cpu"] / (pub["n"] * per) * 1e6, 1),
                # generating and encoding the messages, before the publishers' clock starts
                "publishers_setup": round(pub["cpu_setup"] / (pub["n"] * per) * 1e6, 1),
                # this process: the Watch's subscriber (pushes, status) and the orchestration
                "collector": round((c1[3] - c0[3]) / (pub["n"] * per) * 1e6, 1),
            },
            "cores_busy": round(((c1[0] - c0[0]) + (c1[1] - c0[1]) + pub["cpu"] + (c1[3] - c0[3]))
                                / (c1[2] - c0[2]), 2),  # fmt: skip
            # the phase's totals: events, wall seconds (publishing and catching up) and the
            # engine's CPU seconds over them
            "events": pub["n"] * per,
            "seconds": round(c1[2] - c0[2], 4),
            "engine_cpu_s": round(c1[0] - c0[0], 4),
        }
        res["loads"].append(row)
        say(f"[{kind}] {frac:.0%} load: {row['achieved_events_per_s']:,} events/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms ({len(lat)} pushes); in the engine p50 <= {row['engine_p50_ms_le']} ms, p99 <= {row['engine_p99_ms_le']} ms, CPU µs/event {row['cpu_us_per_event']}, cores busy {row['cores_busy']}")
    return res


async def _bench(url: str, args: argparse.Namespace, folder: Path, say: Any,
                 broker_pid: int | None = None) -> dict[str, Any]:
    from simulator.bench.workload import City

    City(CITY_SIDE).write(folder)
    kinds = [args.only] if args.only else ["single", "batch"]
    ceilings: dict[str, float] = {}
    for kind in kinds:
        n = _backlog(kind, args.duration)
        say(f"[ceiling] bare aiomqtt subscriber, {kind}-event messages: draining {n}")
        ceilings[kind] = await asyncio.to_thread(_run_ceiling, url, kind, n, args.publishers, args.uvloop)
        say(f"[ceiling] {kind}: {ceilings[kind]:,.0f} msg/s")
    watch = Watch(url)
    await watch.start()
    transports = ["fast", "plain"] if args.transport == "both" else [args.transport]
    results: dict[str, Any] = {"duration_s": args.duration, "publishers": args.publishers,
                               "uvloop": args.uvloop, "city_stores": CITY_SIDE**2,
                               "fixes_inside_fraction": STAY / PERIOD,
                               "enters_per_fix": 1 / PERIOD, "transport": args.transport}  # fmt: skip
    if args.loop:
        results["loop_share"] = args.loop_share
    workloads = ["plain", "loop"] if args.loop else ["plain"]
    results["workloads"] = workloads
    rounds = max(1, args.rounds) if args.loop else 1
    # Round r runs the workloads in turn, the order reversed every other round (plain, loop,
    # loop, plain, ...) so that neither always runs first. Every engine's live phases offer the
    # same rates: fractions of the first plain engine's maximum (its drain), so that CPU per
    # event (same events: the loop replaces fixes one for one) compares like with like.
    base_max: dict[str, float] = {}
    per_round: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            order = workloads if r % 2 == 0 else workloads[::-1]
            got: dict[str, Any] = {}
            for workload, transport in [(w, t) for w in order for t in transports]:
                # one engine per transport and workload, each on its own fresh state (same client
                # id: the status topic the watch reads; the previous engine drained its session)
                say(f"[engine] the {transport} MQTT path, {workload} workload" + (f", round {r + 1}" if rounds > 1 else ""))
                engine = Engine(url, folder, args, transport, workload, tag=f"r{r}" if rounds > 1 else "")
                into = got
                if len(workloads) > 1:
                    into = into.setdefault(workload, {})
                if len(transports) > 1:
                    into = into.setdefault(transport, {})
                try:
                    await engine.start(watch)
                    for kind in kinds:
                        into[kind] = await _measure_kind(url, kind, args, engine, watch, ceilings[kind], say,
                                                         broker_pid, (args.rate or base_max.get(kind)) if args.loop else None)  # fmt: skip
                        if args.loop and kind not in base_max:
                            base_max[kind] = args.rate or float(into[kind]["max_msgs_per_s"])
                finally:
                    engine.stop()
            per_round.append(got)
    finally:
        await watch.stop()
    results.update(per_round[0])
    if args.loop:
        results["rounds"] = per_round
        results["loop_vs_plain"] = loop_ratios(per_round, kinds, transports)
    return results


def loop_ratios(per_round: list[dict[str, Any]], kinds: list[str], transports: list[str]) -> dict[str, Any]:
    """Per transport, message kind and load: the loop workload's engine CPU per event over the
    plain workload's, in each round (both at the same offered rate, on the same events but for
    the loop's), and the median; likewise the drains' maxima (loop over plain)."""
    import statistics

    out: dict[str, Any] = {}
    for transport in transports:
        for kind in kinds:
            def pick(rnd: dict[str, Any], w: str, t: str = transport, k: str = kind) -> dict[str, Any]:
                return dict(rnd[w][t][k] if len(transports) > 1 else rnd[w][k])

            key = f"{transport}/{kind}" if len(transports) > 1 else kind
            drains = [pick(rnd, "loop")["max_msgs_per_s"] / pick(rnd, "plain")["max_msgs_per_s"] for rnd in per_round]
            loads: dict[str, Any] = {}
            for i, frac in enumerate(LOADS):
                ratios = []
                for rnd in per_round:
                    p, lp = pick(rnd, "plain")["loads"][i], pick(rnd, "loop")["loads"][i]
                    ratios.append(lp["cpu_us_per_event"]["engine"] / p["cpu_us_per_event"]["engine"])
                loads[f"{frac:.0%}"] = {"engine_cpu_per_event_ratio": round(statistics.median(ratios), 3),
                                        "per_round": [round(x, 3) for x in ratios]}  # fmt: skip
            out[key] = {"loads": loads, "max_ratio": round(statistics.median(drains), 3),
                        "max_ratio_per_round": [round(x, 3) for x in drains]}  # fmt: skip
    return out


def batch_path(messages: dict[str, list[tuple[str, bytes]]], batch: int, rounds: int,
               folder: Path) -> dict[str, Any]:  # fmt: skip
    """CPU µs per event of the daemon's batch path over each workload's ``messages``, in
    micro-batches of ``batch`` messages: decode (``Decoder``), ``Core.process``, the SQLite
    commit with the outputs rendered as outbox rows (``Renderer``) and the previous batch's rows
    marked sent in it (as the outbox's PUBACKs are). No MQTT: what the loop costs the engine
    apart from publishing its extra outputs. ``rounds`` of each, interleaved (the order swapped
    every other round), each on a fresh state file; per round the parts (decode, core, commit)
    and the loop/plain ratio of the total, and the median ratio."""
    import gc
    import statistics

    from engine.campaigns import load_campaigns
    from engine.core import Core, CoreConfig
    from engine.daemon.pipeline import Decoder, Renderer, Topics
    from engine.stores.sqlite_store import SQLiteStore
    from fences.catalog import load_catalog
    from fences.index import FenceIndex
    from simulator.bench.workload import City

    fences, camps = City(CITY_SIDE).write(folder)
    index, campaigns = FenceIndex(load_catalog(fences)), load_campaigns(camps)
    topics = Topics()
    decoder, render = Decoder(topics), Renderer(topics)
    clock = time.process_time

    def run(workload: str, tag: str) -> dict[str, float]:
        store = SQLiteStore(folder / f"batch-{workload}-{batch}-{tag}.sqlite", render=render)
        core = Core(index, campaigns, store, CoreConfig(coupon_secret=LOOP_SECRET))  # type: ignore[arg-type]
        msgs = messages[workload]
        parts = [0.0, 0.0, 0.0]
        n_events = outputs = 0
        gc.collect()
        for i in range(0, len(msgs), batch):
            t0 = clock()
            events: list[Any] = []
            for topic, payload in msgs[i : i + batch]:
                events.extend(decoder(topic, payload))
            t1 = clock()
            outs = core.process(events)
            t2 = clock()
            rows = store.commit(outs)
            store.defer_sent([r.out_id for r in rows])  # acknowledged: marked in the next commit
            t3 = clock()
            gc.freeze()  # as the daemon does after each batch
            parts[0] += t1 - t0
            parts[1] += t2 - t1
            parts[2] += t3 - t2
            n_events += len(events)
            outputs += len(rows)
        store.close()
        us = [x / n_events * 1e6 for x in parts]
        return {"decode": round(us[0], 2), "core": round(us[1], 2), "commit": round(us[2], 2),
                "total": round(sum(us), 2), "outputs_per_event": round(outputs / n_events, 3)}  # fmt: skip

    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        got: dict[str, Any] = {w: run(w, f"r{r}") for w in (("plain", "loop") if r % 2 == 0 else ("loop", "plain"))}
        got["ratio"] = round(got["loop"]["total"] / got["plain"]["total"], 3)
        per_round.append(got)
    return {"batch_messages": batch, "rounds": per_round,
            "ratio_median": round(statistics.median(x["ratio"] for x in per_round), 3)}  # fmt: skip


def _in_process(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    count = int(10_000 * args.duration)
    messages = {w: _messages("single", "b", 500, count, "geopush/events", loop=w == "loop", share=args.loop_share)[0]
                for w in ("plain", "loop")}  # fmt: skip
    # and batch messages (BATCH events of one user each), as `--only batch` sends them
    n_batch = max(1, count // 10)
    batches = {w: _messages("batch", "b", 200, n_batch, "geopush/events", loop=w == "loop", share=args.loop_share)[0]
               for w in ("plain", "loop")}  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="geopush-batch-") as tmp:
        for batch in (16, 256):
            console.print(f"[batch path] {count:,} single-event messages, micro-batches of {batch}")
            results.append({"events_per_message": 1, **batch_path(messages, batch, max(1, args.rounds), Path(tmp))})
        console.print(f"[batch path] {n_batch:,} batch messages of {BATCH} events, micro-batches of 20")
        results.append({"events_per_message": BATCH, **batch_path(batches, 20, max(1, args.rounds), Path(tmp))})
    if args.json:
        print(json.dumps({"in_process": results, "messages": count, "batch_messages": n_batch,
                          "loop_share": args.loop_share}, indent=2))  # fmt: skip
        return 0
    t = Table(title=f"the daemon's batch path in one process, {count:,} single-event messages or "
                    f"{n_batch:,} of {BATCH} events, loop share {args.loop_share:g}: CPU µs per event")
    for col in ("messages x events", "round", "plain (decode/core/commit)", "loop (decode/core/commit)", "loop/plain"):
        t.add_column(col, justify="right")
    for res in results:
        size = f"{res['batch_messages']} x {res['events_per_message']}"
        for i, x in enumerate(res["rounds"]):
            p, lp = x["plain"], x["loop"]
            t.add_row(size, str(i + 1),
                      f"{p['total']} ({p['decode']}/{p['core']}/{p['commit']})",
                      f"{lp['total']} ({lp['decode']}/{lp['core']}/{lp['commit']})", f"{x['ratio']:.3f}")  # fmt: skip
        t.add_row(size, "median", "", "", f"{res['ratio_median']:.3f}")
    console.print(t)
    return 0


def _main(args: argparse.Namespace) -> int:
    if args.workers:  # the worker group over Redis instead (scale-out)
        from simulator.bench.workers import run_group_bench

        run_group_bench(args)
        return 0
    if not 0.0 <= args.loop_share <= 1.0:
        raise SystemExit(f"--loop-share must be between 0 and 1, not {args.loop_share:g}")
    if args.in_process:
        return _in_process(args)
    from rich.console import Console

    console = Console(stderr=True)
    say = console.print if not args.json else (lambda *a, **k: console.print(*a, **k))
    with tempfile.TemporaryDirectory(prefix="geopush-e2e-") as tmp:
        folder = Path(tmp)
        broker = None
        url = args.broker
        if url is None:
            from simulator.embedded_broker import MosquittoBroker

            extra = "max_inflight_messages 2000\nset_tcp_nodelay true\n" + ("user root\n" if os.geteuid() == 0 else "")
            broker = MosquittoBroker(extra_config=extra, max_queued_messages=0)
            broker.start()
            url = broker.url
        try:
            bpid = broker._proc.pid if broker is not None and broker._proc is not None else None  # noqa: SLF001
            results = asyncio.run(_bench(url, args, folder, say, bpid))
        finally:
            if broker is not None:
                broker.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for workload in results["workloads"]:
        r = results[workload] if args.loop else results
        what = f" - with redemptions and payments ({args.loop_share:.0%} of pushes)" if workload == "loop" else ""
        if args.transport == "both":
            for transport in ("fast", "plain"):
                _table(r[transport], console, f" - the {transport} MQTT path{what}")
        else:
            _table(r, console, f" - the {args.transport} MQTT path{what}")
    if args.loop:
        _ratio_table(results["loop_vs_plain"], len(results["rounds"]), console, args.loop_share)
    return 0


def _ratio_table(ratios: dict[str, Any], rounds: int, console: Any, share: float = 1.0) -> None:
    from rich.table import Table

    t = Table(title=f"loop ({share:.0%} of pushes redeemed and paid) / plain, same offered rates: engine "
                    f"CPU per event (median of {rounds} round(s))")
    for col in ("messages", "load", "ratio", "per round"):
        t.add_column(col, justify="right")
    for key, r in ratios.items():
        t.add_row(key, "max (drain rate)", f"{r['max_ratio']:.3f}", " ".join(f"{x:.3f}" for x in r["max_ratio_per_round"]))
        for load, x in r["loads"].items():
            t.add_row("", load, f"{x['engine_cpu_per_event_ratio']:.3f}", " ".join(f"{v:.3f}" for v in x["per_round"]))
    console.print(t)


def _table(r: dict[str, Any], console: Any, title: str = "") -> None:
    from rich.table import Table

    t = Table(title=f"geopush bench e2e (events/s; event-to-push latency){title}")
    for col in ("messages", "load", "events/s", "msgs/s", "p50 ms", "p99 ms", "vs ceiling"):
        t.add_column(col, justify="right")
    for kind in ("single", "batch"):
        if kind not in r:
            continue
        k = r[kind]
        t.add_row(kind, "max", f"{k['max_events_per_s']:,}", f"{k['max_msgs_per_s']:,}", "", "",
                  f"{k['ratio_to_ceiling']:.0%} of {k['ceiling_msgs_per_s']:,}")  # fmt: skip
        for row in k["loads"]:
            t.add_row("", f"{row['load']:.0%}", f"{row['achieved_events_per_s']:,}",
                      f"{row['achieved_msgs_per_s']:,}", f"{row['p50_ms']}", f"{row['p99_ms']}", "")  # fmt: skip
    console.print(t)
