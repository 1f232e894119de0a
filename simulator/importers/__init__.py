"""Importers of real location traces into geopush's trace format.

The trace format is JSONL: one event per line, exactly the bytes of ``engine.events.encode_event``
(the same JSON as on the wire), sorted by ``ts`` (stable, so simultaneous events keep their input
order). Each importer is a plain function returning ``list[Event]``; ``engine.traces.write_trace``
writes them.

==================  ========================================================================
owntracks           ``load_owntracks(path, user=, device=)``: OwnTracks JSON messages
csv_trace           ``load_csv(path, default_acc=)``: CSV ``user,ts,lat,lon[,acc]``
geolife             ``load_geolife(path, acc=)``: GeoLife ``.plt`` files or a ``Data/`` tree
beacon_rooms        ``load_beacon_rooms(path)``: iBeacon scanner logs -> catalog, trace, truth
==================  ========================================================================

Every importer raises ``TraceImportError`` (a ``GeopushError``, so the CLI prints it without a
traceback) naming the file and line of the first bad record and what to do about it.
"""

from __future__ import annotations

from engine.errors import TraceImportError

__all__ = ["TraceImportError"]
