"""Check the model extractors on CUDA: same features as on the CPU, and batched throughput.

    python scripts/gpu_check.py [--clip-dir PATH] [--photos DIR]

For a machine with a GPU (no Ray needed): global features on the packaged EfficientNet-Lite0
weights, and CLIP from ``--clip-dir`` (an open_clip ``local-dir``; a tiny random one is
made when not given), each run on ``cuda`` and on the CPU over the same photos. Prints the
largest difference between the two and images/s on CUDA by batch size. Then tags and
captions (BLIP-base, random weights): how many photos get the same words on both, images/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from extractors import build_extractor
from extractors.models import ModelExtractor

ROOT = Path(__file__).resolve().parent.parent


def tiny_clip(folder: Path) -> Path:
    """A two-layer random open_clip model in ``folder`` (config + weights)."""
    import open_clip
    import torch

    vision = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    cfg = {"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def cuda_rates(extractor: Any, blobs: list[bytes], batches: list[int], n: int) -> dict:
    """CUDA images/s of ``extractor`` by batch size over ``n`` uploads (``blobs`` repeated),
    after a warm-up batch each."""
    import torch

    many = (blobs * (-(-n // len(blobs))))[:n]
    out = {}
    for size in batches:
        extractor.extract_bytes(many[:size])
        torch.cuda.synchronize()
        start = time.perf_counter()
        for lo in range(0, len(many), size):
            extractor.extract_bytes(many[lo : lo + size])
        torch.cuda.synchronize()
        out[f"images_per_s_batch_{size}"] = round(len(many) / (time.perf_counter() - start), 1)
    return out


def check(name: str, options: dict, blobs: list[bytes], batches: list[int]) -> dict:
    """CPU-vs-CUDA agreement and CUDA images/s by batch size for one extractor."""
    import torch

    cpu = build_extractor(name, {**options, "device": "cpu"})
    gpu = build_extractor(name, {**options, "device": "cuda"})
    assert isinstance(gpu, ModelExtractor)
    a = np.stack(cpu.extract_bytes(blobs))  # type: ignore[arg-type]
    b = np.stack(gpu.extract_bytes(blobs))  # type: ignore[arg-type]
    out: dict = {
        "max_abs_diff": float(np.abs(a - b).max()),
        "min_cosine": float((a * b).sum(1).min()),
        **cuda_rates(gpu, blobs, batches, 256),
    }
    if hasattr(gpu, "embed_text"):
        t_cpu, t_gpu = cpu.embed_text(["a bridge"])[0], gpu.embed_text(["a bridge"])[0]  # type: ignore[attr-defined]
        out["text_max_abs_diff"] = float(np.abs(t_cpu - t_gpu).max())
    out["device"] = torch.cuda.get_device_name(0)
    return out


def check_text(name: str, blobs: list[bytes], batches: list[int]) -> dict:
    """Text extractors on CUDA: the share of photos with the same tags (caption) as on the
    CPU, and CUDA images/s by batch size. The captioner is BLIP-base with random weights
    (``bench/throughput.py``): its cost, not its words."""
    import torch

    from bench.throughput import blip_base_in_memory
    from extractors.textdoc import decode_doc

    def make(device: str) -> Any:
        if name == "caption":
            return blip_base_in_memory(device)
        return build_extractor(name, {"device": device})

    cpu, gpu = make("cpu"), make("cuda")
    docs = [[decode_doc(f) for f in ex.extract_bytes(blobs)] for ex in (cpu, gpu)]
    same = sum(
        [t["label"] for t in a.get("tags", [])] == [t["label"] for t in b.get("tags", [])]
        and a.get("caption") == b.get("caption")
        for a, b in zip(*docs, strict=True)
    )
    out: dict = {"same_as_cpu": f"{same}/{len(blobs)}", **cuda_rates(gpu, blobs, batches, 64)}
    out["device"] = torch.cuda.get_device_name(0)
    return out


def main() -> None:
    """Run both checks and print one JSON line per extractor."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clip-dir", type=Path, help="open_clip local-dir (default: tiny random)")
    p.add_argument("--photos", type=Path, default=ROOT / "tests" / "photos")
    p.add_argument("--batches", default="1,8,32,128")
    ns = p.parse_args()
    blobs = [f.read_bytes() for f in sorted(ns.photos.glob("*.jpg"))]
    batches = [int(b) for b in ns.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = ns.clip_dir or tiny_clip(Path(tmp))
        for name, options in (("global", {}), ("clip", {"model": f"local-dir:{clip_dir}"})):
            print(json.dumps({"extractor": name, **check(name, options, blobs, batches)}))
        for name in ("tags", "caption"):
            small = [b for b in batches if b <= 32]
            print(json.dumps({"extractor": name, **check_text(name, blobs, small)}))


if __name__ == "__main__":
    main()
