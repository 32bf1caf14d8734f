"""Extractors whose feature is text: tags (ImageNet classes from the global-features
network's forward pass), OCR (Tesseract) and captions (a transformers image-to-text model).
Ray-free. Each ``analyze``s a batch into one JSON document per image; as features, the
documents travel encoded (``encode_doc``) and the text index makes their words searchable.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from extractors.base import Extractor, Kind, WeightsUnavailable, encode_doc
from extractors.global_features import GlobalFeatures
from extractors.models import prepare_torch


class TextExtractor(Extractor):
    """An extractor whose feature is a JSON document (kind ``text``), of variable length."""

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


class ImageNetTagger(TextExtractor, GlobalFeatures):
    """Tags from the ImageNet classifier of a global-features network (timm; the packaged
    EfficientNet-Lite0 by default): the readable class names whose probability is at least
    ``cutoff``, at most ``top`` of them, best first. Other options as ``GlobalFeatures``',
    but the crop is classification's centre crop (``crop_pct`` 0.875): on the shipped
    photos it makes the right labels likelier (dragonfly 0.05 -> 0.13, wall clock 0.40 ->
    0.64). A low cutoff: photos are not ImageNet's one-object pictures, and a tag under 0.1
    is often still right (suspension bridge, 0.11). ``TextExtractor`` comes first: its kind
    and ``extract``, the network's loading, batching and threads."""

    name: ClassVar[str] = "tags"

    def __init__(self, cutoff: float = 0.05, top: int = 5, **global_options: Any) -> None:
        if not 0.0 < cutoff <= 1.0 or top < 1:
            raise ValueError("cutoff must be in (0, 1] and top >= 1")
        super().__init__(**{"crop_pct": 0.875, **global_options})
        self.dim = 0
        self.cutoff = cutoff
        self.top = top
        self._labels: list[str] | None = None

    def load(self) -> None:
        """Load the network (``WeightsUnavailable`` with the fix when its weights are missing)."""
        super().load()
        if self._labels is None:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            # Checked here, not per batch: a model of other classes makes the feature
            # unavailable (its reason in /health), and uploads store everything else.
            classes = getattr(self.model, "num_classes", None)
            if classes != info.num_classes():
                raise WeightsUnavailable(
                    f"tags ({self.model_name}): the model has {classes} classes, not "
                    f"ImageNet's {info.num_classes()}: choose an ImageNet-1k model"
                )
            # "tiger shark, Galeocerdo cuvieri" -> "tiger shark": the common name.
            self._labels = [
                info.index_to_description(i).split(",")[0].strip()
                for i in range(info.num_classes())
            ]

    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per image ``{"tags": [{"label", "score"}, ...]}``."""
        self.load()
        assert self._labels is not None
        _, probs = self.forward(images)
        out = []
        for row in probs:
            best = row.argsort()[::-1][: self.top]
            tags = [
                {"label": self._labels[j], "score": round(float(row[j]), 4)}
                for j in best
                if row[j] >= self.cutoff
            ]
            out.append({"tags": tags})
        return out


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


class Captioner(TextExtractor):
    """Captions from a transformers image-to-text model (BLIP, GIT, ...): ``model`` is a hub
    id (looked up in the local cache while ``HF_HUB_OFFLINE=1``) or a local folder with the
    model and its processor; ``num_beams`` / ``max_new_tokens`` set the beam search.
    ``decode_size``: images are decoded at least this large (captioners read 224-384 px)."""

    name: ClassVar[str] = "caption"
    pool: ClassVar[str] = "caption"
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


#: The Places365 files (CSAIL, the seed's tagger): two CNNs, their labels, the indoor/outdoor
#: split of the categories and the SUN attributes' linear read-out of WideResNet-18.
PLACES_MODELS = "http://places2.csail.mit.edu/models_places365/"
PLACES_LABELS = "https://raw.githubusercontent.com/csailvision/places365/master/"
PLACES_FILES = {
    "resnet50_places365.pth.tar": PLACES_MODELS,
    "wideresnet18_places365.pth.tar": PLACES_MODELS,
    "W_sceneattribute_wideresnet18.npy": PLACES_MODELS,
    "categories_places365.txt": PLACES_LABELS,
    "IO_places365.txt": PLACES_LABELS,
    "labels_sunattribute.txt": PLACES_LABELS,
}


def wideresnet18(num_classes: int = 365) -> Any:
    """Places365's WideResNet-18: torchvision's ResNet-18 (same tensor names) whose last
    stage keeps stride 1, so a 224 px input leaves a 14x14 map for the attributes."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    first = model.layer4[0]
    first.conv1.stride = (1, 1)
    assert first.downsample is not None
    first.downsample[0].stride = (1, 1)
    return model


def _readable(category: str) -> str:
    """ "/a/apartment_building/outdoor" -> "apartment building (outdoor)"."""
    name, _, kind = category.strip("/").split("/", 1)[1].partition("/")
    return name.replace("_", " ") + (f" ({kind.replace('_', ' ')})" if kind else "")


class Places365Tagger(TextExtractor):
    """Scene tags as the seed's Places365 tagger gave them: ResNet-50 categories with
    probability above ``cutoff`` (0.2), indoor or outdoor by a vote of its top-10 categories,
    and the ``attributes`` strongest SUN attributes read out of WideResNet-18's pooled
    features. The six files live in ``folder`` (default ``~/.cache/places365``);
    ``scripts/fetch_models.py places`` downloads them."""

    name: ClassVar[str] = "places"
    exact: ClassVar[bool] = False
    uses_torch: ClassVar[bool] = True
    pool: ClassVar[str] = "models"
    failure_status: ClassVar[int] = 503
    #: The seed's transform resizes to 224x224; draft decoding may stop there.
    decode_size = 224

    def __init__(
        self,
        folder: str | None = None,
        cutoff: float = 0.2,
        attributes: int = 10,
        device: str = "cpu",
        threads: int | None = None,
        max_pixels: int = 100_000_000,
    ) -> None:
        super().__init__(max_pixels=max_pixels)
        if not 0.0 < cutoff <= 1.0 or attributes < 0:
            raise ValueError("cutoff must be in (0, 1] and attributes >= 0")
        self.folder = Path(folder or Path.home() / ".cache" / "places365").expanduser()
        self.cutoff = cutoff
        self.attributes = attributes
        self.device = device
        self.threads = threads
        self._lock = threading.Lock()
        self.models: Any = None

    def _files(self) -> dict[str, Path]:
        """The six files, downloaded first where missing and hub downloads are allowed."""
        from extractors.weights import FETCH, offline

        paths = {name: self.folder / name for name in PLACES_FILES}
        missing = [n for n, p in paths.items() if not p.is_file()]
        if missing and not offline():
            import urllib.request

            self.folder.mkdir(parents=True, exist_ok=True)
            for name in missing:
                part = paths[name].with_suffix(".part")
                try:
                    urllib.request.urlretrieve(PLACES_FILES[name] + name, part)
                except OSError as exc:
                    raise WeightsUnavailable(f"places: download of {name} failed: {exc}") from None
                part.rename(paths[name])
            missing = []
        if missing:
            raise WeightsUnavailable(
                f"places: {', '.join(missing)} not in {self.folder}; fetch them with "
                f"{FETCH.format(feature='places')}"
            )
        return paths

    def load(self) -> None:
        """Load both networks and the label files (``WeightsUnavailable`` naming the fix)."""
        with self._lock:
            if self.models is not None:
                return
            import torch
            from torchvision.models import resnet50

            from extractors.weights import read_state_dict

            prepare_torch(self.name, self.device, self.threads)
            paths = self._files()
            nets = []
            for arch, file in ((resnet50, "resnet50"), (wideresnet18, "wideresnet18")):
                path = paths[f"{file}_places365.pth.tar"]
                state = read_state_dict(path, "places")
                net = arch(num_classes=365)
                try:
                    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
                except RuntimeError as exc:
                    first = str(exc).splitlines()[0]
                    raise WeightsUnavailable(f"places: {path} does not fit: {first}") from None
                nets.append(net.to(self.device).eval())
            lines = paths["categories_places365.txt"].read_text().split("\n")
            self.categories = [_readable(line.split()[0]) for line in lines if line.strip()]
            io = paths["IO_places365.txt"].read_text().split("\n")
            #: 1 for an outdoor category, 0 for an indoor one (the file says 2 and 1).
            self.outdoor = np.array([int(line.split()[-1]) - 1 for line in io if line.strip()])
            text = paths["labels_sunattribute.txt"].read_text()
            self.attribute_names = [a.strip() for a in text.split("\n") if a.strip()]
            self.weights = np.load(paths["W_sceneattribute_wideresnet18.npy"])
            if (
                len(self.categories) != 365
                or len(self.outdoor) != 365
                or self.weights.shape != (len(self.attribute_names), 512)
            ):
                raise WeightsUnavailable(f"places: label files in {self.folder} do not fit")
            resnet, wide = nets
            # The attributes read WideResNet-18's pooled features: the network without fc.
            self.models = (resnet, torch.nn.Sequential(*list(wide.children())[:-1]))

    def _tensor(self, images: list[Image.Image]) -> Any:
        import torch

        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        rows = [
            (
                np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)) / 255.0
                - mean
            )
            / std
            for im in images
        ]
        x = torch.from_numpy(np.stack(rows).astype(np.float32)).permute(0, 3, 1, 2)
        return x.to(self.device)

    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per image ``{"tags": [{"label", "score"}, ...]}``: categories, then indoor or
        outdoor (score: its share of the top-10 vote), then the attributes (their
        read-out responses)."""
        import torch

        self.load()
        resnet, trunk = self.models
        x = self._tensor(images)
        with torch.inference_mode():
            probs = resnet(x).softmax(-1).cpu().numpy()
            pooled = trunk(x).flatten(1).cpu().numpy()
        out = []
        for p, feat in zip(probs, pooled, strict=True):
            order = p.argsort()[::-1]
            tags = [
                {"label": self.categories[j], "score": round(float(p[j]), 4)}
                for j in order[:5]
                if p[j] > self.cutoff
            ]
            share = float(self.outdoor[order[:10]].mean())
            tags.append(
                {"label": "outdoor", "score": round(share, 2)}
                if share >= 0.5
                else {"label": "indoor", "score": round(1 - share, 2)}
            )
            responses = self.weights @ feat
            tags += [
                {"label": self.attribute_names[j], "score": round(float(responses[j]), 3)}
                for j in responses.argsort()[::-1][: self.attributes]
            ]
            out.append({"tags": tags})
        return out
