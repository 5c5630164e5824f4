"""The base types of frozen feature extractors: `Preprocess`, `Backbone`, normalisations,
the weights' SHA-256 and reading weights files.

Each backbone carries its preprocessing (input size, mean/std, interpolation, channel
order) and a fingerprint (spec, dims, preprocessing, SHA-256 of the weights, library
versions) that the cache records, so features from different weights are never mixed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from abaw.errors import AbawError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Face-specific normalisation used by the ABAW7 winner (MAE ViT pre-trained on faces).
FACE_MEAN = (0.499, 0.410, 0.366)
FACE_STD = (0.297, 0.270, 0.265)
NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "face": (FACE_MEAN, FACE_STD),
         "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@dataclass(frozen=True)
class Preprocess:
    """How aligned uint8 RGB face crops become a backbone's input tensor."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # or "bicubic"
    channel_order: str = "RGB"  # or "BGR"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] uint8 RGB (any device) -> [B, 3, S, S] float32, normalised."""
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected [B, H, W, 3] uint8, got {tuple(batch.shape)} {batch.dtype}")
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if self.channel_order == "BGR":
            x = x.flip(1)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation,
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass
class Backbone:
    """A frozen feature extractor: uint8 face crops in, `dim`-d features out."""

    spec: str
    key: str  # safe name of its feature array in the cache
    model: torch.nn.Module  # [B, 3, S, S] -> [B, dim]
    dim: int
    preprocess: Preprocess
    source: dict[str, Any] = field(default_factory=dict)  # where the weights came from
    _sha: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def weights_sha256(self) -> str:
        """SHA-256 over the model's state dict (names, dtypes, shapes, bytes)."""
        if self._sha is None:
            self._sha = state_dict_sha256(self.model.state_dict())
        return self._sha

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the features, recorded in the cache."""
        import timm

        from abaw import __version__

        return {
            "spec": self.spec,
            "key": self.key,
            "dim": self.dim,
            "preprocess": asdict(self.preprocess),
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "versions": {"abaw": __version__, "torch": torch.__version__, "timm": timm.__version__},
        }

    @torch.inference_mode()
    def __call__(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Features of a [B, H, W, 3] uint8 batch, float32 on the batch's device."""
        return self.model(self.preprocess(batch_uint8)).float()


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        # flatten first: 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_state_dict_file(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read weights from .safetensors, or a torch file with `weights_only=True`.

    Accepts a plain state dict or a checkpoint holding one under `state_dict`, `model`
    or `backbone`; strips DistributedDataParallel's `module.` prefix.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AbawError(f"{path}: weights file not found")
    if path.endswith(".safetensors"):
        from abaw.safeload import load_safetensors as load_file

        sd: Any = load_file(path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as e:  # noqa: BLE001 - torch raises several types here
            hint = "" if trust_pickle else " (if it is a trusted pickle, pass trust_pickle=1)"
            raise AbawError(f"{path}: cannot load weights: {str(e).splitlines()[0]}{hint}") from None
    if isinstance(sd, torch.nn.Module):
        sd = sd.state_dict()
    if isinstance(sd, dict):
        for k in ("state_dict", "model", "backbone"):
            if k in sd and isinstance(sd[k], dict):
                sd = sd[k]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise AbawError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}
