"""``--start``: one parser and one help text for `geopush simulate city` and `geopush demo`.

A start is either a time of day of the simulated day (``12``, ``12.5``, ``12:30``, ``12:30:15``;
UTC hours, 0-24) or, where a trace needs an absolute start (`simulate city`), an instant: an
ISO-8601 date-time (``2026-03-02T12:00``, ``...Z`` or ``+01:00``; naive means UTC) or epoch
seconds (``1772452800``). No heavy imports: it runs while argparse reads the command line.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from datetime import UTC, datetime

# A plain number at or above this is epoch seconds (1973-03-03); up to 24 it is an hour.
_EPOCH_MIN = 1e8

START_FORMS = (
    "a time of day of the simulated day, UTC: 12, 12.5, 12:30 or 12:30:15 (hours 0-24)"
)
START_FORMS_ABSOLUTE = (
    START_FORMS + "; or an instant: an ISO-8601 date-time (2026-03-02T12:00, naive = UTC, or "
    "with Z / +01:00) or epoch seconds (1772452800)"
)


@dataclass(frozen=True)
class Start:
    """What ``--start`` said: ``hour`` (time of day, 0-24) and, for an instant, ``epoch``."""

    hour: float
    epoch: float | None = None

    @property
    def absolute(self) -> bool:
        return self.epoch is not None


def _hour_of_day(epoch: float) -> float:
    return (epoch % 86400.0) / 3600.0


def parse_start(text: str) -> Start:
    """Parse a ``--start`` value (see the module docstring); ValueError says what is accepted."""
    s = text.strip()
    bad = f"--start {text!r}: expected {START_FORMS_ABSOLUTE}"
    if not s:
        raise ValueError(bad)
    if ":" in s and "-" not in s and "T" not in s.upper():  # HH:MM or HH:MM:SS
        parts = s.split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise ValueError(bad) from None
        if len(nums) > 3 or any(n < 0 or not math.isfinite(n) for n in nums) or any(
            n >= 60 for n in nums[1:]
        ):
            raise ValueError(bad)
        hour = sum(n / 60**i for i, n in enumerate(nums))
        if hour > 24:
            raise ValueError(f"--start {text!r}: a time of day is at most 24:00")
        return Start(hour=hour)
    try:
        x = float(s)
    except ValueError:
        x = None
    if x is not None:
        if not math.isfinite(x) or x < 0:
            raise ValueError(bad)
        if x <= 24:
            return Start(hour=x)
        if x >= _EPOCH_MIN:
            return Start(hour=_hour_of_day(x), epoch=x)
        raise ValueError(
            f"--start {text!r}: neither an hour of the day (0-24) nor epoch seconds "
            f"(>= {_EPOCH_MIN:.0f}); expected {START_FORMS_ABSOLUTE}"
        )
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(bad) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    epoch = dt.timestamp()
    return Start(hour=_hour_of_day(epoch), epoch=epoch)


def start_arg(absolute: bool) -> object:
    """An argparse ``type=`` for ``--start``: any form, or (``absolute=False``) a time of day
    only, with a message that says which forms the command takes."""

    def parse(text: str) -> Start:
        try:
            start = parse_start(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--start {text!r}: ")) from exc
        if start.absolute and not absolute:
            raise argparse.ArgumentTypeError(
                f"this command plays a window of the simulated day: give {START_FORMS}, not an "
                "instant"
            )
        return start

    parse.__name__ = "start"  # argparse names the type in its messages
    return parse


__all__ = ["START_FORMS", "START_FORMS_ABSOLUTE", "Start", "parse_start", "start_arg"]
