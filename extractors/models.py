"""The shared base of the torch model extractors: device, threads, batches, normalisation.

torch, timm and open_clip are imported when a model is first needed, not with this module:
every Serve replica imports the extractor registry, and phash or colour replicas have no use
for the few hundred MB that torch costs a process.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from extractors.base import Extractor, Kind, WeightsUnavailable

if TYPE_CHECKING:
    import torch


class ModelExtractor(Extractor):
    """A network that maps a batch of images to L2-normalised float32 embeddings.

    Subclasses build the model and its preprocessing in ``_build`` (raising
    ``WeightsUnavailable`` when the weights cannot be found) and embed a preprocessed batch in
    ``_embed``. ``device`` is ``"cpu"`` or ``"cuda"``; ``threads`` caps torch's CPU threads
    in this process (a replica that reserved one core should not spin up every core).
    """

    kind: ClassVar[Kind] = "vector"
    dtype: ClassVar[type] = np.float32
    metric: ClassVar[str] = "ip"
    exact: ClassVar[bool] = False
    uses_torch: ClassVar[bool] = True

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        max_pixels: int = 100_000_000,
    ) -> None:
        super().__init__(max_pixels=max_pixels)
        self.device = device
        self.threads = threads
        self.model: Any = None
        self.preprocess: Any = None
        self._load_lock = threading.Lock()

    @abstractmethod
    def _build(self) -> tuple[torch.nn.Module, Any]:
        """The model with its weights loaded, and its PIL -> tensor preprocessing."""

    @abstractmethod
    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings of a preprocessed batch."""

    def load(self) -> None:
        """Build the model once (thread-safe); ``WeightsUnavailable`` says how to get weights."""
        with self._load_lock:
            if self.model is not None:
                return
            import torch

            if self.threads:
                torch.set_num_threads(self.threads)
            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise WeightsUnavailable(f"{self.name}: device {self.device} but no CUDA here")
            model, preprocess = self._build()
            self.preprocess = preprocess
            self.model = model.to(self.device).eval()

    def _tensor(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        return torch.stack([self.preprocess(img) for img in images]).to(self.device)

    @staticmethod
    def _normalised(x: torch.Tensor) -> list[np.ndarray]:
        import torch

        x = torch.nn.functional.normalize(x.float(), dim=-1)
        return list(x.cpu().numpy().astype(np.float32))

    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        """L2-normalised embeddings of a batch, one forward pass."""
        import torch

        self.load()
        with torch.inference_mode():
            return self._normalised(self._embed(self._tensor(images)))
