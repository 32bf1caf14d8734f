"""Small image builders shared by the tests."""

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode an image to bytes in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def store_photos(client: Any, photos: dict[str, bytes], features: dict[str, str]) -> None:
    """POST every photo as ids 1..n in name order; each must store exactly ``features``."""
    for i, (name, data) in enumerate(sorted(photos.items()), start=1):
        upload = {"image": (name, data, "image/jpeg")}
        r = client.post("/images", files=upload, data={"image_id": i})
        assert r.status_code == 200, r.text
        assert r.json() == {"image_id": i, "file_name": name, "features": features}


def photo_id(photos: dict[str, bytes], name: str) -> int:
    """The id ``store_photos`` gave the photo ``name`` (1..n in name order)."""
    return sorted(photos).index(name) + 1


def png_bomb(side: int = 20000) -> bytes:
    """A real decompression bomb: a side x side PNG of one colour, a few tens of KB on disk."""
    return encode(Image.new("1", (side, side)), "PNG")


def reencode(data: bytes, scale: float = 1.0, quality: int = 75, mirror: bool = False) -> bytes:
    """A resized / recompressed / mirrored copy of a JPEG."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        img = img.resize(
            (int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS
        )
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return encode(img, "JPEG", quality=quality)


#: A CLIP a few layers deep: the real open_clip code, in well under a second.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_clip_dir(path: Path) -> Path:
    """An open_clip ``local-dir`` model (config + random, seeded weights) under ``path``."""
    import open_clip
    import torch

    path.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {}}
    (path / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)  # type: ignore[arg-type]
    torch.save(model.state_dict(), path / "open_clip_pytorch_model.bin")
    return path


def transformed(data: bytes) -> dict[str, bytes]:
    """The retrieval-quality transforms of a photo: name -> JPEG bytes."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    cw, ch = int(w * 0.7**0.5), int(h * 0.7**0.5)  # 70 % of the area
    crop = img.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))
    return {
        "resize_25": reencode(data, scale=0.25, quality=90),
        "jpeg_30": reencode(data, quality=30),
        "crop_70": encode(crop, "JPEG", quality=90),
        "mirror": reencode(data, mirror=True, quality=90),
        "bright_30": encode(ImageEnhance.Brightness(img).enhance(1.3), "JPEG", quality=90),
    }


#: The words of the tiny captioner's vocabulary (BERT's special tokens first).
TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "bridge", "red"]


def tiny_blip_dir(path: Path, favour: str = "bridge") -> Path:
    """A BLIP captioner a few layers deep (model + processor, the real transformers classes)
    under ``path``; random weights, except that its output prefers the word ``favour``."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab = {w: i for i, w in enumerate(TINY_WORDS)}
    tokenizer = BertTokenizer(vocab=vocab)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    config = BlipConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "num_hidden_layers": 2,
            "encoder_hidden_size": 32,
            "bos_token_id": vocab["[CLS]"],
            "sep_token_id": vocab["[SEP]"],
            "pad_token_id": vocab["[PAD]"],
        },
        vision_config={**small, "num_hidden_layers": 2, "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[vocab[favour]] += 20.0
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def places_dir(path: Path) -> Path:
    """The six Places365 files under ``path``, in the published formats (checkpoints with
    ``module.`` keys under ``state_dict``, the label files), with random networks whose
    ResNet-50 is sure of category 0, "/b/bridge", an outdoor one."""
    import numpy as np
    import torch
    from torchvision.models import resnet50

    from extractors.places import wideresnet18

    torch.manual_seed(0)
    for name, net in (("resnet50", resnet50(num_classes=365)), ("wideresnet18", wideresnet18())):
        if name == "resnet50":
            with torch.no_grad():
                net.fc.bias[0] += 30.0
        state = {f"module.{k}": v for k, v in net.state_dict().items()}
        torch.save(
            {"epoch": 1, "arch": name, "state_dict": state}, path / f"{name}_places365.pth.tar"
        )
    categories = ["/b/bridge", "/a/apartment_building/outdoor"] + [
        f"/c/category_{i}" for i in range(2, 365)
    ]
    (path / "categories_places365.txt").write_text(
        "\n".join(f"{c} {i}" for i, c in enumerate(categories)) + "\n"
    )
    # Outdoor (2) but for a few indoor (1) ones.
    (path / "IO_places365.txt").write_text(
        "\n".join(f"{c} {1 if i % 50 == 7 else 2}" for i, c in enumerate(categories)) + "\n"
    )
    (path / "labels_sunattribute.txt").write_text("\n".join(f"attribute {i}" for i in range(102)))
    rng = np.random.default_rng(0)
    np.save(
        path / "W_sceneattribute_wideresnet18.npy", rng.normal(size=(102, 512)).astype(np.float32)
    )
    return path


def distinct_uploads(photos: dict[str, bytes], n: int) -> list[bytes]:
    """``n`` uploads whose features differ: the photos at a quarter scale, then mirrored (a
    new phash, the colours of the unmirrored one), then cropped to their middle parts."""
    base = list(photos.values())
    out = []
    for i in range(n):
        data, k = base[i % len(base)], i // len(base)
        if k >= 2:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            w, h = img.size
            m = 0.05 * k
            data = encode(img.crop((int(m * w), int(m * h), int((1 - m) * w), int((1 - m) * h))))
        out.append(reencode(data, scale=0.25, mirror=k % 2 == 1))
    return out


def one_upload(rows: dict[str, dict[int, bytes]], image_id: int, refs: list[int]) -> list[int]:
    """The references (ids stored once with each upload's features) whose every feature
    equals ``image_id``'s: empty when its features come from different uploads."""
    return [r for r in refs if all(by_id.get(image_id) == by_id[r] for by_id in rows.values())]
