"""The rapidocr engine of the OCR extractor: PP-OCRv6 text detection and recognition on
onnxruntime, with the models that ship inside the rapidocr wheel (nothing to download).
Ray-free; rapidocr and onnxruntime are imported when the engine loads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from extractors.base import WeightsUnavailable
from extractors.ocr import Word

#: The model files rapidocr 3.10 ships (its defaults for PP-OCRv6, "small").
DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"
INSTALL = "pip install rapidocr==3.10.0 onnxruntime==1.32.0 (or the ocr option engine: tesseract)"


class RapidOcr:
    """rapidocr's detector finds text lines (any angle, any colour, on any background); its
    recogniser reads each line, and splits it into words with their boxes.

    ``threads``: onnxruntime's threads per model (the app shares its cores with the other
    extractors). ``det_side``: the longest side the detector sees (it never upscales);
    ``box_thresh``: the least mean text probability of a detected box; ``unclip_ratio``: how
    far a detected box is grown around its text. ``model_dir``: a folder with the two model
    files (default: the ones inside the rapidocr package). Defaults measured by
    ``python -m bench.ocr --sweep`` (configs/serve.yaml says what they gave).
    """

    decode_mode = "RGB"
    #: A line's confidence is its characters' mean probability (0-100): words read right
    #: score over 90, and the cut drops a few misreads of textures (configs/serve.yaml).
    min_confidence = 70.0

    def __init__(
        self,
        threads: int = 1,
        det_side: int = 736,
        box_thresh: float = 0.6,
        unclip_ratio: float = 2.0,
        model_dir: str | None = None,
    ) -> None:
        if threads < 1 or det_side < 32 or not 0 < box_thresh < 1 or unclip_ratio <= 0:
            raise ValueError(
                "ocr: threads >= 1, det_side >= 32, box_thresh within 0-1, unclip_ratio > 0"
            )
        self.threads = threads
        self.det_side = det_side
        self.box_thresh = box_thresh
        self.unclip_ratio = unclip_ratio
        self.model_dir = model_dir
        self._ocr: Any = None
        # rapidocr keeps per-call state on its detector, so one image at a time; the cores
        # are shared with the other extractors anyway.
        self._lock = threading.Lock()

    def load(self) -> None:
        """Build the two onnxruntime sessions once (thread-safe); ``WeightsUnavailable``
        with the reason and the fix when rapidocr, onnxruntime or a model cannot load."""
        with self._lock:
            if self._ocr is not None:
                return
            try:
                import onnxruntime  # noqa: F401 - rapidocr's engine: say so when it is missing
                import rapidocr
            except ImportError as exc:
                raise WeightsUnavailable(f"ocr: rapidocr cannot load ({exc}): {INSTALL}") from None
            folder = Path(self.model_dir or Path(rapidocr.__file__).parent / "models")
            params = {
                "Global.log_level": "critical",
                # The extractor has already capped the size. rapidocr's own resize brings
                # the short side up to 30 px and pads wide images: a 2000x2 strip became
                # 30016x7504 pixels (850 MiB at peak, against 206 without).
                "Global.use_preprocess_img": False,
                # The angle classifier only turns upside-down lines; photos rarely have one.
                "Global.use_cls": False,
                # Every line: the extractor applies min_confidence.
                "Global.text_score": 0.0,
                "Global.return_word_box": True,
                "Det.limit_type": "max",
                "Det.limit_side_len": self.det_side,
                "Det.box_thresh": self.box_thresh,
                "Det.unclip_ratio": self.unclip_ratio,
                # Explicit paths: rapidocr never tries a download.
                "Det.model_path": str(folder / DET_MODEL),
                "Rec.model_path": str(folder / REC_MODEL),
                "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
            try:
                ocr = rapidocr.RapidOCR(params=params)
                # rapidocr builds its sessions on first use; build them now, so that a
                # missing or broken model is reported here (rapidocr is pinned).
                ocr._load_det_model()
                ocr._load_rec_model()
            except Exception as exc:  # onnxruntime's errors derive from Exception only
                raise WeightsUnavailable(
                    f"ocr: rapidocr's models in {folder} cannot load "
                    f"({type(exc).__name__}: {exc}): {INSTALL}"
                ) from None
            self._ocr = ocr

    def read(self, img: Image.Image) -> list[Word]:
        """The words of ``img``, each with its line's confidence (rapidocr gives the words
        of a line the confidences of its first characters, not their own)."""
        self.load()
        with self._lock:
            result = self._ocr(img.convert("RGB"))
        # No text: an empty result, or (recognition found nothing) the detector's alone.
        lines = getattr(result, "txts", None)
        if not lines:
            return []
        pieces = result.word_results if len(result.word_results) == len(lines) else None
        out: list[Word] = []
        for i, (text, score) in enumerate(zip(lines, result.scores, strict=True)):
            for word, quad in _words(text, pieces[i] if pieces else (), result.boxes[i]):
                xs, ys = np.asarray(quad, dtype=np.float64).reshape(-1, 2).T
                box = (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())
                out.append((word, 100.0 * float(score), box))
        return out


def _words(text: str, pieces: Any, line_box: Any) -> list[tuple[str, Any]]:
    """A line's words (its text split at spaces), each with the corners of the boxes of
    rapidocr's pieces of it: rapidocr also cuts a word where the recogniser left a gap
    ("Sum", "m", "er" for "Summer"). A line whose pieces do not spell it out keeps its own
    box for each word."""
    tokens = text.split()
    if "".join(piece for piece, _, _ in pieces) != "".join(tokens):
        return [(token, line_box) for token in tokens]
    out = []
    remaining = iter(pieces)
    for token in tokens:
        spelt, quads = "", []
        while len(spelt) < len(token):
            piece, _, quad = next(remaining)
            spelt += piece
            quads.append(quad)
        out.append((token, quads))
    return out
