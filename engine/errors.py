"""Errors raised by geopush's engine.

Every failure that leaves an engine module is a ``GeopushError``; foreign exceptions (aiomqtt,
sqlite3, redis, msgspec, OSError) are translated where they enter, ``raise X(...) from exc``.

    GeopushError
    ├── ConfigError            bad flag, config file or environment variable
    ├── DecodeError            an incoming message is not a valid event (carries ``reason``)
    ├── CampaignError          a campaign file is invalid (carries the list of problems)
    ├── ProfileError           a profiles file is invalid
    ├── StateError             the durable state store failed (SQLite, Redis)
    ├── TransportError         the MQTT connection failed (wraps aiomqtt.MqttError)
    ├── TraceImportError       a trace file cannot be read or imported (names file and line)
    └── ReportError            `geopush report`'s source is not replay outputs nor a state file

fences/ keeps its own root, ``fences.FencesError`` (fences knows nothing of the engine); it is
re-exported here and the CLI reports both kinds without a traceback.
"""

from __future__ import annotations

from fences.errors import FencesError


class GeopushError(Exception):
    """Root of every error geopush raises on purpose."""


class ConfigError(GeopushError):
    """A flag, config file or GEOPUSH_* variable is invalid."""


class DecodeError(GeopushError):
    """An incoming message is not a valid event; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CampaignError(GeopushError):
    """A campaign file is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid campaigns:\n  " + "\n  ".join(problems))
        self.problems = problems


class ProfileError(GeopushError):
    """A profiles file is invalid."""


class StateError(GeopushError):
    """The durable state store failed."""


class TransportError(GeopushError):
    """The MQTT transport failed."""


class TraceImportError(GeopushError):
    """A trace file cannot be imported; the message names the file, the line and the fix."""


class ReportError(GeopushError):
    """The source of a report cannot be read (engine/report.py); the message says what to give."""


__all__ = [
    "CampaignError",
    "ConfigError",
    "DecodeError",
    "FencesError",
    "GeopushError",
    "ProfileError",
    "ReportError",
    "StateError",
    "TraceImportError",
    "TransportError",
]
