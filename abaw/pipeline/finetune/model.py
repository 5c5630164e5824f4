"""The trainable model (a timm backbone + a linear task head), its optimiser and schedule.

A start spec is either `timm:<model>?...` (hub weights, random init, or `weights=PATH`)
or `ckpt:DIR` (continue from an earlier fine-tuned checkpoint). Options as for frozen
backbones: pretrained=, weights=, size=, norm=, interp=, channels=, trust_pickle=.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from abaw.errors import AbawError
from abaw.extract.backbones import Preprocess, build_timm, parse_spec
from abaw.extract.backbones.timm import create_timm, load_backbone_weights


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
    built = build_timm(name, opts, spec, drop_path=drop_path, resize_model=True)
    source: dict[str, Any] = {"spec": spec, "pretrained": built.pretrained, **built.weights_info}
    return BuiltBackbone(built.model, name, built.kwargs, built.preprocess, built.dim, source)


def _build_from_ckpt(path: str, opts: dict[str, str], spec: str, drop_path: float) -> BuiltBackbone:
    from abaw.extract.backbones.ckpt import read_checkpoint

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
