"""The native API's typed answers (pydantic): what ``/docs`` shows and what the engine returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class Listed(BaseModel):
    """A stored image in one feature's list, at a distance (smaller is closer)."""

    image_id: int
    file_name: str | None
    distance: float


class Match(BaseModel):
    """Where one feature ranked a fused result."""

    rank: int
    distance: float


class FusedHit(BaseModel):
    """One fused result: its score, whether it is a near-duplicate, and each feature's rank."""

    image_id: int
    file_name: str | None
    score: float
    duplicate: bool
    matches: dict[str, Match]


class SearchResult(BaseModel):
    """Fused results, and each feature's own list; ``partial`` (only when a shard did not
    answer): per feature, the shards whose images are left out."""

    results: list[FusedHit]
    by_feature: dict[str, list[Listed]]
    partial: dict[str, list[str]] | None = None


class TextSearchResult(SearchResult):
    """Fused text results; sources left out (CLIP without weights) with the reason."""

    unavailable: dict[str, str]


class Similar(BaseModel):
    """Stored images nearest to a stored one, by one feature; ``partial`` (only when a shard
    did not answer): the shards whose images are left out."""

    results: list[Listed]
    partial: list[str] | None = None


class Added(BaseModel):
    """A stored image: its id, its file name and each feature's status ("ok" or the error)."""

    image_id: int
    file_name: str
    features: dict[str, str]


class Deleted(BaseModel):
    """A deleted image."""

    image_id: int
    deleted: bool = True


class ImageInfo(BaseModel):
    """What is stored for an image: its features, and its tags, caption and OCR text."""

    image_id: int
    file_name: str
    features: list[str]
    tags: list[Any]
    caption: str | None
    text: str | None


class GroupImage(BaseModel):
    """A member of a group of near-duplicates (``file_name`` None: deleted meanwhile)."""

    image_id: int
    file_name: str | None


class DuplicateGroup(BaseModel):
    """Images connected by near-duplicate pairs, and the pairs: ``[id_a, id_b, distance]``."""

    images: list[GroupImage]
    pairs: list[tuple[int, int, int | float]]


class Duplicates(BaseModel):
    """One page of the groups of near-duplicates, largest first."""

    feature: str
    threshold: float
    groups: list[DuplicateGroup]
    page: int
    pages: int
    total_groups: int


class Analysis(BaseModel):
    """Tags, caption and text of an upload (nothing stored); OCR's words with their boxes."""

    tags: list[Any]
    caption: str | None
    text: str | None
    words: list[Any]
    unavailable: dict[str, str]


class Up(BaseModel):
    """``/health`` without a key, when the app has keys: it answers, nothing more."""

    status: Literal["up"] = "up"


class Health(BaseModel):
    """Every extractor (available, or why not), every index (count) and the image count."""

    status: str
    extractors: dict[str, dict[str, Any]]
    indexes: dict[str, dict[str, Any]]
    images: int | str
