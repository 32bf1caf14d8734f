"""OCR: the words Tesseract reads in an image, with their confidence and box (Ray-free)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from PIL import Image

from extractors.base import TextExtractor, WeightsUnavailable


class TesseractOcr(TextExtractor):
    """Words and their confidence from Tesseract (``pytesseract``), on the image downscaled
    to at most ``max_side`` pixels (Tesseract's time grows with the pixels, and photo text
    is rarely smaller than it keeps). ``languages``: Tesseract language packs, e.g.
    ``["eng", "deu"]``; ``min_confidence``: words below it (0-100) are dropped."""

    name: ClassVar[str] = "ocr"
    pool: ClassVar[str] = "ocr"
    decode_mode = "L"

    def __init__(
        self,
        languages: list[str] | None = None,
        max_side: int = 2000,
        min_confidence: float = 60,
        max_pixels: int = 100_000_000,
    ) -> None:
        super().__init__(max_pixels=max_pixels)
        if max_side < 32 or not 0 <= min_confidence <= 100:
            raise ValueError("max_side must be >= 32 and min_confidence within 0-100")
        # JPEG draft mode may decode at a fraction of the size, never under max_side.
        self.decode_size = max_side
        self.languages = languages or ["eng"]
        self.max_side = max_side
        self.min_confidence = min_confidence
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

    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per image ``{"text": "...", "words": [{"text", "confidence", "box"}]}``."""
        import pytesseract

        self.load()
        out = []
        for img in images:
            gray = img.convert("L")
            scale = min(1.0, self.max_side / max(gray.size))
            if scale < 1.0:
                # At least a pixel: a 5000x1 strip must not become 2000x0.
                size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
                gray = gray.resize(size, Image.Resampling.LANCZOS)
            data = pytesseract.image_to_data(
                gray, lang="+".join(self.languages), output_type=pytesseract.Output.DICT
            )
            words = [
                {
                    "text": text.strip(),
                    "confidence": round(float(conf), 1),
                    # Boxes in the original image's pixels.
                    "box": [round(v / scale) for v in (left, top, width, height)],
                }
                for text, conf, left, top, width, height in zip(
                    data["text"],
                    data["conf"],
                    data["left"],
                    data["top"],
                    data["width"],
                    data["height"],
                    strict=True,
                )
                if text.strip() and float(conf) >= self.min_confidence
            ]
            out.append({"text": " ".join(w["text"] for w in words), "words": words})
        return out
