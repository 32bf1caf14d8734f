"""Captions from a transformers image-to-text model (BLIP by default; Ray-free)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from PIL import Image

from extractors.base import TextExtractor, WeightsUnavailable
from extractors.models import prepare_torch


class Captioner(TextExtractor):
    """Captions from a transformers image-to-text model (BLIP, GIT, ...): ``model`` is a hub
    id (looked up in the local cache while ``HF_HUB_OFFLINE=1``) or a local folder with the
    model and its processor; ``num_beams`` / ``max_new_tokens`` set the beam search.
    ``decode_size``: images are decoded at least this large (captioners read 224-384 px)."""

    name: ClassVar[str] = "caption"
    exact: ClassVar[bool] = False
    uses_torch: ClassVar[bool] = True
    failure_status: ClassVar[int] = 503

    def __init__(
        self,
        model: str = "Salesforce/blip-image-captioning-base",
        num_beams: int = 3,
        max_new_tokens: int = 30,
        decode_size: int = 512,
        device: str = "cpu",
        threads: int | None = None,
        max_pixels: int = 100_000_000,
    ) -> None:
        super().__init__(max_pixels=max_pixels)
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError("num_beams and max_new_tokens must be >= 1")
        self.decode_size = decode_size
        self.device = device
        self.model_name = model
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.threads = threads
        self.model: Any = None
        self.processor: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load model and processor (``WeightsUnavailable`` naming the fix when absent)."""
        if self.model is not None:
            return
        with self._lock:
            if self.model is not None:
                return
            from transformers import AutoModelForImageTextToText, AutoProcessor

            from extractors.weights import FETCH, offline

            prepare_torch(self.name, self.device, self.threads)
            try:
                processor = AutoProcessor.from_pretrained(
                    self.model_name, local_files_only=offline()
                )
                model: Any = AutoModelForImageTextToText.from_pretrained(
                    self.model_name, local_files_only=offline()
                )
            except (OSError, ValueError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise WeightsUnavailable(
                    f"caption ({self.model_name}): not available ({type(exc).__name__}: "
                    f"{first[:200]}); fetch it with {FETCH.format(feature='caption')}"
                ) from None
            self.processor, self.model = processor, model.to(self.device).eval()

    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per image ``{"caption": "..."}`` by beam search."""
        import torch

        self.load()
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [{"caption": " ".join(t.split())} for t in texts]
