"""The feature kinds as objects: binary, vector, keypoints, text, blob (Ray-free).

A kind owns what differs between them: its index class, its per-search options and their
validation, what an empty query is, how its distances and thresholds convert for the original
services' routes, and its empty column in batch ingest. This is the one module that compares
a kind's name; everything else asks the kind object (``kind_of``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field

from extractors import REGISTRY
from extractors.keypoint_pack import keypoint_count
from extractors.textdoc import decode_doc, doc_text, encode_doc, words
from index_actors.binary import BinaryIndex
from index_actors.blob import BlobIndex
from index_actors.interface import Index, InvalidInput
from index_actors.keypoints import KeypointIndex
from index_actors.store import numbered
from index_actors.text import TextFeatureIndex
from index_actors.vector import VectorIndex


class NoOptions(BaseModel):
    """A kind without per-search options."""


def _blank(value: Any) -> Any:
    """An empty value is an unset one, as the original services read their fields."""
    return None if isinstance(value, str) and not value.strip() else value


#: Marks an optional field whose empty value ("", as forms and query strings send) is unset.
Blank = BeforeValidator(_blank)
#: Constrained option types; the constraint sits inside the ``| None`` so that it travels
#: with the type into FastAPI's form and query parameters.
Count = Annotated[Annotated[int, Field(ge=0, lt=2**63)] | None, Blank]
Positive = Annotated[Annotated[float, Field(ge=0, allow_inf_nan=False)] | None, Blank]


class VectorOptions(BaseModel):
    """Alpha query expansion (inner-product features): the query averaged with its ``aqe_n``
    nearest stored vectors, weighted by similarity^``aqe_alpha``."""

    aqe_n: Annotated[Annotated[int, Field(ge=0, le=100)] | None, Blank] = None
    aqe_alpha: Positive = None


class KeypointOptions(BaseModel):
    """The original local-features service's matching parameters."""

    k_clusters: Annotated[Annotated[int, Field(ge=1, le=100)] | None, Blank] = None
    knn_min_matches: Count = None
    matching_threshold: Positive = None
    use_smnn_matching: Count = None
    smnn_match_threshold: Positive = None
    use_ransac: Count = None


class Kind:
    """What one feature kind is; one instance per kind."""

    name: ClassVar[str]
    index: ClassVar[type[Index]]
    options: ClassVar[type[BaseModel]] = NoOptions
    #: Compares images: a source of fused image search (all but text).
    visual: ClassVar[bool] = True
    #: Answers a text query with its own index (text), not through an embedding.
    reads_text: ClassVar[bool] = False
    #: What a query without anything to match lacks, for the 422 message.
    lacks: ClassVar[str] = ""
    #: Groups near-duplicates over the whole collection (``GET /duplicates``).
    groups: ClassVar[bool] = False

    def open(self, path: str | Path, dim: int, **options: Any) -> Index:
        """This kind's index, opened (or created) at ``path``."""
        opened: Index = self.index(path, dim, **options)  # type: ignore[call-arg]
        return opened

    def fixed(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Index options that need a new index actor when they change (all but live ones)."""
        return {k: v for k, v in options.items() if k not in self.index.LIVE}

    def live(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Index options that change in place (``configure``)."""
        return {k: v for k, v in options.items() if k in self.index.LIVE}

    def index_options(
        self, metric: str, options: Mapping[str, Any], dsn: str | None, table: str
    ) -> dict[str, Any]:
        """A feature's index options from its config (``metric``: its extractor's)."""
        return dict(options)

    def search_options(
        self, values: BaseModel | Mapping[str, Any], metric: str, seed: bool = False
    ) -> dict[str, Any]:
        """The options of one search this kind's index takes, from validated request fields
        (``self.options``' fields; others are ignored). ``seed``: the original service's
        defaults for what is unset."""
        return {}

    def is_empty(self, query: np.ndarray) -> bool:
        """Whether a query feature has nothing to match (no keypoint, no word)."""
        return False

    def seed_threshold(self, threshold: float, metric: str = "") -> float:
        """The original routes' strict ``distance < threshold`` as our inclusive one."""
        return float(np.nextafter(threshold, -np.inf))

    def seed_entry(self, entry: dict[str, Any], metric: str = "") -> dict[str, Any]:
        """One result as the original service listed it."""
        return entry

    def ingest_column(self, rows: int, width: int, dtype: Any) -> np.ndarray:
        """An empty ingest column for ``rows`` files; a failed file keeps its empty row."""
        return np.zeros((rows, width), dtype=dtype)

    def group_threshold(self, threshold: float | None, default: float) -> float:
        """The distance within which two images are grouped (``default``: the app's
        near-duplicate threshold), checked: ``InvalidInput`` out of range."""
        raise InvalidInput(f"{self.name} features cannot group duplicates")

    def pairs(
        self, ids: np.ndarray, rows: Any, threshold: float, metric: str, dim: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of stored images within ``threshold`` (each once, smaller id first),
        from the stored features as ``IndexClient.stored`` gives them (``dim``: the
        index's width, bits for binary features)."""
        raise InvalidInput(f"{self.name} features cannot group duplicates")

    def stored_feature(self, raw: bytes) -> np.ndarray:
        """A value of this kind's LMDB store as the feature ``add`` takes (resharding)."""
        return np.frombuffer(raw, self.index.dtype).copy()  # type: ignore[attr-defined]


class BinaryKind(Kind):
    """Packed bit strings under Hamming distance (phash)."""

    name = "binary"
    index = BinaryIndex

    def seed_threshold(self, threshold: float, metric: str = "") -> float:
        """Integer distances: ``d < t`` is ``d <= ceil(t) - 1``."""
        return float(np.ceil(threshold) - 1)

    groups = True

    def group_threshold(self, threshold: float | None, default: float) -> float:
        """A whole number of bits, 0 to ``MAX_BINARY_THRESHOLD`` (the exact search's range)."""
        from index_actors.duplicates import MAX_BINARY_THRESHOLD

        value = default if threshold is None else threshold
        if value != int(value) or not 0 <= value <= MAX_BINARY_THRESHOLD:
            raise InvalidInput(
                f"threshold must be a whole number of bits from 0 to {MAX_BINARY_THRESHOLD}, "
                f"got {value:g}"
            )
        return value

    def pairs(
        self, ids: np.ndarray, rows: Any, threshold: float, metric: str, dim: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hamming pairs, mirrored copies included where the mirrored hash is stored."""
        from index_actors.duplicates import binary_pairs

        width = dim // 8
        if isinstance(rows, np.ndarray):
            hashes, mirrored = rows[:, :width], rows.shape[1] == 2 * width
            mirrors = rows[:, width:] if mirrored else None
            has_mirror = np.full(len(rows), True) if mirrored else None
        else:  # values of both widths (a store from before mirrored hashes, added to since)
            hashes = np.stack([r[:width] for r in rows])
            has_mirror = np.asarray([len(r) == 2 * width for r in rows])
            mirrors = np.stack([r[width:] if len(r) == 2 * width else r[:width] for r in rows])
        return binary_pairs(ids, hashes, int(threshold), mirrors, has_mirror)


class VectorKind(Kind):
    """Float vectors under L1, L2 or inner product (colour, global, clip)."""

    name = "vector"
    index = VectorIndex
    options = VectorOptions

    def index_options(
        self, metric: str, options: Mapping[str, Any], dsn: str | None, table: str
    ) -> dict[str, Any]:
        """The extractor's metric unless the config names one."""
        return {"metric": metric, **options}

    def search_options(
        self, values: BaseModel | Mapping[str, Any], metric: str, seed: bool = False
    ) -> dict[str, Any]:
        """Query expansion, for inner-product features only (elsewhere it is ignored)."""
        if metric != "ip":
            return {}
        return _fields(VectorOptions, values)

    # The original services searched L2-normalised vectors in a FAISS IndexFlat under L2:
    # their distance was the squared L2 distance, 2 - 2 cos, where ours is 1 - cos.
    def seed_threshold(self, threshold: float, metric: str = "") -> float:
        """The original's strict threshold, in its unit, as ours."""
        return super().seed_threshold(threshold / 2 if metric == "ip" else threshold)

    def seed_entry(self, entry: dict[str, Any], metric: str = "") -> dict[str, Any]:
        """The distance in the original's unit (squared L2 of unit vectors)."""
        if metric == "ip":
            return {**entry, "distance": 2 * entry["distance"]}
        return entry

    groups = True

    def group_threshold(self, threshold: float | None, default: float) -> float:
        """A distance in the feature's own unit, which has no shared default: required."""
        if threshold is None:
            raise InvalidInput(
                "give a threshold: a distance in this feature's unit (see /search/similar)"
            )
        return threshold

    def pairs(
        self, ids: np.ndarray, rows: Any, threshold: float, metric: str, dim: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs by exact distance over the stored (not the trained index's) vectors."""
        from index_actors.duplicates import vector_pairs

        return vector_pairs(ids, np.asarray(rows, np.float32), threshold, metric)


class KeypointsKind(Kind):
    """Keypoints and descriptors of an image, found by votes and verified (local)."""

    name = "keypoints"
    index = KeypointIndex
    options = KeypointOptions
    lacks = "keypoints (a flat or tiny image?)"

    def search_options(
        self, values: BaseModel | Mapping[str, Any], metric: str, seed: bool = False
    ) -> dict[str, Any]:
        """The matching parameters; ``seed``: votes only (no mutual matching, no RANSAC)
        where the request does not say."""
        out = _fields(KeypointOptions, values)
        for flag in ("use_smnn_matching", "use_ransac"):
            if flag in out or seed:
                out[flag] = bool(out.get(flag))
        if "knn_min_matches" in out:
            out["knn_min_matches"] = max(1, out["knn_min_matches"])
        return out

    def is_empty(self, query: np.ndarray) -> bool:
        """No keypoint in any variant."""
        return not any(keypoint_count(row) for row in np.atleast_2d(query))

    def seed_entry(self, entry: dict[str, Any], metric: str = "") -> dict[str, Any]:
        """The original listed ``matches`` (inliers, or votes), not a distance."""
        out = {k: v for k, v in entry.items() if k != "distance"}
        return {**out, "matches": round(1 / entry["distance"] - 1)}

    def ingest_column(self, rows: int, width: int, dtype: Any) -> np.ndarray:
        """One variable-length array per file (a ragged column)."""
        return _ragged(rows, np.zeros(4, np.uint8))

    def stored_feature(self, raw: bytes) -> np.ndarray:
        """The packed keypoints without the store's first-descriptor-id header: a new store
        numbers the descriptors anew."""
        return np.frombuffer(numbered(raw)[1], np.uint8).copy()


class TextKind(Kind):
    """A JSON document of words per image (tags, OCR text, captions)."""

    name = "text"
    index = TextFeatureIndex
    visual = False
    reads_text = True
    lacks = "text"

    def index_options(
        self, metric: str, options: Mapping[str, Any], dsn: str | None, table: str
    ) -> dict[str, Any]:
        """PostgreSQL (in tables of its own per app and feature) when the app has a DSN."""
        return {"dsn": dsn, "table": table, **options} if dsn else dict(options)

    def is_empty(self, query: np.ndarray) -> bool:
        """A document without a word."""
        return not words(doc_text(decode_doc(np.atleast_2d(query)[0])))

    def ingest_column(self, rows: int, width: int, dtype: Any) -> np.ndarray:
        """One document per file (a ragged column); a failed file's stays empty."""
        return _ragged(rows, encode_doc({}))

    def stored_feature(self, raw: bytes) -> np.ndarray:
        """The embedded store keeps each document as JSON."""
        return encode_doc(json.loads(raw))


class BlobKind(Kind):
    """Opaque bytes per image, fetched by id and never searched (thumbnails)."""

    name = "blob"
    index = BlobIndex
    visual = False

    def ingest_column(self, rows: int, width: int, dtype: Any) -> np.ndarray:
        """One value per file (a ragged column); a failed file's is never written."""
        return _ragged(rows, np.zeros(1, np.uint8))


def _fields(model: type[BaseModel], values: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The set fields of ``model`` among ``values`` (a validated request model or a dict)."""
    got = values.model_dump() if isinstance(values, BaseModel) else values
    return {k: got[k] for k in model.model_fields if got.get(k) is not None}


def _ragged(rows: int, empty: np.ndarray) -> np.ndarray:
    column = np.empty(rows, dtype=object)
    for j in range(rows):
        column[j] = empty
    return column


KINDS: dict[str, Kind] = {
    k.name: k for k in (BinaryKind(), VectorKind(), KeypointsKind(), TextKind(), BlobKind())
}


def kind_of(feature: str) -> Kind:
    """The kind of a registered feature (``REGISTRY[feature].kind``)."""
    return KINDS[REGISTRY[feature].kind]


def open_index(kind: str, path: str | Path, dim: int, **options: Any) -> Index:
    """The index of a kind (by name), opened at ``path``."""
    if kind not in KINDS:
        raise ValueError(f"no index for feature kind {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind].open(path, dim, **options)


class SearchOptions(VectorOptions, KeypointOptions):
    """Every kind's per-search options: what a search request may carry."""


__all__ = ["KINDS", "Kind", "SearchOptions", "kind_of", "open_index"]
