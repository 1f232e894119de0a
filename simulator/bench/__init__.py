"""Benchmark harnesses and load generators behind ``geopush bench …``.

They drive the engine from outside (as Tile38 keeps ``cmd/tile38-benchmark`` apart from the
server): ``match`` (fences), ``replay`` (the offline core), ``e2e`` and ``workers`` (the daemon over
a real broker), with ``pub`` and ``workload`` generating the load and ``redis_server`` starting a
throw-away Redis. engine/ never imports this package.
"""
