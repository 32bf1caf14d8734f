"""Text analyzers (issue 5, no Ray): ImageNet tags from the global network, captions,
Places365 tags (OCR: tests/test_ocr.py)."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extractors import WeightsUnavailable
from extractors.caption import Captioner
from extractors.places import Places365Tagger, _readable
from extractors.tags import ImageNetTagger
from tests.helpers import places_dir, tiny_blip_dir


def test_imagenet_tags(photos: dict[str, bytes]) -> None:
    tagger = ImageNetTagger(cutoff=0.05)
    (tags,) = tagger.analyze([Image.open(io.BytesIO(photos["Bridge_by_Sander_Klootwijk.jpg"]))])
    labels = [t["label"] for t in tags["tags"]]
    assert "suspension bridge" in labels  # the whole frame (crop_pct 1): also poles, a crane
    assert all(t["score"] >= 0.05 for t in tags["tags"]) and len(labels) <= 5
    with pytest.raises(ValueError):
        ImageNetTagger(cutoff=0)


def test_captioner_runs_the_real_generate_path(tmp_path: Path) -> None:
    folder = tiny_blip_dir(tmp_path / "blip")
    images = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (40, 80), "blue")]
    for beams in (1, 3):
        captioner = Captioner(model=str(folder), num_beams=beams, max_new_tokens=4)
        captions = captioner.analyze(images)
        assert len(captions) == 2
        assert all("bridge" in c["caption"].split() for c in captions), captions
    with pytest.raises(WeightsUnavailable, match=r"fetch_models\.py caption"):
        Captioner(model=str(tmp_path / "nothing-here")).load()
    with pytest.raises(WeightsUnavailable, match="not available"):
        Captioner(model="Salesforce/not-cached-anywhere").load()  # offline: not in the cache
    with pytest.raises(ValueError):
        Captioner(num_beams=0)


def test_places365_tags_categories_indoor_outdoor_and_attributes(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    folder = places_dir(tmp_path)
    tagger = Places365Tagger(folder=str(folder), attributes=10)
    image = Image.open(io.BytesIO(photos["Bridge_by_Sander_Klootwijk.jpg"]))
    (doc,) = tagger.analyze([image])
    labels = [t["label"] for t in doc["tags"]]
    assert labels[0] == "bridge" and doc["tags"][0]["score"] > 0.9  # the only sure category
    assert labels[1] == "outdoor"  # the top-10 vote: only bridge's and 9 others' sides
    assert labels[2:] == [f"attribute {i}" for i in _top_attributes(tagger, image)]
    assert _readable("/a/apartment_building/outdoor") == "apartment_building/outdoor"


def _top_attributes(tagger: Places365Tagger, image: Image.Image) -> list[int]:
    import torch

    _, trunk = tagger.models
    with torch.inference_mode():
        pooled = trunk(tagger._tensor([image], crop=False))
    responses = tagger.weights @ pooled.flatten(1).numpy()[0]
    return [int(j) for j in responses.argsort()[::-1][:10]]


def test_places365_wideresnet18_is_the_demo_definition() -> None:
    """The trunk's maps for a 224 px input (no max-pool: 112 after the stem and the first
    stage; 56, 28, 14 after the strided ones; one 512-d pool), and a forward pass on fixed
    weights equal to an independent implementation of the demo's definition."""
    import torch
    from torch.nn import functional as F

    from extractors.places import wideresnet18

    torch.manual_seed(1)
    net = wideresnet18().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 224, 224)
    sides = []
    with torch.inference_mode():
        y = net.relu(net.bn1(net.conv1(x)))
        y = net.maxpool(y)
        sides.append(y.shape[-1])
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            y = stage(y)
            sides.append(y.shape[-1])
        assert sides == [112, 112, 56, 28, 14]
        assert net.avgpool(y).shape == (2, 512, 1, 1)
        got = net(x)
    w = {k: v for k, v in net.state_dict().items()}

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, w[f"{p}.running_mean"], w[f"{p}.running_var"], w[f"{p}.weight"], w[f"{p}.bias"]
        )

    def block(t: torch.Tensor, p: str, stride: int) -> torch.Tensor:
        out = F.relu(bn(F.conv2d(t, w[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
        out = bn(F.conv2d(out, w[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        if f"{p}.downsample.0.weight" in w:
            t = bn(F.conv2d(t, w[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
        return F.relu(out + t)

    with torch.inference_mode():
        ref = F.relu(bn(F.conv2d(x, w["conv1.weight"], stride=2, padding=3), "bn1"))
        for stage, stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
            ref = block(block(ref, f"layer{stage}.0", stride), f"layer{stage}.1", 1)
        ref = F.avg_pool2d(ref, 14).flatten(1) @ w["fc.weight"].T + w["fc.bias"]
    assert torch.allclose(got, ref, atol=1e-4)


def test_places365_inputs_are_the_demo_ones(tmp_path: Path, photos: dict[str, bytes]) -> None:
    """The scene network reads the photo at 256 x 256 centre-cropped to 224, the attribute
    network at 224 x 224, both with ImageNet's normalisation."""
    tagger = Places365Tagger(folder=str(places_dir(tmp_path)))
    image = Image.open(io.BytesIO(photos["Wine_by_Jakkub_Mede.jpg"])).convert("RGB")
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for crop, side in ((True, 256), (False, 224)):
        pixels = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR)) / 255.0
        edge = (side - 224) // 2
        want = (pixels[edge : edge + 224, edge : edge + 224] - mean) / std
        got = tagger._tensor([image], crop=crop)[0].permute(1, 2, 0).numpy()
        assert got.shape == (224, 224, 3) and np.allclose(got, want, atol=1e-5)


def test_places365_without_its_files_or_with_foreign_ones(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match=r"fetch_models\.py places"):
        Places365Tagger(folder=str(tmp_path)).load()  # offline here: no download tried
    folder = places_dir(tmp_path)
    (folder / "resnet50_places365.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="unreadable"):
        Places365Tagger(folder=str(folder)).load()
