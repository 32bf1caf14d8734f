"""The extractor interface every feature extractor implements (Ray-free)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from extractors.images import InvalidImage, decode
from extractors.textdoc import encode_doc

Kind = Literal["binary", "vector", "keypoints", "text", "blob", "labels"]
#: ``query`` of ``extract_bytes``: False for a stored feature, True for a query's variants,
#: ``FUSED`` for a query whose search is fused with whole-image features (phash, global),
#: which find the photo itself: an extractor may read such a query at a bounded size
#: (local features do: they only need to find crops there). The others treat it as True.
FUSED: Literal["fused"] = "fused"
Query = bool | Literal["fused"]


class WeightsUnavailable(RuntimeError):
    """An extractor's model weights could not be found; the message says how to get them."""


class Extractor(ABC):
    """Turns images into fixed-size features.

    Subclasses declare ``name``, ``kind``, ``dim`` (bits for binary, floats for vector),
    ``dtype``, ``metric`` and the decode size they need, and implement ``extract`` on a batch.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    #: Bits for binary features, values for vectors; a class constant for weight-free
    #: extractors, set from the model's configuration (no weights needed) for the others.
    dim: int
    dtype: ClassVar[type]
    metric: ClassVar[str]
    #: Longest side the extractor needs; the decoder may use JPEG draft mode down to it.
    #: ``None`` means full resolution.
    decode_size: int | None = None
    #: Colour mode the extractor wants the image in.
    decode_mode: str = "RGB"
    #: No weights and a few ms of CPU per image: cheap enough to run inline where a remote
    #: call would cost more than the work (the ingress computes light query features).
    light: ClassVar[bool] = False
    #: Whether the same image gives bit-identical features alone and in a batch. Networks
    #: compute in float and differ in the last bits between batch sizes.
    exact: ClassVar[bool] = True
    #: Runs torch: the deployment picks its device and thread count.
    uses_torch: ClassVar[bool] = False
    #: HTTP status for an image the extractor itself failed on: 422 where that can only be
    #: the image (weight-free code), 503 for networks, whose failures are the server's
    #: (out of memory, a device error) and worth a retry.
    failure_status: ClassVar[int] = 422

    def __init__(self, max_pixels: int = 100_000_000) -> None:
        self.max_pixels = max_pixels

    def load(self) -> None:  # noqa: B027 - weight-free extractors have nothing to load
        """Load weights; idempotent. Raises ``WeightsUnavailable`` with a fix when missing."""

    @property
    def nbytes(self) -> int:
        """Bytes of one stored feature (of one descriptor, for keypoints); bit strings
        override it."""
        return self.dim * np.dtype(self.dtype).itemsize

    @property
    def column(self) -> tuple[str, int]:
        """A stored feature as a batch-ingest column: its dtype (``numpy.dtype.str``) and
        values per row (per descriptor for keypoints)."""
        dtype = np.dtype(self.dtype)
        return dtype.str, self.nbytes // dtype.itemsize

    def decode(self, data: bytes) -> Image.Image:
        """Decode upload bytes at the size and mode this extractor needs."""
        return decode(
            data, mode=self.decode_mode, size=self.decode_size, max_pixels=self.max_pixels
        )

    @abstractmethod
    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Features of a batch of decoded images, one 1-D array per image."""

    def query_variants(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Query features: one 2-D array (variants x feature) per image.

        A search keeps the best distance per stored id over the variants; the default is the
        feature alone, phash adds the mirrored image.
        """
        return [f[None, :] for f in self.extract(images)]

    def extract_bytes(
        self, blobs: list[bytes], query: Query = False
    ) -> list[np.ndarray | InvalidImage]:
        """Decode and extract a batch of uploads; a bad upload yields its ``InvalidImage``.

        One bad file must not fail the others in its batch, so errors are returned per item.
        """
        return self.per_image(blobs, self.query_variants if query else self.extract)

    def per_image(self, blobs: list[bytes], run: Any) -> list[Any]:
        """``run`` (a batch of decoded images -> one result each) over a batch of uploads;
        an upload that does not decode, or that ``run`` fails on, yields its
        ``InvalidImage`` in its place."""
        results: list[Any] = []
        images: list[Image.Image] = []
        slots: list[int] = []
        for decoded in self._decode_all(blobs):
            if isinstance(decoded, InvalidImage):
                results.append(decoded)
            else:
                images.append(decoded)
                slots.append(len(results))
                results.append(InvalidImage("not computed"))
        if images:
            for slot, feat in zip(slots, self._compute(images, run), strict=True):
                results[slot] = feat
        return results

    def rides_on(self, other: Extractor) -> bool:
        """Whether this extractor's feature can come from ``other``'s forward pass when both
        run in one process (``extractors/group.py``); if so, it now shares ``other``'s
        network. Most extractors compute their own."""
        return False

    def _decode_one(self, data: bytes) -> Image.Image | InvalidImage:
        try:
            return self.decode(data)
        except InvalidImage as exc:
            return exc

    def _decode_all(self, blobs: list[bytes]) -> list[Image.Image | InvalidImage]:
        """Decode a batch; each failure is returned in its place."""
        return [self._decode_one(data) for data in blobs]

    def _compute(self, images: list[Image.Image], run: Any) -> list[Any]:
        try:
            return list(run(images))
        except Exception as exc:
            if len(images) == 1:
                return [
                    InvalidImage(f"{self.name} failed on this image: {exc}", self.failure_status)
                ]
        # One odd image must not fail the batch it shares with other uploads: redo one by
        # one, and report the image that still fails as its own error.
        return [self._compute([img], run)[0] for img in images]


class TextExtractor(Extractor):
    """An extractor whose feature is a JSON document (kind ``text``), of variable length.

    Each ``analyze``s a batch into one JSON document per image; as features, the documents
    travel encoded (``encode_doc``) and the text index makes their words searchable.
    """

    kind: ClassVar[Kind] = "text"
    dtype: ClassVar[type] = np.uint8
    metric: ClassVar[str] = "text"
    #: Variable-length: the document's UTF-8 bytes.
    dim = 0

    @abstractmethod
    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """One document per image."""

    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        """The documents of a batch, encoded as features."""
        return [encode_doc(doc) for doc in self.analyze(images)]
