"""The binary index kind: Hamming distance over packed bit strings (phash). Ray-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_actors.base import StoredIndex


class BinaryIndex(StoredIndex):
    """Hamming-distance index over packed bit strings (phash)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, dim: int, **kwargs: Any) -> None:
        if dim % 8:
            raise ValueError(f"binary features need a multiple of 8 bits, got {dim}")
        super().__init__(path, dim, **kwargs)

    @property
    def width(self) -> int:
        """Bytes per hash."""
        return self.dim // 8

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
