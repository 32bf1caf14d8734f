"""Tags: ImageNet classes from the global-features network's forward pass (Ray-free)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image

from extractors.base import TextExtractor, WeightsUnavailable
from extractors.global_features import GlobalFeatures
from extractors.textdoc import encode_doc


def imagenet_labels() -> list[str]:
    """ImageNet's class names as tags: each class's common name ("tiger shark, Galeocerdo
    cuvieri" -> "tiger shark"), in class order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


class ImageNetTagger(TextExtractor, GlobalFeatures):
    """Tags from the ImageNet classifier of a global-features network (timm; the packaged
    EfficientNet-Lite0 by default): the readable class names whose probability is at least
    ``cutoff``, at most ``top`` of them, best first. Other options as ``GlobalFeatures``',
    but the crop is classification's centre crop (``crop_pct`` 0.875), which makes the
    right labels likelier on photos; a low cutoff, since photos are not ImageNet's one-object
    pictures (both measured: docs/architecture.md). ``TextExtractor`` comes first: its kind
    and ``extract``, the network's loading, batching and threads."""

    name: ClassVar[str] = "tags"

    def __init__(self, cutoff: float = 0.05, top: int = 5, **global_options: Any) -> None:
        if not 0.0 < cutoff <= 1.0 or top < 1:
            raise ValueError("cutoff must be in (0, 1] and top >= 1")
        super().__init__(**{"crop_pct": 0.875, **global_options})
        self.dim = 0
        self.cutoff = cutoff
        self.top = top
        self._labels: list[str] | None = None
        #: The global extractor whose forward pass gives the tags (``rides_on``), if any.
        self._source: GlobalFeatures | None = None

    def rides_on(self, other: Any) -> bool:
        """A global-features extractor of the same network and weights: the tags then come
        from its forward pass (one model in memory, one pass per image), with its input
        (``crop_pct``), not a crop of their own."""
        same = type(other) is GlobalFeatures and (
            other.model_name,
            other.weights,
            other.device,
        ) == (self.model_name, self.weights, self.device)
        if same:
            self._source = other
            self.crop_pct, self.decode_size = other.crop_pct, other.decode_size
        return same

    def load(self) -> None:
        """Load the network (``WeightsUnavailable`` with the fix when its weights are missing);
        riding on a global extractor, that one's."""
        if self._source is not None:
            with self._load_lock:
                self._source.load()
                self.model, self.preprocess = self._source.model, self._source.preprocess
                self._on_pil, self._on_tensor = self._source._on_pil, self._source._on_tensor
        else:
            super().load()
        if self._labels is None:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            # Checked here, not per batch: a model of other classes makes the feature
            # unavailable (its reason in /health), and uploads store everything else.
            classes = getattr(self.model, "num_classes", None)
            if classes != info.num_classes():
                raise WeightsUnavailable(
                    f"tags ({self.model_name}): the model has {classes} classes, not "
                    f"ImageNet's {info.num_classes()}: choose an ImageNet-1k model"
                )
            self._labels = imagenet_labels()

    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per image ``{"tags": [{"label", "score"}, ...]}``."""
        self.load()
        _, probs = (self._source or self).forward(images)
        return [self._tags(row) for row in probs]

    def from_pass(self, probs: np.ndarray) -> np.ndarray:
        """The encoded document of one image from the class probabilities of the network it
        rides on (``GlobalFeatures.passes``)."""
        self.load()
        return encode_doc(self._tags(probs))

    def _tags(self, row: np.ndarray) -> dict[str, Any]:
        assert self._labels is not None
        best = row.argsort()[::-1][: self.top]
        tags = [
            {"label": self._labels[j], "score": round(float(row[j]), 4)}
            for j in best
            if row[j] >= self.cutoff
        ]
        return {"tags": tags}
