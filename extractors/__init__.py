"""Ray-free feature extractors and the registry the app and scripts build them from.

The registry names each extractor's module and class and imports a module only when its
class is first asked for: an index actor or a light replica then never loads OpenCV, numba
or the model code it does not use (each costs tens of MB in every process that imports it).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from extractors.base import Extractor, WeightsUnavailable
from extractors.images import InvalidImage, decode

if TYPE_CHECKING:
    from extractors.caption import Captioner
    from extractors.clip import ClipFeatures
    from extractors.color import ColorHistogram
    from extractors.global_features import GlobalFeatures
    from extractors.local import LocalFeatures
    from extractors.ocr import Ocr
    from extractors.phash import PHash
    from extractors.places import Places365Tagger
    from extractors.tags import ImageNetTagger
    from extractors.thumbnail import Thumbnail

#: Feature name -> (module, class), in the order features are listed.
_WHERE = {
    "phash": ("extractors.phash", "PHash"),
    "color": ("extractors.color", "ColorHistogram"),
    "local": ("extractors.local", "LocalFeatures"),
    "global": ("extractors.global_features", "GlobalFeatures"),
    "clip": ("extractors.clip", "ClipFeatures"),
    "tags": ("extractors.tags", "ImageNetTagger"),
    "ocr": ("extractors.ocr", "Ocr"),
    "caption": ("extractors.caption", "Captioner"),
    "places": ("extractors.places", "Places365Tagger"),
    "thumbnail": ("extractors.thumbnail", "Thumbnail"),
}
_BY_CLASS = {cls: module for module, cls in _WHERE.values()}


class _Registry(Mapping[str, type[Extractor]]):
    """Feature name -> extractor class, each module imported on first use."""

    def __getitem__(self, name: str) -> type[Extractor]:
        module, cls = _WHERE[name]
        found: type[Extractor] = getattr(importlib.import_module(module), cls)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


REGISTRY: Mapping[str, type[Extractor]] = _Registry()


def __getattr__(name: str) -> Any:
    """The extractor classes by name (``from extractors import PHash``), imported lazily."""
    if name in _BY_CLASS:
        return getattr(importlib.import_module(_BY_CLASS[name]), name)
    raise AttributeError(f"module 'extractors' has no attribute {name!r}")


def build_extractor(name: str, options: dict[str, Any] | None = None) -> Extractor:
    """The extractor registered as ``name``, constructed with its config ``options``."""
    if name not in _WHERE:
        raise ValueError(f"unknown extractor {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name](**(options or {}))


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
    "Ocr",
    "PHash",
    "Places365Tagger",
    "Thumbnail",
    "WeightsUnavailable",
    "build_extractor",
    "decode",
]
