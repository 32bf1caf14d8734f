"""The shared base of the torch model extractors: device, threads, batches, normalisation.

torch, timm and open_clip are imported when a model is first needed, not with this module:
every Serve replica imports the extractor registry, and phash or colour replicas have no use
for the few hundred MB that torch costs a process.
"""

from __future__ import annotations

import os
import threading
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from extractors.base import Extractor, Kind, WeightsUnavailable
from extractors.images import InvalidImage

if TYPE_CHECKING:
    import torch


def prepare_torch(name: str, device: str, threads: int | None) -> None:
    """Cap torch's CPU threads in this process, and check that a CUDA device is there; every
    torch extractor calls it before building its model."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WeightsUnavailable(f"{name}: device {device} but no CUDA here")


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
    failure_status: ClassVar[int] = 503

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
        self._pool: ThreadPoolExecutor | None = None
        self._on_pil: Any = None
        self._on_tensor: Any = None

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

            prepare_torch(self.name, self.device, self.threads)
            model, preprocess = self._build()
            self.preprocess = preprocess
            self._on_pil, self._on_tensor = _split(preprocess)
            # NHWC: oneDNN's fast convolution layout on CPUs (docs/architecture.md); a no-op
            # for transformer blocks.
            model = model.to(self.device).to(memory_format=torch.channels_last)
            self.model = model.eval()

    def _map(self, fn: Any, items: list[Any]) -> list[Any]:
        """``fn`` over a batch on a few threads: decoding and resizing release the GIL, so
        a batch of images spreads over the cores where a lone image cannot.

        Only PIL work goes to these threads: a torch op on a thread other than the one that
        runs the model gives that thread an OpenMP team of its own, whose spinning threads
        slow a lone image down (docs/architecture.md).
        """
        if len(items) < 2:
            return [fn(item) for item in items]
        if self._pool is None:
            workers = self.threads or os.cpu_count() or 1
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{self.name}-prep")
        return list(self._pool.map(fn, items))

    def _decode_all(self, blobs: list[bytes]) -> list[Image.Image | InvalidImage]:
        return self._map(self._decode_one, blobs)

    def _tensor(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        ready = self._map(self._on_pil, images)
        if not isinstance(self._on_tensor, tuple):
            batch = torch.stack([self._on_tensor(im) for im in ready])
            return batch.to(self.device, memory_format=torch.channels_last)
        # To-tensor and normalise as one operation on the whole uint8 batch, on the model's
        # device: 4x fewer bytes to a GPU, and NHWC pixels are channels-last as they are.
        mean, std = self._on_tensor
        pixels = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in ready]))
        x = pixels.to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return x.sub_(mean.to(x.device)).div_(std.to(x.device))

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


def _split(preprocess: Any) -> tuple[Any, Any]:
    """A torchvision ``Compose`` cut before its first to-tensor step: (PIL part, rest).

    When the rest is just to-tensor then ``Normalize`` (timm's and open_clip's transforms
    are), the rest is returned as its (mean, std), shaped to broadcast over NCHW batches.
    """
    import torch
    from torchvision.transforms import Compose, Normalize

    steps = list(getattr(preprocess, "transforms", []))
    cut = next((i for i, t in enumerate(steps) if "Tensor" in type(t).__name__), None)
    if not isinstance(preprocess, Compose) or cut is None:
        return (lambda img: img), preprocess
    rest = steps[cut:]
    if len(rest) == 2 and isinstance(rest[1], Normalize):
        mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in (rest[1].mean, rest[1].std))
        return Compose(steps[:cut]), (mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1))
    return Compose(steps[:cut]), Compose(rest)
