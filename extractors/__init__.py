"""Ray-free feature extractors and the registry the app and scripts build them from."""

from __future__ import annotations

from typing import Any

from extractors.base import Extractor, WeightsUnavailable
from extractors.caption import Captioner
from extractors.clip import ClipFeatures
from extractors.color import ColorHistogram
from extractors.global_features import GlobalFeatures
from extractors.images import InvalidImage, decode
from extractors.local import LocalFeatures
from extractors.ocr import TesseractOcr
from extractors.phash import PHash
from extractors.places import Places365Tagger
from extractors.tags import ImageNetTagger
from extractors.thumbnail import Thumbnail

REGISTRY: dict[str, type[Extractor]] = {
    cls.name: cls
    for cls in (
        PHash,
        ColorHistogram,
        LocalFeatures,
        GlobalFeatures,
        ClipFeatures,
        ImageNetTagger,
        TesseractOcr,
        Captioner,
        Places365Tagger,
        Thumbnail,
    )
}


def build_extractor(name: str, options: dict[str, Any] | None = None) -> Extractor:
    """The extractor registered as ``name``, constructed with its config ``options``."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown extractor {name!r}; known: {', '.join(REGISTRY)}") from None
    return cls(**(options or {}))


__all__ = [
    "REGISTRY",
    "Captioner",
    "ClipFeatures",
    "ColorHistogram",
    "Extractor",
    "GlobalFeatures",
    "ImageNetTagger",
    "InvalidImage",
    "LocalFeatures",
    "PHash",
    "Places365Tagger",
    "TesseractOcr",
    "Thumbnail",
    "WeightsUnavailable",
    "build_extractor",
    "decode",
]
