"""The trainable model (a timm backbone + a linear task head), its optimiser and schedule.

A start spec is either `timm:<model>?...` (hub weights, random init, or `weights=PATH`)
or `ckpt:DIR` (continue from an earlier fine-tuned checkpoint). Options as for frozen
backbones: pretrained=, weights=, size=, norm=, interp=, channels=, trust_pickle=.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from abaw.errors import AbawError
from abaw.extract.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    _bool,
    file_sha256,
    load_state_dict_file,
    parse_spec,
    preprocess_from_options,
    timm_weights_options,
)

TIMM_OPTIONS = {"pretrained", "weights", "size", "norm", "interp", "channels", "trust_pickle", "key"}
HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.")


class TaskHead(nn.Module):
    """Dropout + one linear layer on the pooled backbone features."""

    def __init__(self, dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))


class FinetuneModel(nn.Module):
    """backbone ([B, 3, S, S] -> [B, D] pooled features) + task head."""

    def __init__(self, backbone: nn.Module, head: TaskHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass
class BuiltBackbone:
    model: nn.Module
    timm_model: str
    model_kwargs: dict[str, Any]  # extra timm.create_model arguments (img_size)
    preprocess: Preprocess
    dim: int
    source: dict[str, Any] = field(default_factory=dict)


def is_vit_like(model: nn.Module) -> bool:
    """Transformer with a patch embedding and a stack of blocks (ViT, DeiT, EVA, ...)."""
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


def _resample_pos_embed(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt a ViT's absolute position embedding to the model's grid (other input size)."""
    own = model.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        sd = dict(sd)
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=list(model.patch_embed.grid_size),
                                                 num_prefix_tokens=prefix)
    return sd


def load_backbone_weights(model: nn.Module, sd: dict[str, torch.Tensor], path: str, strict: bool) -> int:
    """Load a state dict into a headless timm model; returns the number of ignored keys."""
    sd = _resample_pos_embed(sd, model)
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise AbawError(f"{path}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise AbawError(f"{path}: weights do not match the model ({len(missing)} missing, e.g. {missing[:2]}; "
                        f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    missing = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    if missing:
        raise AbawError(f"{path}: {len(missing)} backbone weights missing, e.g. {missing[:3]}")
    return len(unexpected)


def create_timm(name: str, kwargs: dict[str, Any], pretrained: bool, drop_path: float, spec: str) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise AbawError(f"{spec}: timm has no model {name!r}")
    kw = dict(kwargs)
    if drop_path > 0:
        kw["drop_path_rate"] = drop_path
    try:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **kw)
        except TypeError:
            if "drop_path_rate" not in kw:
                raise
            kw.pop("drop_path_rate")  # a model without stochastic depth
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **kw)
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        if pretrained:
            raise AbawError(
                f"{spec}: could not get pretrained weights ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                "offline? use pretrained=0 for random init or weights=PATH") from None
        raise


def with_options(spec: str, **options: str | None) -> str:
    """`spec` with extra `?key=value` options (None values skipped); a clash is an error."""
    from urllib.parse import urlencode

    family, name, opts = parse_spec(spec)
    for k, v in options.items():
        if v is None:
            continue
        if k in opts and opts[k] != v:
            raise AbawError(f"{spec}: {k}={opts[k]} in the spec conflicts with --{k.replace('_', '-')} {v}")
        opts[k] = v
    return f"{family}:{name}" + (f"?{urlencode(opts, safe='/:.,~')}" if opts else "")


def build_backbone(spec: str, drop_path: float = 0.0) -> BuiltBackbone:
    """A trainable backbone (classifier removed) with its preprocessing, from a start spec.

    Call under a seeded RNG for a reproducible random init.
    """
    family, name, opts = parse_spec(spec)
    if family == "ckpt":
        return _build_from_ckpt(name, opts, spec, drop_path)
    if family != "timm":
        raise AbawError(f"{spec}: fine-tuning starts from timm:<model> or ckpt:<dir>, not {family}:")
    unknown = set(opts) - TIMM_OPTIONS
    if unknown:
        raise AbawError(f"{spec}: unknown options {sorted(unknown)} (known: {sorted(TIMM_OPTIONS)})")
    import timm

    weights, pretrained = timm_weights_options(name, opts, spec)
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    native = int(cfg.get("input_size", (3, 224, 224))[-1])
    default = Preprocess(
        input_size=native,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        interpolation="bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
    )
    pre = preprocess_from_options(opts, default)
    kwargs: dict[str, Any] = {}
    if pre.input_size != native and cfg.get("fixed_input_size", False):
        kwargs["img_size"] = pre.input_size  # e.g. a ViT at 112 px: position embedding resampled
    model = create_timm(name, kwargs, pretrained, drop_path, spec)
    source: dict[str, Any] = {"spec": spec, "pretrained": pretrained}
    if weights:
        sd = load_state_dict_file(weights, trust_pickle=_bool(opts, "trust_pickle", False))
        ignored = load_backbone_weights(model, sd, weights, strict=False)
        source.update(weights=os.path.abspath(weights), weights_file_sha256=file_sha256(weights),
                      ignored_keys=ignored)
    return BuiltBackbone(model, name, kwargs, pre, int(model.num_features), source)


def _build_from_ckpt(path: str, opts: dict[str, str], spec: str, drop_path: float) -> BuiltBackbone:
    from abaw.extract.ckpt import read_checkpoint

    if set(opts) - {"key"}:
        raise AbawError(f"{spec}: a checkpoint carries its own preprocessing; options {sorted(opts)} not allowed")
    ck = read_checkpoint(path)
    model = create_timm(ck.timm_model, ck.model_kwargs, False, drop_path, spec)
    load_backbone_weights(model, ck.load_weights(), str(ck.weights_path), strict=True)
    source = {"spec": spec, "checkpoint": str(ck.dir), "weights_file_sha256": ck.weights_file_sha256,
              "task": ck.task}
    return BuiltBackbone(model, ck.timm_model, ck.model_kwargs, ck.preprocess, ck.dim, source)


def param_groups(model: FinetuneModel, lr: float, head_lr: float, weight_decay: float,
                 layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: backbone layers at lr x layer_decay^(depth from top), the head at head_lr.

    Biases, norms and embeddings (1-d tensors, model.no_weight_decay()) get no weight decay.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    bb = model.backbone
    skip = set(bb.no_weight_decay()) if hasattr(bb, "no_weight_decay") else set()
    if layer_decay < 1.0 and not hasattr(bb, "group_matcher"):
        raise AbawError(f"{type(bb).__name__} has no layer grouping (timm group_matcher); use --layer-decay 1")
    if layer_decay < 1.0:
        groups = param_groups_layer_decay(bb, weight_decay=weight_decay, no_weight_decay_list=skip,
                                          layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(bb, weight_decay=weight_decay, no_weight_decay_list=skip)
    out = []
    for g in groups:
        scale = float(g.pop("lr_scale", 1.0))
        out.append({**g, "lr": lr * scale, "name": f"backbone x{scale:.4g}"})
    head_decay = [p for n, p in model.head.named_parameters() if p.ndim > 1]
    head_plain = [p for n, p in model.head.named_parameters() if p.ndim <= 1]
    out.append({"params": head_decay, "weight_decay": weight_decay, "lr": head_lr, "name": "head"})
    out.append({"params": head_plain, "weight_decay": 0.0, "lr": head_lr, "name": "head"})
    return [g for g in out if g["params"]]
