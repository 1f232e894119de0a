"""User profiles (tags, opt-out) from a JSON Lines file.

One object per line: ``{"user": "u1", "tags": ["student", "coffee"], "opt_out": false}``
(``tags`` and ``opt_out`` optional; blank lines and lines starting with ``#`` skipped). A later line
for the same user replaces the earlier one. Profile *events* on the wire override the file for
that user from then on (see ``engine.core``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from engine.errors import ProfileError


class _ProfileLine(msgspec.Struct, forbid_unknown_fields=False):
    user: str
    tags: list[str] = []
    opt_out: bool = False


@dataclass(frozen=True, slots=True)
class Profile:
    tags: frozenset[str]
    opt_out: bool


class ProfileBook:
    """user -> Profile."""

    def __init__(self, profiles: dict[str, Profile] | None = None) -> None:
        self._p: dict[str, Profile] = dict(profiles or {})

    def get(self, user: str) -> Profile | None:
        return self._p.get(user)

    def __len__(self) -> int:
        return len(self._p)

    def __contains__(self, user: object) -> bool:
        return user in self._p


_DECODER = msgspec.json.Decoder(_ProfileLine)


def load_profiles(path: str | os.PathLike[str]) -> ProfileBook:
    """Read a profiles .jsonl; raise ``ProfileError`` naming every bad line (up to 50)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{p}: cannot read profiles file ({exc})") from exc
    out: dict[str, Profile] = {}
    problems: list[str] = []
    for no, line in enumerate(data.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(b"#"):
            continue
        try:
            rec = _DECODER.decode(s)
        except msgspec.DecodeError as exc:
            problems.append(f"line {no}: {exc}")
            continue
        if not rec.user:
            problems.append(f"line {no}: empty user")
            continue
        out[rec.user] = Profile(frozenset(rec.tags), rec.opt_out)
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ProfileError(
            f"{p}: {len(problems)} bad line(s); each line must be an object like "
            f'{{"user": "u1", "tags": ["a"], "opt_out": false}}:\n  {shown}{more}'
        )
    return ProfileBook(out)
