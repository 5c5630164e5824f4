"""Fine-tuned checkpoints (`abaw finetune` output) as a backbone family: `ckpt:DIR`.

A checkpoint folder holds

    backbone.json          format, timm model name (+ create kwargs), feature width,
                           preprocessing, task, validation metric, epoch, SHA-256s
    backbone.safetensors   the backbone's weights (no pickle); a torch state-dict file
                           named in backbone.json also works (read with weights_only=True)
    head.safetensors       the task head (linear layer on the pooled features)

`create_backbone("ckpt:DIR")` rebuilds the timm model, loads the weights strictly after
checking the file's SHA-256 against backbone.json, and uses the recorded preprocessing
(input size, mean/std, interpolation), so extraction sees frames exactly as validation
during fine-tuning did. Its fingerprint names the folder, the task and the weights.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from abaw.errors import AbawError
from abaw.extract.backbones.base import Backbone, Preprocess, load_state_dict_file, state_dict_sha256
from abaw.extract.backbones.registry import register_backbone, spec_key
from abaw.extract.backbones.timm import create_timm
from abaw.fingerprint import file_sha256
from abaw.io import atomic_write, read_json, write_json

CKPT_FORMAT = "abaw.finetuned-backbone"
CKPT_VERSION = 1
BACKBONE_JSON = "backbone.json"
WEIGHTS_FILE = "backbone.safetensors"
HEAD_FILE = "head.safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    """What backbone.json says about a fine-tuned checkpoint."""

    dir: Path
    timm_model: str
    model_kwargs: dict[str, Any]
    dim: int
    preprocess: Preprocess
    weights_path: Path
    weights_file_sha256: str
    weights_sha256: str
    task: str
    meta: dict[str, Any] = field(default_factory=dict)  # the whole JSON

    def load_weights(self) -> dict[str, torch.Tensor]:
        """The backbone state dict, after checking the file against its recorded SHA-256."""
        actual = file_sha256(self.weights_path)
        if actual != self.weights_file_sha256:
            raise AbawError(f"{self.weights_path}: SHA-256 {actual[:12]}… does not match "
                            f"{self.dir / BACKBONE_JSON} ({self.weights_file_sha256[:12]}…); the checkpoint is "
                            "incomplete or was modified")
        return load_state_dict_file(self.weights_path)


def _member(d: Path, name: Any, what: str) -> Path:
    """A file named in backbone.json: a plain file name inside the checkpoint folder."""
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", "..") \
            or "\\" in name or "\x00" in name:
        raise AbawError(f"{d / BACKBONE_JSON}: {what} must be a file name inside the folder, got {name!r}")
    return d / name


def read_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Parse and check a checkpoint folder's backbone.json."""
    d = Path(path)
    meta_path = d / BACKBONE_JSON
    if not meta_path.is_file():
        raise AbawError(f"{d}: not a fine-tuned checkpoint (no {BACKBONE_JSON}; made by `abaw finetune`)")
    try:
        meta = read_json(meta_path)
    except ValueError as e:
        raise AbawError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != CKPT_FORMAT:
        raise AbawError(f"{meta_path}: not a {CKPT_FORMAT} file")
    if meta.get("version") != CKPT_VERSION:
        raise AbawError(f"{meta_path}: format version {meta.get('version')!r} not supported (expected {CKPT_VERSION})")
    try:
        pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["preprocess"].items()})
        info = CheckpointInfo(
            dir=d.resolve(), timm_model=str(meta["timm_model"]), model_kwargs=dict(meta.get("model_kwargs") or {}),
            dim=int(meta["dim"]), preprocess=pre, weights_path=_member(d, meta["weights"], "weights").resolve(),
            weights_file_sha256=str(meta["weights_file_sha256"]), weights_sha256=str(meta["weights_sha256"]),
            task=str(meta.get("task", "")), meta=meta)
    except (KeyError, TypeError, ValueError) as e:
        raise AbawError(f"{meta_path}: missing or bad field ({type(e).__name__}: {e})") from None
    if not info.weights_path.is_file():
        raise AbawError(f"{info.weights_path}: weights file named in {meta_path} not found")
    return info


def _safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()})


def write_checkpoint(out: str | os.PathLike, backbone_sd: dict[str, torch.Tensor], head_sd: dict[str, torch.Tensor],
                     *, timm_model: str, model_kwargs: dict[str, Any], dim: int, preprocess: Preprocess,
                     task: str, head: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Write weights, head and backbone.json (last, so it names complete files). Returns the JSON."""
    from abaw import __version__

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_write(d / WEIGHTS_FILE, "wb") as f:
        f.write(_safetensors_bytes(backbone_sd))
    with atomic_write(d / HEAD_FILE, "wb") as f:
        f.write(_safetensors_bytes(head_sd))
    meta = {
        "format": CKPT_FORMAT,
        "version": CKPT_VERSION,
        "timm_model": timm_model,
        "model_kwargs": model_kwargs,
        "dim": dim,
        "preprocess": asdict(preprocess),
        "weights": WEIGHTS_FILE,
        "weights_file_sha256": file_sha256(d / WEIGHTS_FILE),
        "weights_sha256": state_dict_sha256(backbone_sd),
        "task": task,
        "head": {**head, "weights": HEAD_FILE, "weights_file_sha256": file_sha256(d / HEAD_FILE)},
        "created_by": f"abaw {__version__}",
        **extra,
    }
    write_json(d / BACKBONE_JSON, meta)
    return meta


@register_backbone("ckpt", options=(), note="a checkpoint carries its own preprocessing and weights; "
                   "only key= is allowed")
def ckpt_backbone(name: str, opts: dict[str, str], spec: str) -> Backbone:
    """A fine-tuned checkpoint folder as a frozen extractor. Options: key= (cache array name)."""
    import timm

    ck = read_checkpoint(name)
    if not timm.is_model(ck.timm_model):
        raise AbawError(f"{ck.dir / BACKBONE_JSON}: timm has no model {ck.timm_model!r} (timm {timm.__version__})")
    model = create_timm(ck.timm_model, ck.model_kwargs, pretrained=False, drop_path=0.0, spec=spec)
    sd = ck.load_weights()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise AbawError(f"{ck.weights_path}: weights do not fit {ck.timm_model}: {str(e).splitlines()[0][:200]}") from None
    if int(model.num_features) != ck.dim:
        raise AbawError(f"{ck.dir / BACKBONE_JSON}: dim {ck.dim} but {ck.timm_model} gives {model.num_features}")
    metric = ck.meta.get("metric") or {}
    source = {
        "checkpoint": str(ck.dir),
        "task": ck.task,
        "timm_model": ck.timm_model,
        "weights_file_sha256": ck.weights_file_sha256,
        "epoch": ck.meta.get("epoch"),
        "metric": {k: metric.get(k) for k in ("name", "value")} if metric else None,
        "trained_from": (ck.meta.get("trained_from") or {}).get("spec"),
    }
    return Backbone(spec=spec, key=spec_key(spec), model=model, dim=ck.dim, preprocess=ck.preprocess,
                    source=source, _sha=ck.weights_sha256)
