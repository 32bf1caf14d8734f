"""CLIP image and text embeddings in one space, from open_clip.

Options: ``model`` (an open_clip name such as the seed's ``ViT-B-16``, or ``local-dir:PATH``
for a folder with ``open_clip_config.json`` and a checkpoint), ``pretrained`` (an open_clip
tag, looked up in the local hub cache), ``weights`` (a checkpoint file, instead of the tag).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from extractors.base import WeightsUnavailable
from extractors.models import ModelExtractor
from extractors.weights import FETCH, existing_file, offline

if TYPE_CHECKING:
    import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class ClipFeatures(ModelExtractor):
    """L2-normalised CLIP image embeddings; ``embed_text`` maps queries into the same space."""

    name: ClassVar[str] = "clip"

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | None = "openai",
        weights: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        max_pixels: int = 100_000_000,
    ) -> None:
        super().__init__(device=device, threads=threads, max_pixels=max_pixels)
        import open_clip

        self.model_name = model
        self.pretrained = pretrained
        self.weights = weights
        self.tokenizer: Any = None
        local = model.removeprefix(open_clip.factory.LOCAL_DIR_PREFIX)
        self.local_dir = Path(local) if local != model else None
        if self.local_dir is not None and not (self.local_dir / "open_clip_config.json").is_file():
            raise WeightsUnavailable(f"clip: no open_clip_config.json in {self.local_dir}")
        try:
            cfg = open_clip.get_model_config(model)
        except (OSError, ValueError) as exc:
            raise WeightsUnavailable(f"clip: unreadable model config of {model!r}: {exc}") from None
        if cfg is None:
            raise WeightsUnavailable(
                f"clip: open_clip has no model {model!r} (see open_clip.list_models())"
            )
        self.dim = int(cfg["embed_dim"])
        self.decode_size = int(np.max(cfg["vision_cfg"].get("image_size", 224)))

    def _build(self) -> tuple[torch.nn.Module, Any]:
        import open_clip

        what = f"clip ({self.model_name})"
        kwargs: dict[str, Any] = {}
        if self.local_dir is not None:
            found = [p for p in self.local_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]
            if not found:
                # open_clip would go on with random weights; a search engine must not.
                raise WeightsUnavailable(f"{what}: no checkpoint file in {self.local_dir}")
        elif self.weights:
            kwargs["pretrained"] = str(existing_file(self.weights, what))
        elif self.pretrained:
            tag = open_clip.get_pretrained_cfg(self.model_name, self.pretrained)
            if not tag:
                known = open_clip.list_pretrained_tags_by_model(self.model_name)
                raise WeightsUnavailable(
                    f"{what}: no pretrained tag {self.pretrained!r}; known: {known}"
                )
            kwargs["pretrained"] = self.pretrained
            # The tag's activation (OpenAI's weights were trained with QuickGELU).
            kwargs["force_quick_gelu"] = bool(tag.get("quick_gelu"))
        else:
            raise WeightsUnavailable(f"{what}: give options.pretrained, weights or a local-dir")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(self.model_name, **kwargs)
        except Exception as exc:
            if self.weights or self.local_dir:
                raise WeightsUnavailable(f"{what}: checkpoint unusable: {exc}") from None
            where = "the local model cache" if offline() else "the cache or the hub"
            raise WeightsUnavailable(
                f"{what}: weights {self.pretrained!r} not in {where}; fetch them with "
                f"{FETCH.format(feature='clip')}, or set options.weights to a file"
            ) from None
        try:
            # Hugging Face tokenizers (SigLIP, ...) come from the hub cache too.
            self.tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as exc:
            raise WeightsUnavailable(f"{what}: tokenizer unavailable: {exc}") from None
        return model, preprocess

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    def embed_text(self, texts: list[str]) -> list[np.ndarray]:
        """L2-normalised text embeddings (the tokenizer truncates to the context length)."""
        import torch

        self.load()
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            return self._normalised(self.model.encode_text(tokens))
