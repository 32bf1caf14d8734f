"""The blob index kind: opaque bytes per image in LMDB, nothing to search (thumbnails).
Ray-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from index_actors.interface import Hit, InvalidInput
from index_actors.store import FeatureStore

#: Largest value a blob feature may store: a thumbnail is tens of KB; more is a mistake.
MAX_BLOB_BYTES = 1 << 20


class BlobIndex:
    """Bytes by image id (a thumbnail's WebP file), kept, replaced and removed with the
    image; they are fetched by id (``docs``), never searched."""

    LIVE: tuple[str, ...] = ()
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, dim: int = 0, map_size: int = 1 << 36) -> None:
        self.path = Path(path)
        self.store = FeatureStore(self.path / "lmdb", map_size)
        self.live: dict[str, Any] = {}

    @property
    def count(self) -> int:
        """Number of stored values."""
        return self.store.count()

    def configure(self, **live: Any) -> None:
        """A blob store has no live settings."""
        if live:
            raise ValueError(f"not live settings: {sorted(live)}; a blob store has none")

    @staticmethod
    def _values(features: Any) -> list[bytes]:
        """The bytes of each value: one 1-D uint8 array, rows of a 2-D one, or a list or
        object array of them (Ray Data's ragged column)."""
        one = isinstance(features, np.ndarray) and features.ndim == 1 and features.dtype != object
        rows = [features] if one else list(features)
        values = [np.ascontiguousarray(row, np.uint8).tobytes() for row in rows]
        if any(not v or len(v) > MAX_BLOB_BYTES for v in values):
            raise ValueError(f"blob values must be 1 to {MAX_BLOB_BYTES} bytes")
        return values

    def add(self, ids: list[int], features: Any) -> int:
        """Store values (replacing), committed before this returns; the count."""
        values = self._values(features)
        if len(values) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(values)} values")
        self.store.put(zip(ids, values, strict=True))
        return len(ids)

    def remove(self, ids: list[int]) -> list[int]:
        """Forget ``ids``; returns those that were stored."""
        return self.store.delete(ids)

    def has(self, ids: list[int]) -> list[int]:
        """The stored ids among ``ids``."""
        return self.store.present(ids)

    def docs(self, ids: list[int]) -> dict[int, bytes]:
        """The stored bytes of those ``ids`` that have them."""
        got = self.store.get_many(ids)
        return {i: bytes(v) for i, v in zip(ids, got, strict=True) if v is not None}

    def _not_searchable(self) -> InvalidInput:
        return InvalidInput(f"{self.path.name} stores images for display; it cannot be searched")

    def search(self, queries: Any, k: int | None = 20, *args: Any, **kwargs: Any) -> list[Hit]:
        """Blobs are not searched."""
        raise self._not_searchable()

    def search_by_id(self, image_id: int, *args: Any, **kwargs: Any) -> list[Hit]:
        """Blobs are not searched."""
        raise self._not_searchable()

    def query_of(self, image_id: int) -> Any:
        """Blobs are not searched."""
        raise self._not_searchable()

    def describe(self) -> dict[str, Any]:
        """The count."""
        return {"count": self.count}

    def sample(self, n: int, seed: int = 0) -> Any:
        """Nothing to train."""
        raise ValueError(f"{self.path} takes no trained index")

    def adopt(self, trained: bytes | None, whitening: bytes | None) -> dict[str, Any]:
        """Nothing to train."""
        raise ValueError(f"{self.path} takes no trained index")

    def snapshot(self) -> bool:
        """Nothing derived to persist: LMDB is all of it."""
        return False

    def close(self) -> None:
        """Release the store."""
        self.store.close()
