"""The NATS intake's per-message CPU cost, measured as the aiomqtt ceiling was (docs/scaling.md).

Starts a 3-node NATS cluster, queues N ~200-byte events over MQTT QoS 1 while no worker pulls,
then drains them with one ``JetStreamLink`` (all partitions; acknowledging each batch as the
engine does after its commit) and reports msg/s and the consumer process's CPU µs per message.

    python -m simulator.bench.jetstream_cost [N] [P]
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

from engine.transport.jetstream import JetStreamLink, parse_nats_urls
from engine.transport.mqtt import MqttLink, parse_broker_url
from simulator.bench.nats_cluster import NatsCluster


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(n: int, partitions: int) -> dict[str, float]:
    with NatsCluster(partitions=partitions) as c:

        def link() -> JetStreamLink:
            return JetStreamLink(
                parse_broker_url(c.mqtt_url(0)), nats_urls=parse_nats_urls(c.nats_urls),
                partitions=list(range(partitions)), partition_count=partitions,
                client_id="engine", clean_session=False, manual_ack=True, max_inflight_out=0,
            )  # fmt: skip

        eng = link()
        await eng.connect()  # creates the partitions' consumers (the stream keeps what they cover)
        await eng.disconnect()
        pub = MqttLink(parse_broker_url(c.mqtt_url(0)), client_id="phones", max_inflight_out=0)
        await pub.connect()
        body = b'{"type":"gps","user":"u%d","ts":1700000000.0,"lat":48.85,"lon":2.35,"acc":12.0,"pad":"'
        for k in range(0, n, 2000):
            await asyncio.gather(*[
                pub.publish_nowait(f"geopush/events/u{i % 5000}", body % i + b"x" * 90 + b'"}')
                for i in range(k, min(n, k + 2000))
            ])  # fmt: skip
        await pub.disconnect()
        eng = link()
        await eng.connect()
        c0, t0, got = _cpu(), time.perf_counter(), 0
        while got < n and await eng.wait_inbound(10):
            batch = eng.take(500)
            got += len(batch)
            eng.ack_many(batch)
        while eng.acks_pending:
            await asyncio.sleep(0)
        cpu, secs = _cpu() - c0, time.perf_counter() - t0
        await eng.disconnect()
    return {"messages": got, "msg_per_s": got / secs, "cpu_us_per_msg": 1e6 * cpu / max(got, 1)}


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    p = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    r = asyncio.run(measure(n, p))
    print(f"{r['messages']:.0f} messages: {r['msg_per_s']:,.0f} msg/s, consumer CPU "
          f"{r['cpu_us_per_msg']:.1f} µs/msg")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
