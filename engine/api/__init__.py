"""geopush's HTTP API (``geopush run --http HOST:PORT``), served by a process of its own that
the daemon supervises (``process``).

Layout (FastAPI is imported only by the modules that need it, so the daemon and ``geopush
--help`` do not pay for it when the API is off):

* ``state``    the API's durable tables in the daemon's SQLite state file: store changes made
               live and hashed tokens (no FastAPI);
* ``live``     the store catalog as the API sees it: validation (fences/), merchant scoping,
               changes applied to the live fence index and persisted, and the overlay of the
               persisted changes on the catalog file at start-up and on reload (no FastAPI);
* ``visits``   merchants' visit events: the visit log copied from the outbox (history, resume,
               open visits) and ``VisitHub``, the live fan-out to SSE streams (no FastAPI);
* ``campaigns`` campaigns as the API sees them: validated as the campaign file, versioned with
               their authors (table ``api_campaigns``), scoped to a merchant, swapped into the
               core live, laid over the campaign file at start-up and on reload (no FastAPI);
* ``forecast`` what-if: a trace replayed against a snapshot with one campaign as proposed;
* ``app``      ``create_app(settings, target)``: the FastAPI application (lifespan, routers,
               error mapping);
* ``deps``     authentication as dependencies (``CurrentPrincipal``, ``OperatorPrincipal``);
* ``models``   pydantic models of the JSON bodies (stores are GeoJSON Features, as in the file);
* ``routers/`` one router per resource (stores, tokens, campaigns);
* ``server``   ``ApiServer``: uvicorn over a fence target in this process (the API's process,
               tests);
* ``process``  the API's process: ``ApiProcess`` (the daemon's side: start, restart, stop,
               redemptions relayed to its MQTT link) and the child's ``child_main``;
* ``follow``   ``StateFollower``: the engine applies the changes the API's process persisted,
               between two micro-batches (no FastAPI);
* ``cli``      ``geopush tokens create|list|revoke`` and ``geopush stores export``.

Docs: docs/api.md.
"""
