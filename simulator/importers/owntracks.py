"""OwnTracks message files -> events via ``engine.events.decode_owntracks``.

Accepted layouts:

* one JSON document: a single message (pretty-printed or not) or a JSON array of messages;
* JSON Lines: one message per line;
* OwnTracks Recorder ``.rec`` lines ``TIME<TAB>TOPIC-ish<TAB>{json}``: the JSON after the last tab.

The user (and device) come from ``user=`` / ``device=``; when ``user`` is not given, each message
must carry a ``topic`` (``owntracks/USER/DEVICE``, as in HTTP mode). Messages that carry no
location (cmd, card, waypoint(s), configuration, lwt, ...: reason ``ignored_type``) and
transitions without a position are skipped and counted in ``stats``; any other bad message raises
``TraceImportError`` with its line number.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from engine.errors import DecodeError
from engine.events import Event, decode_owntracks

from . import TraceImportError

SKIPPED_REASONS = frozenset({"ignored_type"})


def load_owntracks(
    path: str | os.PathLike[str],
    *,
    user: str | None = None,
    device: str = "phone",
    stats: Counter[str] | None = None,
) -> list[Event]:
    """Events from a file of OwnTracks messages (see module doc for layouts and skipping)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceImportError(f"cannot read {p}: {exc}") from exc
    stats = Counter() if stats is None else stats
    out: list[Event] = []
    for line, msg in _messages(p, text):
        out.extend(_one(p, line, msg, user, device, stats))
    return out


def _messages(p: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, message) pairs; a whole-file document counts as line 1 (array: item i)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    else:
        if isinstance(doc, list):
            return [(1, m) for m in doc]
        return [(1, doc)]
    out: list[tuple[int, Any]] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        raw = raw.strip()
        if not raw:
            continue
        if "\t" in raw:  # OwnTracks Recorder: TIME \t TOPIC \t JSON
            raw = raw.rsplit("\t", 1)[1].strip()
        try:
            out.append((no, json.loads(raw)))
        except json.JSONDecodeError as exc:
            raise TraceImportError(
                f"{p}:{no}: not JSON ({exc.msg}); expected one OwnTracks message per line, "
                "or one JSON document (object or array) for the whole file"
            ) from exc
    return out


def _one(
    p: Path, line: int, msg: Any, user: str | None, device: str, stats: Counter[str]
) -> list[Event]:
    who = user
    if who is None:
        topic = msg.get("topic") if isinstance(msg, dict) else None
        parts = topic.split("/") if isinstance(topic, str) else []
        if len(parts) >= 3:
            who, device = parts[-2], parts[-1]
    try:
        evs = decode_owntracks(json.dumps(msg).encode(), user=who or "?", device=device)
    except DecodeError as exc:
        if exc.reason in SKIPPED_REASONS:
            stats[exc.reason] += 1
            return []
        raise TraceImportError(f"{p}:{line}: {exc.reason}: {exc.detail}") from exc
    if who is None and evs:
        raise TraceImportError(
            f"{p}:{line}: message has no topic naming its user; pass user= (--user)"
        )
    if not evs:
        stats["no_position"] += 1
    stats["messages"] += 1
    return evs
