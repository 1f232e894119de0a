"""The store catalog: a GeoJSON FeatureCollection of stores, validated, with constant-time
look-ups by store_id, BSSID, beacon id and NFC tag.

(Skeleton: the constructor and look-ups below are the contract other packages use; parsing and
validation, ``load_catalog`` / ``parse_catalog`` / ``validate``, live in this module too.)
"""

from __future__ import annotations

from collections.abc import Iterable

from fences.errors import UnknownStoreError
from fences.store import Store, beacon_key, bssid_key


class Catalog:
    """An ordered list of stores plus identifier look-ups. Positions are stable slot numbers."""

    def __init__(self, stores: Iterable[Store] = ()) -> None:
        self.stores: list[Store] = []
        self._by_id: dict[str, int] = {}
        self._by_bssid: dict[str, int] = {}
        self._by_beacon: dict[str, int] = {}
        self._by_nfc: dict[str, int] = {}
        for store in stores:
            self.add(store)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, store: Store) -> int:
        """Append a store; returns its slot. Replaces an existing store with the same id."""
        if store.store_id in self._by_id:
            return self.replace(store)
        slot = len(self.stores)
        self.stores.append(store)
        self._link(slot, store)
        return slot

    def replace(self, store: Store) -> int:
        slot = self.slot(store.store_id)
        self._unlink(self.stores[slot])
        self.stores[slot] = store
        self._link(slot, store)
        return slot

    def slot(self, store_id: str) -> int:
        try:
            return self._by_id[store_id]
        except KeyError:
            raise UnknownStoreError(store_id) from None

    def get(self, store_id: str) -> Store:
        return self.stores[self.slot(store_id)]

    def by_bssid(self, bssid: str) -> int | None:
        return self._by_bssid.get(bssid_key(bssid))

    def by_beacon(self, uuid: str, major: int | str, minor: int | str) -> int | None:
        return self._by_beacon.get(beacon_key(uuid, major, minor))

    def by_nfc(self, tag: str) -> int | None:
        return self._by_nfc.get(tag.strip())

    def _link(self, slot: int, store: Store) -> None:
        self._by_id[store.store_id] = slot
        for b in store.wifi:
            self._by_bssid[b] = slot
        for k in store.beacons:
            self._by_beacon[k] = slot
        for t in store.nfc:
            self._by_nfc[t] = slot

    def _unlink(self, store: Store) -> None:
        for table, keys in (
            (self._by_bssid, store.wifi),
            (self._by_beacon, store.beacons),
            (self._by_nfc, store.nfc),
        ):
            for k in keys:
                table.pop(k, None)
