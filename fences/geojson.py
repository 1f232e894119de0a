"""RFC 7946 structure checks for any GeoJSON object, each problem a sentence a person can act on.

This is the layer under the catalog validator (fences.catalog adds the store rules: ids, radius,
ranges, self-intersections). It follows the RFC's MUSTs and deliberately accepts what the RFC only
discourages (SHOULD / SHOULD NOT), because rejecting a store for style would lose it:

* rings in either winding order (RFC 7946 §3.1.6: parsers SHOULD NOT reject by winding);
* positions with more than three elements (§3.1.1: SHOULD NOT; extra elements are ignored);
* GeometryCollections that are nested or hold a single geometry (§3.1.8: SHOULD avoid);
* coordinates with excessive precision; foreign members (§6.1).

Not accepted: anything a MUST forbids, including members that change a type's meaning (§7.1:
a Feature with ``coordinates`` or ``features``, a FeatureCollection with ``properties`` ...).
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
TYPES = (*GEOMETRY_TYPES, "Feature", "FeatureCollection")

# RFC 7946 §7.1: members that would change the meaning of an object of this kind.
_FORBIDDEN = {
    "FeatureCollection": ("coordinates", "geometries", "geometry", "properties"),
    "Feature": ("coordinates", "geometries", "features"),
    "geometry": ("geometry", "properties", "features"),
}
# How deep a geometry's coordinates nest down to positions (a position is depth 0).
_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}

# A badly nested geometry can yield a problem per number; the first few say what to fix.
_MAX_PER_GEOMETRY = 5


class DuplicateKeyError(ValueError):
    """A JSON object repeats a member name, so parsers disagree on its value."""


@dataclass(frozen=True, slots=True)
class DuplicateMember:
    """A member name repeated in one JSON object: where its second occurrence starts (1-based
    line and column, in characters) and the path of the object holding it (keys and array
    positions from the root, e.g. ``("features", 3, "properties")``)."""

    line: int
    column: int
    key: str
    path: tuple[str | int, ...]

    def __str__(self) -> str:
        return (
            f"line {self.line} column {self.column}: an object contains the member {self.key!r} "
            "twice, so readers disagree on its value; keep only one"
        )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKeyError(
            f"an object contains the member {dup!r} twice, so readers disagree on its value; "
            "keep only one"
        )
    return obj


def loads(text: str | bytes) -> Any:
    """json.loads that refuses duplicate member names (raises DuplicateKeyError, whose message
    gives the line and column of the first repeat)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except DuplicateKeyError as exc:
        dups = duplicate_members(text)
        if dups:
            raise DuplicateKeyError(str(dups[0])) from exc
        raise


def loads_all(text: str | bytes) -> tuple[Any, list[DuplicateMember]]:
    """json.loads (the last of repeated members wins, as in most readers) plus every repeated
    member, located. Raises json.JSONDecodeError / UnicodeDecodeError on bad text."""
    repeated = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        obj = dict(pairs)
        if len(obj) != len(pairs):
            repeated = True
        return obj

    obj = json.loads(text, object_pairs_hook=hook)
    return obj, (duplicate_members(text) if repeated else [])


_WS = re.compile(r"[ \t\n\r]*")


def duplicate_members(text: str | bytes) -> list[DuplicateMember]:
    """Every repeated member name in a JSON text that parses (the slow part of a strict check,
    run only once a repeat is known to exist): a walk over the objects; arrays holding no object
    are skipped whole."""
    if isinstance(text, bytes):
        text = text.decode(json.detect_encoding(text))  # as json.loads reads bytes
    text = text.removeprefix("\ufeff")
    decoder = json.JSONDecoder()
    scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]
    found: list[tuple[int, str, tuple[str | int, ...]]] = []

    def ws(i: int) -> int:
        m = _WS.match(text, i)
        return m.end() if m else i

    def value(i: int, path: tuple[str | int, ...]) -> int:
        i = ws(i)
        c = text[i]
        if c == "{":
            return obj(i + 1, path)
        if c == "[":
            _, end = decoder.raw_decode(text, i)
            if "{" not in text[i:end]:
                return int(end)
            return arr(i + 1, path)
        if c == '"':
            return int(scanstring(text, i + 1)[1])
        return int(decoder.raw_decode(text, i)[1])

    def obj(i: int, path: tuple[str | int, ...]) -> int:
        seen: set[str] = set()
        i = ws(i)
        if text[i] == "}":
            return i + 1
        while True:
            i = ws(i)
            start = i
            key, i = scanstring(text, i + 1)
            if key in seen:
                found.append((start, key, path))
            seen.add(key)
            i = ws(i) + 1  # the ':'
            i = ws(value(i, (*path, key)))
            if text[i] == "}":
                return i + 1
            i += 1  # the ','

    def arr(i: int, path: tuple[str | int, ...]) -> int:
        i = ws(i)
        if text[i] == "]":
            return i + 1
        n = 0
        while True:
            i = ws(value(i, (*path, n)))
            n += 1
            if text[i] == "]":
                return i + 1
            i += 1

    value(0, ())
    out = []
    for pos, key, path in found:
        line = text.count("\n", 0, pos) + 1
        out.append(DuplicateMember(line, pos - (text.rfind("\n", 0, pos) + 1) + 1, key, path))
    return out


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def is_number(value: object) -> bool:
    """A JSON number: int or float (numpy scalars too, for catalogs built in Python), not bool."""
    if type(value) is float or type(value) is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def position_problem(pos: object) -> str | None:
    """Why ``pos`` is not a GeoJSON position, or None."""
    if not isinstance(pos, list | tuple):
        return f"position should be an array [lon, lat], is {type_name(pos)} instead"
    if len(pos) < 2:
        return f"position {_short(pos)} has {len(pos)} element(s); write it as [lon, lat]"
    for c in pos:
        if not is_number(c):
            return (
                f"position {_short(pos)} contains {type_name(c)}; each element of a position "
                "must be a number (no quotes)"
            )
    return None


def _short(value: object) -> str:
    text = json.dumps(value, allow_nan=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _bbox_problem(obj: Mapping[str, Any]) -> str | None:
    if "bbox" not in obj:
        return None
    bbox = obj["bbox"]
    if not isinstance(bbox, list):
        return f"bbox must be an array of numbers, but is {type_name(bbox)}; write [west, south, east, north]"
    if not all(is_number(v) for v in bbox):
        return "each element of bbox must be a number; remove quotes or nulls"
    if len(bbox) not in (4, 6):
        return f"bbox has {len(bbox)} elements; it must have 4 (2D) or 6 (3D)"
    return None


def coordinates_problems(kind: str, coords: object, where: str = "") -> list[str]:
    """Structure problems of ``coords`` for a geometry of type ``kind`` (not GeometryCollection)."""
    prefix = f"{where}: " if where else ""
    out: list[str] = []
    _walk(kind, coords, _DEPTH[kind], [], out)
    return [prefix + p for p in out]


def _walk(kind: str, value: object, depth: int, path: list[int], out: list[str]) -> None:
    here = "coordinates" + "".join(f"[{i}]" for i in path)
    if depth == 0:
        problem = position_problem(value)
        if problem:
            if is_number(value):
                problem = (
                    "a number was found where a position [lon, lat] was expected: "
                    "this needs to be nested more deeply"
                )
            out.append(f"{here}: {problem}")
        return
    if not isinstance(value, list | tuple):
        if is_number(value):
            out.append(
                f"a number was found at {here} where {kind} needs arrays nested "
                f"{depth} level(s) deeper; check the brackets"
            )
        else:
            out.append(f"{here} should be an array, is {type_name(value)} instead")
        return
    for i, child in enumerate(value):
        if len(out) >= _MAX_PER_GEOMETRY:
            return
        _walk(kind, child, depth - 1, [*path, i], out)
    if out:
        return
    if depth == 1 and kind in ("LineString", "MultiLineString") and len(value) < 2:
        out.append(f"{here}: a line needs two or more positions, has {len(value)}")
    if depth == 1 and kind in ("Polygon", "MultiPolygon"):
        out.extend(f"{here}: {p}" for p in ring_problems(value))


def ring_problems(ring: Sequence[Any]) -> list[str]:
    """A linear ring must have >= 4 positions and end where it starts (RFC 7946 §3.1.6)."""
    out: list[str] = []
    if len(ring) < 4:
        out.append(
            f"a linear ring needs four or more positions (three corners plus the first repeated "
            f"at the end), has {len(ring)}"
        )
    if ring and tuple(ring[0]) != tuple(ring[-1]):
        out.append(
            f"ring is not closed: its last position {_short(ring[-1])} differs from its first "
            f"{_short(ring[0])}; repeat the first position at the end"
        )
    return out


def geometry_problems(geom: object, where: str = "geometry") -> list[str]:
    """RFC 7946 structure problems of one geometry object."""
    if not isinstance(geom, dict):
        return [f"{where} must be a geometry object, is {type_name(geom)} instead"]
    out: list[str] = []
    kind = geom.get("type")
    if kind not in GEOMETRY_TYPES:
        return [f"{where}: {_type_problem(geom, GEOMETRY_TYPES)}"]
    for member in _FORBIDDEN["geometry"]:
        if member in geom:
            out.append(
                f"{where}: a geometry object must not contain a {member!r} member (RFC 7946 §7.1); remove it"
            )
    bbox = _bbox_problem(geom)
    if bbox:
        out.append(f"{where}: {bbox}")
    if kind == "GeometryCollection":
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            out.append(
                f'{where}: a GeometryCollection needs a "geometries" array, has {type_name(parts)}'
            )
        else:
            for i, part in enumerate(parts):
                out.extend(geometry_problems(part, f"{where}.geometries[{i}]"))
        return out
    if "coordinates" not in geom:
        out.append(f'{where}: "coordinates" member required for a {kind}')
        return out
    out.extend(coordinates_problems(kind, geom["coordinates"], where))
    return out


def _type_problem(obj: Mapping[str, Any], allowed: tuple[str, ...]) -> str:
    if "type" not in obj:
        return '"type" member required'
    kind = obj["type"]
    if not isinstance(kind, str):
        return f'"type" member should be a string, but is {type_name(kind)} instead'
    for a in allowed:
        if kind.lower() == a.lower():
            return f"type {kind!r} is not {a!r}: GeoJSON type names are case-sensitive; write {a!r}"
    return f"type {kind!r} is not one of {', '.join(allowed)}"


def feature_problems(feature: object, where: str = "feature") -> list[str]:
    if not isinstance(feature, dict):
        return [f"{where} must be an object, is {type_name(feature)} instead"]
    if feature.get("type") != "Feature":
        return [f"{where}: {_type_problem(feature, ('Feature',))}"]
    out: list[str] = []
    for member in _FORBIDDEN["Feature"]:
        if member in feature:
            out.append(
                f"{where}: a Feature must not contain a {member!r} member (RFC 7946 §7.1); remove it or move it into geometry"
            )
    if "id" in feature and not (isinstance(feature["id"], str) or is_number(feature["id"])):
        out.append(f'{where}: "id" must be a string or a number, is {type_name(feature["id"])}')
    bbox = _bbox_problem(feature)
    if bbox:
        out.append(f"{where}: {bbox}")
    if "properties" not in feature:
        out.append(f'{where}: "properties" member required (use {{}} or null when empty)')
    elif feature["properties"] is not None and not isinstance(feature["properties"], dict):
        out.append(
            f'{where}: "properties" should be an object, is {type_name(feature["properties"])}'
        )
    if "geometry" not in feature:
        out.append(f'{where}: "geometry" member required (null when unlocated)')
    elif feature["geometry"] is not None:
        out.extend(geometry_problems(feature["geometry"], f"{where}.geometry"))
    return out


def lint(obj: object) -> list[str]:
    """Every RFC 7946 structure problem of a parsed GeoJSON object (empty when it is fine)."""
    if not isinstance(obj, dict):
        return [f"the root of a GeoJSON document must be an object, is {type_name(obj)} instead"]
    kind = obj.get("type")
    if kind == "FeatureCollection":
        out: list[str] = []
        for member in _FORBIDDEN["FeatureCollection"]:
            if member in obj:
                out.append(
                    f"a FeatureCollection must not contain a {member!r} member (RFC 7946 §7.1); remove it"
                )
        bbox = _bbox_problem(obj)
        if bbox:
            out.append(bbox)
        features = obj.get("features")
        if "features" not in obj:
            out.append('"features" member required (an array, [] when empty)')
        elif not isinstance(features, list):
            out.append(f'"features" should be an array, is {type_name(features)} instead')
        else:
            for i, f in enumerate(features):
                out.extend(feature_problems(f, f"feature {i}"))
        return out
    if kind == "Feature":
        return feature_problems(obj)
    if kind in GEOMETRY_TYPES:
        return geometry_problems(obj)
    return [_type_problem(obj, TYPES)]


def lint_text(text: str | bytes) -> list[str]:
    """Parse then lint; JSON syntax errors and duplicate members are problems too."""
    try:
        obj, dups = loads_all(text)
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        return [f"not valid JSON: {exc}; fix the syntax"]
    if isinstance(obj, float) and not math.isfinite(obj):
        return ["the root of a GeoJSON document must be an object"]
    return [str(d) for d in dups] + lint(obj)
