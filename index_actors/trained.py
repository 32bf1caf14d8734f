"""Trained artefacts (an empty trained FAISS index, a whitening) kept next to a store: the
part of an index that ``scripts/train_index.py`` switches. A mixin of the trainable kinds
(vector, keypoints) over ``StoredIndex``. Ray-free."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_actors.base import METRICS, StoredIndex, _fsync

log = logging.getLogger(__name__)
#: Entries sampled to train an index by itself (``train_at``): ~250 per IVF list of 1024.
TRAIN_SAMPLE = 256_000


class Trained(StoredIndex):
    """Reads, writes and installs the trained artefacts of an index (one ``trained.npz``).

    ``template``: the empty trained index in use (None: the kind's exact index)."""

    template: Any = None
    #: Stored entries from which the index trains ``train_factory`` by itself, once, in the
    #: background (None: never); ``train_metric``: the metric it trains for.
    train_at: int | None = None
    train_factory: str = ""
    train_metric: str = "l2"
    #: The background training, once started (at most once per process).
    training: threading.Thread | None = None
    _adopting: bool = False

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` stored entries (float32 rows): training data."""
        raise NotImplementedError

    def adopt(self, trained: bytes | None, whitening: bytes | None = None) -> dict[str, Any]:
        """Switch to a trained index (None: back to exact), losing no write."""
        raise NotImplementedError

    def _maybe_train(self, stored: int) -> None:
        """Start training ``train_factory`` in the background once ``stored`` entries reach
        ``train_at`` while the index is still exact (called under ``_lock``)."""
        if (
            self.train_at is None
            or self.training is not None
            or self.trained
            or self._adopting
            or stored < self.train_at
        ):
            return
        self.training = threading.Thread(target=self._train, name="train-index", daemon=True)
        self.training.start()

    def _train(self) -> None:
        """Train on a sample of the stored entries and adopt the result; a failure is
        logged and leaves the exact index serving."""
        factory = self.train_factory
        try:
            template = train_template(self.sample(TRAIN_SAMPLE), factory, self.train_metric)
            log.info("%s: trained %s by itself: %s", self.path, factory, self.adopt(template))
        except Exception:
            log.exception("%s: training %s failed; exact it stays", self.path, factory)

    def close(self) -> None:
        """As ``StoredIndex.close``, once a training in progress is done (it reads the
        store; it runs once in a store's life)."""
        if self.training is not None:
            self.training.join()
        super().close()

    @property
    def trained(self) -> bool:
        """Whether a trained (approximate) index is in use."""
        return self.template is not None

    def describe(self) -> dict[str, Any]:
        """Count, live settings, whether a trained index is in use, and whether it is
        training itself now (``training``: searches stay exact, and slower, until then)."""
        training = self.training is not None and self.training.is_alive()
        return {**super().describe(), "trained": self.trained, "training": training}

    @property
    def _artefact_file(self) -> Path:
        return self.path / "trained.npz"

    @staticmethod
    def _tag_of(parts: dict[str, bytes]) -> str:
        if not parts:
            return ""
        digest = hashlib.sha1(usedforsecurity=False)
        for key in sorted(parts):
            digest.update(key.encode() + b"\0" + parts[key])
        return digest.hexdigest()[:16]

    def _read_parts(self) -> dict[str, bytes]:
        """The trained artefacts kept next to the store (none: an empty dict)."""
        if not self._artefact_file.exists():
            return {}
        with np.load(self._artefact_file) as saved:
            return {key: saved[key].tobytes() for key in saved.files}

    def _write_artefacts(self, parts: dict[str, bytes]) -> None:
        # One file, replaced in one rename: a crash leaves the old artefacts or the new ones,
        # never a mix; the stamp names them, so a snapshot of the other index is not loaded.
        target = self._artefact_file
        if not parts:
            target.unlink(missing_ok=True)
        else:
            tmp = self.path / "trained.tmp.npz"
            arrays = {k: np.frombuffer(v, np.uint8) for k, v in parts.items()}
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            _fsync(tmp)
            os.replace(tmp, target)
        _fsync(self.path)

    def _check_template(self, template: Any, width: int, metric: str) -> None:
        """A trained index must be empty, of the right width and metric, and able to take
        ids and remove them (re-adding an image replaces it): ``_probe`` tries both."""
        if template.d != width or not template.is_trained or template.ntotal:
            raise ValueError(
                f"need an empty trained {width}-d index, got {template.d}-d "
                f"(trained={template.is_trained}, ntotal={template.ntotal})"
            )
        if template.metric_type != METRICS[metric]:
            raise ValueError(f"the trained index's metric is not this feature's {metric.upper()}")
        try:
            self._probe(faiss.clone_index(template), width)
        except RuntimeError as exc:
            raise ValueError(
                f"this index type cannot take ids / cannot remove entries: {exc}"
            ) from None

    def _probe(self, index: Any, width: int) -> None:
        """Add one entry to an empty ``index`` and remove it, as this kind does."""
        raise NotImplementedError(f"{type(self).__name__} takes no trained index")

    def _install(self, fresh: Any, parts: dict[str, bytes]) -> None:
        """Swap in a filled index with the artefacts it was made from (both locks held)."""
        self._write_artefacts(parts)
        self.index, self._tag = fresh, self._tag_of(parts)
        self._snapshot_generation = -1  # the old snapshot is of the old index
        self.configure(**self.live)


def train_template(sample: np.ndarray, factory: str, metric: str) -> bytes:
    """An empty FAISS index of ``factory`` trained on ``sample`` (rows), serialized: what
    ``adopt`` takes. ``ValueError`` when FAISS cannot build the factory."""
    try:
        index = faiss.index_factory(sample.shape[1], factory, METRICS[metric])
    except RuntimeError as exc:
        raise ValueError(f"FAISS cannot build {factory!r}: {exc}") from None
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return bytes(faiss.serialize_index(index).tobytes())
