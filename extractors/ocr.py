"""OCR: the words an engine reads in an image, with their confidence and box (Ray-free).

One extractor (``Ocr``, the feature ``ocr``) over two engines: ``rapidocr`` (PP-OCRv6
detection and recognition on onnxruntime, the models inside the rapidocr wheel; it reads text
in photos) and ``tesseract`` (built for scanned pages; it reads clean lines, and in photos
often finds no text region). The extractor owns what both share: the size cap, the
confidence cut and boxes in the original image's pixels.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, ClassVar, Protocol

from PIL import Image

from extractors.base import TextExtractor, WeightsUnavailable

#: A word as an engine reads it: text, confidence (0-100), and its box (left, top, width,
#: height) in the pixels of the image the engine was given.
Word = tuple[str, float, tuple[float, float, float, float]]


class Engine(Protocol):
    """What ``Ocr`` needs of an engine."""

    #: The colour mode it reads images in.
    decode_mode: str
    #: Words under this confidence (0-100) are dropped unless the config says otherwise.
    min_confidence: float

    def load(self) -> None:
        """Check or load the engine once; ``WeightsUnavailable`` says what is missing."""

    def read(self, img: Image.Image) -> list[Word]:
        """The words of one image."""
        ...


class TesseractOcr:
    """Tesseract through ``pytesseract``. ``languages``: its language packs, e.g.
    ``["eng", "deu"]`` (Debian: ``tesseract-ocr-<lang>``)."""

    decode_mode = "L"
    #: Tesseract's word confidences spread low; 60 drops most of its noise from photos.
    min_confidence = 60.0

    def __init__(self, languages: list[str] | None = None) -> None:
        self.languages = languages or ["eng"]
        self._ready = False
        self._lock = threading.Lock()

    def load(self) -> None:
        """Check Tesseract and its language packs (``WeightsUnavailable`` naming the fix)."""
        if self._ready:
            return
        with self._lock:
            import pytesseract

            try:
                have = set(pytesseract.get_languages(config=""))
            except (pytesseract.TesseractNotFoundError, OSError) as exc:
                raise WeightsUnavailable(
                    f"ocr: Tesseract is not installed ({type(exc).__name__}): "
                    "apt-get install tesseract-ocr tesseract-ocr-eng"
                ) from None
            missing = [lang for lang in self.languages if lang not in have]
            if missing:
                packs = " ".join(f"tesseract-ocr-{lang}" for lang in missing)
                raise WeightsUnavailable(
                    f"ocr: no Tesseract language data for {missing}: apt-get install {packs}"
                )
            self._ready = True

    def read(self, img: Image.Image) -> list[Word]:
        """Tesseract's words of ``img`` (read in grey)."""
        import pytesseract

        data = pytesseract.image_to_data(
            img.convert("L"), lang="+".join(self.languages), output_type=pytesseract.Output.DICT
        )
        columns = (data[k] for k in ("text", "conf", "left", "top", "width", "height"))
        return [
            (text.strip(), float(conf), (left, top, width, height))
            for text, conf, left, top, width, height in zip(*columns, strict=True)
            if text.strip()
        ]


def _engines() -> dict[str, type]:
    # Imported here: the rapidocr module is light, but the registry imports this one first.
    from extractors.ocr_rapid import RapidOcr

    return {"rapidocr": RapidOcr, "tesseract": TesseractOcr}


class Ocr(TextExtractor):
    """Words, their confidence and box from the OCR ``engine`` (``rapidocr`` or
    ``tesseract``), on the image downscaled to at most ``max_side`` pixels (the engines'
    time grows with the pixels, and photo text is rarely smaller than that keeps).

    ``min_confidence``: words below it (0-100) are dropped; unset, the engine's own default.
    Other options go to the engine: Tesseract's ``languages``; rapidocr's ``threads``,
    ``det_side``, ``box_thresh``, ``unclip_ratio`` and ``model_dir``
    (``extractors/ocr_rapid.py``).
    """

    name: ClassVar[str] = "ocr"

    def __init__(
        self,
        engine: str = "rapidocr",
        max_side: int = 2000,
        min_confidence: float | None = None,
        max_pixels: int = 100_000_000,
        **engine_options: Any,
    ) -> None:
        super().__init__(max_pixels=max_pixels)
        engines = _engines()
        if engine not in engines:
            raise ValueError(f"ocr: unknown engine {engine!r}; known: {', '.join(engines)}")
        takes = set(inspect.signature(engines[engine]).parameters)
        if wrong := sorted(set(engine_options) - takes):
            raise ValueError(
                f"ocr: engine {engine} has no option {wrong}; its options: {sorted(takes)}"
            )
        self.engine: Engine = engines[engine](**engine_options)
        self.engine_name = engine
        if min_confidence is None:
            min_confidence = self.engine.min_confidence
        if max_side < 32 or not 0 <= min_confidence <= 100:
            raise ValueError("max_side must be >= 32 and min_confidence within 0-100")
        # JPEG draft mode may decode at a fraction of the size, never under max_side.
        self.decode_size = max_side
        self.decode_mode = self.engine.decode_mode
        self.max_side = max_side
        self.min_confidence = min_confidence

    def load(self) -> None:
        """Load the engine once (``WeightsUnavailable`` with the reason and the fix)."""
        self.engine.load()

    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per image ``{"text": "...", "words": [{"text", "confidence", "box"}]}``, each
        box ``[left, top, width, height]`` in the original image's pixels."""
        self.load()
        out = []
        for img in images:
            scale = min(1.0, self.max_side / max(img.size))
            if scale < 1.0:
                # At least a pixel: a 5000x1 strip must not become 2000x0.
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.LANCZOS)
            words: list[dict[str, Any]] = [
                {
                    "text": text,
                    "confidence": round(conf, 1),
                    "box": [round(v / scale) for v in box],
                }
                for text, conf, box in self.engine.read(img)
                if conf >= self.min_confidence
            ]
            out.append({"text": " ".join(w["text"] for w in words), "words": words})
        return out
