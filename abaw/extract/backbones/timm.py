"""`timm:` backbones, and the one timm model builder shared with fine-tuning.

`build_timm(name, opts, spec)` checks the options, creates the headless timm model
(hub weights, random init or `weights=PATH`), loads local weights and derives the
preprocessing from the model's pretrained config and the spec's options. The `timm`
family wraps it as a frozen extractor; `abaw finetune` trains the same model.

`pool=avg|token` is timm's `global_pool` (ViTs: mean of the patch tokens, or the class
token); as in timm, average pooling moves the final LayerNorm after the pool (`fc_norm`).
The ABAW7 winner's MAE ViT features are `pool=avg`.

Local weights may come in the layouts face-ViT projects save (`match_layout`): keys under
`module.model.`, `model.`, `module.`, `backbone.` or `encoder.` (the prefix that matches
most of the model's keys wins; keys outside it are ignored and named), MAE pre-training
checkpoints (`{"model": ...}` with decoder weights and `mask_token`, dropped), and the
final norm saved as `norm` for a `pool=avg` model (MAE pre-training has no `fc_norm`:
it starts as an identity LayerNorm, as when MAE fine-tuning begins). Missing backbone
weights are an error naming them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from abaw.errors import AbawError
from abaw.extract.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocess, load_state_dict_file
from abaw.extract.backbones.registry import (
    PREPROCESS_OPTIONS,
    TRUST_PICKLE,
    Option,
    bool_option,
    parse_int,
    preprocess_from_options,
    register_backbone,
    spec_key,
)
from abaw.fingerprint import file_sha256

TIMM_OPTIONS = (
    Option("pretrained", "bool", None, "hub weights (default 1 unless weights= is given)"),
    Option("weights", "str", None, "local weights file (.safetensors, or a torch state dict)"),
    Option("pool", "choice", None, "timm's global_pool: avg (mean of patch tokens, then fc_norm) or token "
           "(class token) (default: the model's)", choices=("avg", "token")),
    *PREPROCESS_OPTIONS,
    TRUST_PICKLE,
)
HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.")
LAYOUT_PREFIXES = ("module.model.", "model.", "module.", "backbone.", "encoder.")
MAE_DECODER_PREFIXES = ("decoder_", "mask_token")  # MAE pre-training: decoder and mask token


@dataclass
class TimmModel:
    """A headless timm model with its preprocessing and where its weights came from."""

    model: nn.Module  # [B, 3, S, S] -> [B, num_features]
    name: str
    kwargs: dict[str, Any]  # extra timm.create_model arguments (img_size)
    preprocess: Preprocess
    pretrained: bool
    weights: str | None = None  # local weights file
    weights_info: dict[str, Any] = field(default_factory=dict)  # its path, SHA-256, ignored keys

    @property
    def dim(self) -> int:
        return int(self.model.num_features)


def timm_weights_options(name: str, opts: dict[str, str], spec: str) -> tuple[str | None, bool]:
    """Check a timm spec's model name and `weights=` / `pretrained=` options: (weights path, pretrained)."""
    import timm

    weights = opts.get("weights")
    pretrained = bool_option(opts, "pretrained", default=weights is None)
    if weights and pretrained:
        raise AbawError(f"{spec}: give either weights= or pretrained=1, not both")
    if not timm.is_model(name):
        raise AbawError(f"{spec}: timm has no model {name!r}")
    return weights, pretrained


def create_timm(name: str, kwargs: dict[str, Any], pretrained: bool, drop_path: float, spec: str) -> nn.Module:
    """`timm.create_model` without classifier; hub failures become one-line AbawErrors."""
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
        if "global_pool" in kw and "pool" in str(e).lower():
            raise AbawError(f"{spec}: {name} does not support pool={kw['global_pool']} "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        if pretrained:
            raise AbawError(
                f"{spec}: could not get pretrained weights ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                "offline? use pretrained=0 for random init or weights=PATH") from None
        raise


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


def _names(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def match_layout(sd: dict[str, torch.Tensor], own: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map a checkpoint's keys onto a model's (`own`): strip the best-matching prefix, drop
    MAE decoder weights, and load a `norm` saved for an `fc_norm` model as nothing (fc_norm
    keeps its identity init). Returns (state dict, layout report: prefix, dropped and
    ignored key names, keys left at their init)."""
    def hits(p: str) -> int:
        return sum(1 for k in sd if k.startswith(p) and k[len(p):] in own)

    prefix = max(("", *LAYOUT_PREFIXES), key=hits)  # ties: the first (no prefix) wins
    mapped: dict[str, torch.Tensor] = {}
    outside: list[str] = []
    dropped: list[str] = []
    for k, v in sd.items():
        if not k.startswith(prefix):
            outside.append(k)
        elif k[len(prefix):].startswith(MAE_DECODER_PREFIXES) and k[len(prefix):] not in own:
            dropped.append(k)
        else:
            mapped[k[len(prefix):]] = v
    report: dict[str, Any] = {}
    if prefix:
        report["prefix"] = prefix
    if outside:
        report["outside_prefix"] = sorted(outside)
    if dropped:
        report["mae_decoder_dropped"] = len(dropped)
    fc = [k for k in ("fc_norm.weight", "fc_norm.bias") if k in own]
    if fc and not any(k in mapped for k in fc) and "norm.weight" in mapped and "norm.weight" not in own:
        report["initialised"] = fc  # MAE pre-training layout: fc_norm starts as identity
    return mapped, report


def load_backbone_weights(model: nn.Module, sd: dict[str, torch.Tensor], path: str, strict: bool) -> dict[str, Any]:
    """Load a state dict into a headless timm model (any `match_layout` layout unless `strict`).

    Returns what happened: `ignored_keys` (count of checkpoint keys not loaded) and, when
    the layout was not the model's own, `layout` (prefix, ignored names, keys left at init).
    Missing backbone weights are an AbawError naming them."""
    own = model.state_dict()
    report: dict[str, Any] = {}
    if not strict:
        sd, report = match_layout(sd, set(own))
    sd = _resample_pos_embed(sd, model)
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise AbawError(f"{path}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise AbawError(f"{path}: weights do not match the model ({len(missing)} missing, e.g. {missing[:2]}; "
                        f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    missing = [k for k in missing if not k.startswith(HEAD_PREFIXES) and k not in report.get("initialised", ())]
    if missing:
        hint = ""
        if any(k.startswith("norm.") for k in missing) and "fc_norm.weight" in sd:
            hint = " (the checkpoint has fc_norm: it was trained with average pooling; add pool=avg)"
        raise AbawError(f"{path}: {len(missing)} backbone weights missing: {_names(missing)}{hint}")
    ignored = sorted(report.get("outside_prefix", [])) + sorted(unexpected)
    if unexpected:
        report["unexpected"] = sorted(unexpected)
    return {"ignored_keys": len(ignored) + report.get("mae_decoder_dropped", 0),
            **({"layout": report} if report else {})}


def _default_preprocess(cfg: dict[str, Any]) -> Preprocess:
    return Preprocess(
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        interpolation="bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
    )


def build_timm(name: str, opts: dict[str, str], spec: str, *, drop_path: float = 0.0, seed: int | None = None,
               resize_model: bool = False) -> TimmModel:
    """The headless timm model of a `timm:` spec (options as declared in TIMM_OPTIONS).

    `seed`: random init under this seed (the caller's RNG is left as it was), so the
    weights, hence the fingerprint, are reproducible. `resize_model`: a model with a fixed
    input size (ViT) is built for `size=` (position embedding resampled) instead of
    keeping its native size.
    """
    import timm

    weights, pretrained = timm_weights_options(name, opts, spec)
    kwargs: dict[str, Any] = {}
    if "pool" in opts:
        kwargs["global_pool"] = opts["pool"]
    if resize_model and "size" in opts:
        cfg = timm.get_pretrained_cfg(name)
        cfg = cfg.to_dict() if cfg is not None else {}
        size = parse_int(opts["size"], "size")
        if size != _default_preprocess(cfg).input_size and cfg.get("fixed_input_size", False):
            kwargs["img_size"] = size  # e.g. a ViT at 112 px
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = create_timm(name, kwargs, pretrained, drop_path, spec)
    pre = preprocess_from_options(opts, _default_preprocess(model.pretrained_cfg or {}))
    built = TimmModel(model, name, kwargs, pre, pretrained, weights)
    if weights:
        sd = load_state_dict_file(weights, trust_pickle=bool_option(opts, "trust_pickle"))
        loaded = load_backbone_weights(model, sd, weights, strict=False)
        built.weights_info = {"weights": os.path.abspath(weights), "weights_file_sha256": file_sha256(weights),
                              **loaded}
    return built


@register_backbone("timm", TIMM_OPTIONS, example="timm:test_efficientnet_gn?size=32&pretrained=0")
def timm_backbone(name: str, opts: dict[str, str], spec: str) -> Backbone:
    """Any timm model as a frozen extractor of pooled pre-classifier features."""
    built = build_timm(name, opts, spec, seed=0)
    source: dict[str, Any] = {"pretrained": built.pretrained}
    if built.weights_info:  # recorded in the cache's fingerprints under these names
        info = dict(built.weights_info)
        source.update(weights=info["weights"], weights_file_sha256=info["weights_file_sha256"],
                      unexpected_keys=info["ignored_keys"])
        if "layout" in info:  # only for checkpoints not in the model's own layout (fingerprints unchanged)
            source["weights_layout"] = info["layout"]
    return Backbone(spec=spec, key=spec_key(spec), model=built.model, dim=built.dim, preprocess=built.preprocess,
                    source=source)
