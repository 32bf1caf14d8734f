"""Scene tags from the seed's Places365 networks: categories, indoor or outdoor, and SUN
attributes (Ray-free)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from extractors.base import TextExtractor, WeightsUnavailable
from extractors.models import prepare_torch

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
    """Places365's WideResNet-18 as its demo's ``wideresnet.py`` defines it: ResNet-18's
    blocks and tensor names, but no max-pooling after the first convolution, the fourth
    stage at stride 2 like the second and third, and an average pool over the final 14x14
    map of a 224 px input."""
    from torch import nn
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.maxpool = nn.Identity()
    model.avgpool = nn.AvgPool2d(14)
    return model


def _readable(category: str) -> str:
    """A category as the Places365 demo lists it: "/a/apartment_building/outdoor" ->
    "apartment_building/outdoor"."""
    return category.strip("/").split("/", 1)[1]


class Places365Tagger(TextExtractor):
    """Scene tags as the seed's Places365 tagger gave them: ResNet-50 categories with
    probability above ``cutoff`` (0.2), indoor or outdoor by a vote of its top-10 categories,
    and the ``attributes`` strongest SUN attributes read out of WideResNet-18's pooled
    features. The six files live in ``folder`` (default ``~/.cache/places365``);
    ``scripts/fetch_models.py places`` downloads them."""

    name: ClassVar[str] = "places"
    exact: ClassVar[bool] = False
    uses_torch: ClassVar[bool] = True
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

    def _tensor(self, images: list[Image.Image], crop: bool) -> Any:
        """The networks' input as the demo makes it: the scene network's 256 x 256 centre-
        cropped to 224 (``crop``), the attribute network's 224 x 224."""
        import torch

        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        side = 256 if crop else 224
        rows = []
        for im in images:
            pixels = np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BILINEAR))
            if crop:
                edge = (side - 224) // 2
                pixels = pixels[edge : edge + 224, edge : edge + 224]
            rows.append((pixels / 255.0 - mean) / std)
        x = torch.from_numpy(np.stack(rows).astype(np.float32)).permute(0, 3, 1, 2)
        return x.to(self.device)

    def analyze(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per image ``{"tags": [{"label", "score"}, ...]}``: categories, then indoor or
        outdoor (score: its share of the top-10 vote), then the attributes (their
        read-out responses)."""
        import torch

        self.load()
        resnet, trunk = self.models
        with torch.inference_mode():
            probs = resnet(self._tensor(images, crop=True)).softmax(-1).cpu().numpy()
            pooled = trunk(self._tensor(images, crop=False)).flatten(1).cpu().numpy()
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
