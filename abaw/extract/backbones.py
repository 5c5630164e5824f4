"""Frozen feature extractors ("backbones") and their registry.

A backbone spec is `family:name` plus optional `?key=value&...` options, e.g.

    timm:vit_base_patch16_224.mae                      pretrained hub weights (online)
    timm:test_efficientnet_gn?size=112&pretrained=0     random init, native 112 px crops
    timm:resnet50?weights=/path/finetuned.safetensors   local weights
    timm:vit_base_patch16_224?norm=face                 the ABAW7 winner's face mean/std

Families register with `@register_backbone("family")`. Each backbone carries its
preprocessing (input size, mean/std, interpolation, channel order) and a fingerprint
(spec, dims, preprocessing, SHA-256 of the weights, library versions) that the cache
records, so features from different weights are never mixed.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl

import torch
import torch.nn.functional as F

from abaw.errors import AbawError
from abaw.fingerprint import file_sha256, same_features  # noqa: F401  (re-exported)
from abaw.registry import Registry

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


BackboneFactory = Callable[..., Backbone]
BACKBONES: Registry[BackboneFactory] = Registry("backbone family")


def register_backbone(family: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory `fn(name, options: dict[str, str], spec: str) -> Backbone`."""
    return BACKBONES.register(family)


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """`family:name?k=v&k2=v2` -> (family, name, options)."""
    if ":" not in spec:
        raise AbawError(f"backbone spec {spec!r}: expected family:name, e.g. timm:resnet50")
    family, rest = spec.split(":", 1)
    name, _, query = rest.partition("?")
    if not name:
        raise AbawError(f"backbone spec {spec!r}: empty name")
    opts = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    return family, name, opts


def spec_key(spec: str) -> str:
    """A cache-safe array name for a spec (`key=` option overrides)."""
    _, _, opts = parse_spec(spec)
    if "key" in opts:
        key = opts["key"]
    else:
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.replace("?", "_").replace("&", "_")).strip("_")
    if not key or key.startswith("__") or key in (".", ".."):
        raise AbawError(f"backbone spec {spec!r}: unusable cache key {key!r}")
    return key


def create_backbone(spec: str, device: str | torch.device = "cpu") -> Backbone:
    """Build a frozen backbone from its spec and move it to `device`."""
    family, name, opts = parse_spec(spec)
    bb = BACKBONES.get(family)(name, opts, spec)
    bb.model.to(device)
    return bb


def _bool(opts: dict[str, str], name: str, default: bool) -> bool:
    v = opts.get(name)
    if v is None:
        return default
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise AbawError(f"option {name}={v!r}: expected 0/1")


def preprocess_from_options(opts: dict[str, str], default: Preprocess) -> Preprocess:
    """Apply `size=`, `norm=` (imagenet|face|half), `interp=`, `channels=` options."""
    kw: dict[str, Any] = {}
    if "size" in opts:
        try:
            kw["input_size"] = int(opts["size"])
        except ValueError:
            raise AbawError(f"option size={opts['size']!r}: expected an integer") from None
    if "norm" in opts:
        if opts["norm"] not in NORMS:
            raise AbawError(f"option norm={opts['norm']!r}: expected one of {sorted(NORMS)}")
        kw["mean"], kw["std"] = NORMS[opts["norm"]]
    if "interp" in opts:
        if opts["interp"] not in ("bilinear", "bicubic"):
            raise AbawError("option interp: expected bilinear or bicubic")
        kw["interpolation"] = opts["interp"]
    if "channels" in opts:
        if opts["channels"] not in ("RGB", "BGR"):
            raise AbawError("option channels: expected RGB or BGR")
        kw["channel_order"] = opts["channels"]
    return Preprocess(**{**asdict(default), **kw})


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


def timm_weights_options(name: str, opts: dict[str, str], spec: str) -> tuple[str | None, bool]:
    """Check a timm spec's model name and `weights=` / `pretrained=` options: (weights path, pretrained)."""
    import timm

    weights = opts.get("weights")
    pretrained = _bool(opts, "pretrained", default=weights is None)
    if weights and pretrained:
        raise AbawError(f"{spec}: give either weights= or pretrained=1, not both")
    if not timm.is_model(name):
        raise AbawError(f"{spec}: timm has no model {name!r}")
    return weights, pretrained


@register_backbone("timm")
def timm_backbone(name: str, opts: dict[str, str], spec: str) -> Backbone:
    """Any timm model as a frozen extractor of pooled pre-classifier features.

    Options: pretrained=1|0 (hub weights; default 1 unless weights= is given),
    weights=PATH, size=, norm=, interp=, channels=, key=, trust_pickle=1.
    """
    import timm

    weights, pretrained = timm_weights_options(name, opts, spec)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random init is reproducible, so its fingerprint is stable
            model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        if pretrained:
            raise AbawError(
                f"{spec}: could not get pretrained weights ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                "offline? use pretrained=0 for random init or weights=PATH"
            ) from None
        raise
    source: dict[str, Any] = {"pretrained": pretrained}
    if weights:
        sd = load_state_dict_file(weights, trust_pickle=_bool(opts, "trust_pickle", False))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith(("head.", "fc.", "classifier."))]
        if missing:
            raise AbawError(f"{weights}: {len(missing)} backbone weights missing, e.g. {missing[:3]}")
        source.update(weights=os.path.abspath(weights), weights_file_sha256=file_sha256(weights),
                      unexpected_keys=len(unexpected))
    cfg = model.pretrained_cfg or {}
    default = Preprocess(
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        interpolation="bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
    )
    pre = preprocess_from_options(opts, default)
    return Backbone(spec=spec, key=spec_key(spec), model=model, dim=int(model.num_features),
                    preprocess=pre, source=source)


# Other backbone families register themselves on import (kept at the bottom: they use the above).
from abaw.extract import ckpt as _ckpt  # noqa: E402,F401  fine-tuned checkpoints: ckpt:DIR
from abaw.extract import hsemotion as _hsemotion  # noqa: E402,F401  HSEmotion / EmotiEffLib models
from abaw.extract import mtcnn_backbone as _mtcnn  # noqa: E402,F401  MTCNN's face networks: mtcnn:onet
