"""Command registration (stub: the owner of this module replaces it)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommand(s) to ``sub``."""
