"""The binary index kind: Hamming distance over packed bit strings (phash). Ray-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_actors.base import StoredIndex


class BinaryIndex(StoredIndex):
    """Hamming-distance index over packed bit strings (phash).

    A stored value may carry a second bit string behind the first (phash: the mirrored
    image's hash, which the duplicate finder compares); only the first is indexed and
    searched. Stores from before hold the first alone, and both kinds of value may mix.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, dim: int, **kwargs: Any) -> None:
        if dim % 8:
            raise ValueError(f"binary features need a multiple of 8 bits, got {dim}")
        super().__init__(path, dim, **kwargs)

    @property
    def width(self) -> int:
        """Bytes per hash."""
        return self.dim // 8

    @property
    def _stored_sizes(self) -> tuple[int, ...]:
        return (self.width, 2 * self.width)

    def _as_rows(self, features: Any) -> np.ndarray:
        arr = np.ascontiguousarray(features, dtype=self.dtype)
        arr = arr[None, :] if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[1] not in self._stored_sizes:
            raise ValueError(
                f"expected hashes of {self.width} bytes (or {2 * self.width} with the "
                f"mirrored hash), got shape {arr.shape}"
            )
        return arr

    def _indexable(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows[:, : self.width])

    def query_of(self, image_id: int) -> np.ndarray:
        """The stored hash (not its mirrored one: a search by a stored image is by it)."""
        return self.get(image_id)[None, : self.width]

    def _new_index(self) -> Any:
        return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.dim))

    def _read(self, path: str) -> Any:
        return faiss.read_index_binary(path)

    def _serialize(self, index: Any) -> np.ndarray:
        return faiss.serialize_index_binary(index)

    def _range(
        self, rows: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # FAISS keeps distances strictly below the radius; the API threshold is inclusive.
        return self.index.range_search(rows, int(threshold) + 1)
