"""One store's fence and identifiers, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

import shapely


@dataclass(frozen=True, slots=True)
class Store:
    """A store: a merchant's geofence plus its WiFi APs, beacons and NFC tags.

    Exactly one of (``center`` + ``radius_m``) or ``polygon`` is set:

    * circle: ``center`` is (lon, lat) in degrees, ``radius_m`` in metres (1 m .. 50 km), distances
      measured on the sphere (haversine, R = 6,371,008.8 m);
    * polygon: ``polygon`` is a shapely Polygon or MultiPolygon in lon/lat degrees, holes honoured.
      A polygon crossing the antimeridian is stored split into a MultiPolygon whose parts lie in
      [-180, 180].

    Identifiers are normalised at load time: BSSIDs lower-case ``aa:bb:cc:dd:ee:ff``; beacons
    ``UUID-UPPER-CASE:major:minor`` with decimal major/minor; NFC tags as given (stripped).
    """

    store_id: str
    merchant_id: str
    name: str = ""
    center: tuple[float, float] | None = None
    radius_m: float | None = None
    polygon: shapely.Geometry | None = None
    wifi: tuple[str, ...] = ()
    beacons: tuple[str, ...] = ()
    nfc: tuple[str, ...] = ()
    tz: str = "UTC"
    max_accuracy_m: float = 100.0
    tags: tuple[str, ...] = ()
    properties: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_circle(self) -> bool:
        return self.center is not None


def beacon_key(uuid: str, major: int | str, minor: int | str) -> str:
    """The normalised beacon id used in catalogs and events: ``UUID:major:minor``."""
    return f"{uuid.strip().upper()}:{int(major)}:{int(minor)}"


def bssid_key(bssid: str) -> str:
    """The normalised BSSID: lower-case, colon-separated (accepts '-' separators)."""
    return bssid.strip().lower().replace("-", ":")
