"""Run directories of `abaw train-heads`: checkpoints, loading, per-frame prediction, plots.

A run directory holds:

    config.json        {"abaw_run": 1, "config": TrainConfig, "abaw_version": ...}
    data.json          frame counts, labelled-frame gaps, training time scale, missing-frame
                       reports, backbone fingerprints, init-from report
    metrics.json       one record per epoch (losses, per-task validation scores, timings)
    best.pt            best checkpoint: {"format", "spec": ModelSpec, "state_dict", "epoch", "val"}
                       (plain tensors and JSON types: torch.load(weights_only=True) reads it);
                       with select=task, assembled at the end from each task's best epoch
                       (`TaskSnapshots` when they differ; best-<task>.pt while training)
    last.pt            resume state of an unfinished run (deleted when the run finishes)
    val_outputs.npz    raw per-frame validation outputs of the best checkpoint (for ensembles)
    val_outputs_honest.npz  the same frames, each at the epoch the OTHER honest folds chose
                       (for honest estimates of blends; absent with fewer than two folds)
    postprocess.json   fitted PostProcess and the P_MTL before/after each step
    curves.png         learning curves, per-task validation scores, post-processing steps
    result.json        summary, written last: its presence marks a finished run
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from abaw.cache.store import FeatureTable
from abaw.config import from_dict, to_dict
from abaw.data.annotations import Annotations, read_annotations
from abaw.data.labels import TASKS, VA_DIMS
from abaw.errors import AbawError
from abaw.heads.model import ModelSpec, build_model
from abaw.io import atomic_write, read_json
from abaw.pipeline.train.config import OLD_DEFAULTS, TrainConfig
from abaw.pipeline.train.dataset import (
    Batcher,
    FrameSet,
    frames_for_prediction,
    strided_windows,
)
from abaw.pipeline.train.outputs import FrameOutputs
from abaw.pipeline.train.postprocess import PostProcess, apply_postprocess
from abaw.pipeline.train.timescale import TimeScale, plan_time_scale, train_gap_of
from abaw.results import Result, fmt_score
from abaw.rundir import HEADS_RUN, check_identity, config_diff, is_empty
from abaw.runtime import autocast, resolve_device

RUN_VERSION = 1
CKPT_FORMAT = "abaw-heads"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: ModelSpec, **meta: Any) -> None:
    """Atomically save a `weights_only`-loadable checkpoint."""
    obj = {"format": CKPT_FORMAT, "version": RUN_VERSION, "spec": to_dict(spec),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, Any]]:
    """(spec, state dict, other fields) of a checkpoint, read with `weights_only=True`."""
    path = Path(path)
    if not path.exists():
        raise AbawError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise AbawError(f"{path}: cannot read checkpoint ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or obj.get("format") != CKPT_FORMAT:
        raise AbawError(f"{path}: not an abaw heads checkpoint")
    spec = from_dict(ModelSpec, obj["spec"])
    meta = {k: v for k, v in obj.items() if k not in ("spec", "state_dict")}
    return spec, obj["state_dict"], meta


@torch.inference_mode()
def predict_frameset(model: nn.Module, fs: FrameSet, keys: tuple[str, ...], window: int,
                     batch_frames: int = 4096, device: torch.device | str = "cpu",
                     batcher: Batcher | None = None, step: int = 1) -> FrameOutputs:
    """Raw per-frame outputs for every frame of `fs` (evaluation windows: each frame once),
    or of its `targets` only; `step` > 1: windows over every step-th frame (`strided_windows`).

    VA values after tanh (a VA dimension the model did not train, `spec.va_dims`: NaN), EXPR
    softmax probabilities, AU sigmoid probabilities.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    tasks = list(model.heads.keys()) if hasattr(model, "heads") else []
    sizes = {t: model.heads[t].out_features for t in tasks}
    n = len(fs)
    arrays = {t: np.zeros((n, sizes[t]), np.float32) for t in tasks}
    wins = strided_windows(fs.segments, window, step)
    bw = max(1, batch_frames // window)
    if batcher is None:
        batcher = Batcher(fs, keys, device, with_labels=False)
    try:
        for i in range(0, len(wins), bw):
            pos = wins[i:i + bw]
            b = batcher(pos)
            with autocast(device):
                out = model(b["feats"], b["mask"])
            valid = pos >= 0
            idx = pos[valid]
            vm = torch.from_numpy(valid).to(device)
            for t, y in out.items():
                y = y.float()
                if t == "expr":
                    y = torch.softmax(y, -1)
                elif t == "au":
                    y = torch.sigmoid(y)
                arrays[t][idx] = y[vm].cpu().numpy()
    finally:
        model.train(was_training)
    spec = getattr(model, "spec", None)
    if "va" in arrays and spec is not None:
        arrays["va"][:, [i for i, d in enumerate(VA_DIMS) if d not in spec.va_dims]] = np.nan
    out = FrameOutputs(videos=fs.table.videos, video_idx=fs.video_idx.astype(np.int32),
                       frame=fs.frame.astype(np.int32), **{t: arrays.get(t) for t in ("va", "expr", "au")})
    return out if fs.targets is None else out.take(fs.targets)


@dataclass(frozen=True)
class TrainResult(Result):
    """What `abaw train-heads` reports about a finished run (`result.json` + missing frames)."""

    path: str
    best_epoch: int  # the epoch of the best raw validation P_MTL
    epochs_run: int
    stopped_early: bool
    steps: tuple[dict[str, Any], ...]  # validation scores after each post-processing step (optimistic)
    honest: dict[str, Any] | None = None  # cross-fitted estimate (abaw.pipeline.train.honest)
    train_seconds_this_call: float = 0.0
    device: str = "cpu"
    missing: dict[str, Any] = field(default_factory=dict)  # split -> missing-frame report (or None)
    task_epochs: dict[str, int] | None = None  # select=task: the epoch whose weights predict each task

    @property
    def val_raw(self) -> dict[str, Any]:
        return self.steps[0]

    @property
    def val_final(self) -> dict[str, Any]:
        return self.steps[-1]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key) if key in ("val_raw", "val_final") else super().__getitem__(key)

    def record(self) -> dict[str, Any]:
        """The `result.json` of the run folder."""
        return {"best_epoch": self.best_epoch, "task_epochs": self.task_epochs, "epochs_run": self.epochs_run,
                "stopped_early": self.stopped_early,
                "val_raw": self.val_raw, "val_final": self.val_final, "steps": list(self.steps),
                "honest": self.honest,
                "train_seconds_this_call": self.train_seconds_this_call, "device": self.device}

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainResult:
        """From a finished run folder's result.json and data.json."""
        path = Path(path)
        res = read_json(path / "result.json")
        data = read_json(path / "data.json") if (path / "data.json").exists() else {}
        return cls(path=str(path), best_epoch=int(res["best_epoch"]), epochs_run=int(res["epochs_run"]),
                   stopped_early=bool(res.get("stopped_early", False)), steps=tuple(res["steps"]),
                   honest=res.get("honest"), task_epochs=res.get("task_epochs"),
                   train_seconds_this_call=float(res.get("train_seconds_this_call", 0.0)),
                   device=str(res.get("device", "cpu")),
                   missing={s: (data.get(s) or {}).get("missing") for s in ("train", "val")})

    def format(self) -> str:
        lines = []
        for split, miss in self.missing.items():
            if miss:
                lines.append(f"skipped {miss['missing']} of {miss['labelled']} labelled {split} frames without a "
                             f"cached feature (e.g. {', '.join(miss['examples'][:3])})")
        per = (" (weights per task from epochs " + ", ".join(f"{t} {e}" for t, e in self.task_epochs.items()) + ")"
               if self.task_epochs else "")
        lines.append(f"best epoch {self.best_epoch} of {self.epochs_run}{per}; validation P_MTL by post-processing step:")
        for s in self.steps:
            extra = ""
            if "windows" in s:
                extra = "  smoothing " + ", ".join(f"{t} {s.get('kernels', {}).get(t, 'box')} {w}"
                                                   for t, w in s["windows"].items())
            lines.append(f"  {s['step']:<14} P {s['total']:.4f}   {va_name(s)} {fmt_score(s['va'])}  "
                         f"EXPR {fmt_score(s['expr'])}  AU {fmt_score(s['au'])}{extra}")
        h = self.honest
        if h:
            se = f" ± {h['se']:.3f}" if h.get("se") is not None else ""
            lines.append(f"  {'honest':<14} P {h['total']:.4f}   {va_name(h)} {fmt_score(h['va'])}  "
                         f"EXPR {fmt_score(h['expr'])}  "
                         f"AU {fmt_score(h['au'])}  ({h['folds']} folds of validation videos: epoch and "
                         f"post-processing fitted on the other folds){se}")
            if se:
                lines.append("  (± the standard error over validation videos, a bootstrap of whole videos: "
                             "another split this size would score about that far away by chance)")
        else:
            lines.append("  honest         n/a (needs at least 2 validation videos and honest_folds >= 2)")
        if va_name(self.val_raw) != "VA":
            lines.append(f"  (partial P_MTL: {va_name(self.val_raw)} is the CCC of the one VA dimension trained; "
                         "the ABAW P_VA averages valence and arousal)")
        lines.append(f"run written to {self.path}")
        return "\n".join(lines)


def va_name(scores: dict[str, Any]) -> str:
    """`VA`, or `V` / `A` for scores (a summary or an honest estimate) of one VA dimension only."""
    if scores.get("va") is None or "valence" not in scores:
        return "VA"
    return "V" if scores.get("arousal") is None else "A" if scores.get("valence") is None else "VA"


@dataclass(frozen=True, eq=False)
class Run:
    """A finished training run loaded from its directory (`format()`/`to_dict()`: its result)."""

    path: Path
    config: TrainConfig
    spec: ModelSpec
    model: nn.Module
    postprocess: PostProcess
    fingerprints: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    result: TrainResult | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    train_gap: float | None = None  # median frame gap of the training windows (None: not recorded)

    def format(self) -> str:
        return self.result.format()

    def to_dict(self) -> dict[str, Any]:
        return self.result.to_dict()

    @property
    def keys(self) -> tuple[str, ...]:
        """Backbone keys the run needs, in input order."""
        return self.spec.keys

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.spec.tasks

    def check_features(self, table: FeatureTable) -> None:
        """AbawError unless `table` has this run's backbones with the same fingerprints."""
        from abaw.fingerprint import same_features

        lacking = [k for k in self.keys if k not in table.feats]
        if lacking:
            raise AbawError(f"run {self.path}: the features lack backbones {lacking} (have {list(table.keys)})")
        for k, d in zip(self.keys, self.spec.dims):
            if table.feats[k].shape[1] != d:
                raise AbawError(f"run {self.path}: backbone {k!r} has {table.feats[k].shape[1]}-d features, "
                                f"the run was trained on {d}-d")
            a, b = self.fingerprints.get(k), table.fingerprints.get(k)
            if a and b and not same_features(a, b):
                raise AbawError(f"run {self.path}: backbone {k!r} features differ from those it was trained on "
                                "(different weights or preprocessing)")

    def frames(self, features: FeatureTable | FrameSet, rows: np.ndarray | None = None) -> FrameSet:
        """The FrameSet `predict` uses: a FeatureTable's face frames (or `rows`), or `features`."""
        return features if isinstance(features, FrameSet) else \
            frames_for_prediction(features, rows, self.config.max_gap)

    def time_scale(self, features: FeatureTable | FrameSet, rows: np.ndarray | None = None,
                   mode: str = "auto") -> TimeScale:
        """How `predict` lays the temporal windows over these frames (`abaw.pipeline.train.timescale`)."""
        return plan_time_scale(self.train_gap, self.frames(features, rows), mode)

    def predict(self, features: FeatureTable | FrameSet, rows: np.ndarray | None = None,
                postprocess: bool = False, batch_frames: int = 4096, time_scale: str = "auto") -> FrameOutputs:
        """Per-frame outputs for a FeatureTable (its face frames, or `rows`) or a FrameSet.

        Frames denser than the training windows are predicted at the training time scale
        (`time_scale="off"`: windows over consecutive frames, as before). `postprocess=True`
        applies the run's fitted smoothing (thresholds: `decide`).
        """
        fs = self.frames(features, rows)
        self.check_features(fs.table)
        step = plan_time_scale(self.train_gap, fs, time_scale).step
        out = predict_frameset(self.model, fs, self.keys, self.config.window, batch_frames, self.device, step=step)
        return apply_postprocess(out, self.postprocess) if postprocess else out

    def training_data(self) -> dict[str, Any]:
        """What the run was trained on, from its data.json (empty for an exported run): labelled
        frames per split, the annotation file names, and whether synthetic (annotation files
        written by `abaw synth` sit next to its `synth.json`)."""
        p = self.path / "data.json"
        data = read_json(p) if p.exists() else {}
        src = data.get("sources", {})
        files = list(src.get("train_ann", [])) + list(src.get("val_ann", []))
        return {"train": {k: v for k, v in data.get("train", {}).items() if k != "missing"},
                "val": {k: v for k, v in data.get("val", {}).items() if k != "missing"},
                "annotation_files": [os.path.basename(f) for f in files],
                "synthetic": any((Path(f).parent / "synth.json").exists() for f in files)}

    def val_outputs(self) -> FrameOutputs:
        """The saved raw validation outputs of the best checkpoint."""
        return FrameOutputs.load(self.path / "val_outputs.npz")


def read_config(path: str | os.PathLike) -> TrainConfig:
    """The TrainConfig saved in a run directory."""
    p = Path(path) / "config.json"
    if not p.exists():
        raise AbawError(f"{path}: not a run directory (no config.json)")
    data = read_json(p)
    if data.get("abaw_run") != RUN_VERSION:
        raise AbawError(f"{p}: not an abaw run config")
    try:
        return TrainConfig.from_dict({**OLD_DEFAULTS, **data["config"]})
    except (AbawError, TypeError, KeyError) as e:
        raise AbawError(f"{p}: cannot read the run config ({e})") from None


def prepare_run_dir(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool,
                    identity: dict[str, Any] | None = None) -> str:
    """'new', 'resume' or 'done' (and clear the run files when overwriting). A resume must
    match the config and the data `identity` recorded in data.json (`abaw.rundir`)."""
    if is_empty(out):
        return "new"
    if not (out / HEADS_RUN.config).exists():
        raise AbawError(f"{out}: exists and is not a run directory; choose another --out")
    if overwrite:
        HEADS_RUN.clear(out)
        return "new"
    if not resume:
        raise AbawError(f"{out}: already holds a run; pass --resume to continue it or --overwrite to replace it")
    diff = config_diff(read_config(out).recorded(), cfg.recorded())
    if diff:
        raise AbawError(f"{out}: cannot resume, the config differs: {'; '.join(diff[:4])}")
    if identity is not None and (out / "data.json").exists():
        data = read_json(out / "data.json")
        saved = data.get("identity")
        if not saved and data.get("backbones") and data.get("dims"):  # recorded before identities: widths only
            saved = {"features": {k: {"dim": d} for k, d in zip(data["backbones"], data["dims"])}}
            identity = {"features": {k: {"dim": f.get("dim")} for k, f in identity.get("features", {}).items()}}
        check_identity(out, saved, identity)
    if (out / "result.json").exists():
        return "done"
    return "resume" if (out / "last.pt").exists() else "new"


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Load a finished run (model on `device`, eval mode) with its post-processing."""
    path = Path(path)
    cfg = read_config(path)
    if not (path / "result.json").exists():
        raise AbawError(f"{path}: the run is not finished (no result.json); resume it with --resume")
    spec, sd, _ = load_checkpoint(path / "best.pt")
    model = build_model(spec)
    model.load_state_dict(sd)
    dev = resolve_device(str(device))
    model.to(dev).eval()
    ppd = read_json(path / "postprocess.json")
    pp = from_dict(PostProcess, ppd["postprocess"])
    data = read_json(path / "data.json") if (path / "data.json").exists() else {}
    hist = read_json(path / "metrics.json").get("epochs", []) if (path / "metrics.json").exists() else []
    return Run(path=path, config=cfg, spec=spec, model=model, postprocess=pp,
               fingerprints=data.get("fingerprints", {}), history=hist, result=TrainResult.load(path),
               device=dev, train_gap=train_gap_of(data))
def plot_curves(path: str | os.PathLike, history: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None,
                best_epoch: int | None = None) -> None:
    """Learning curves, per-task validation scores per epoch and the post-processing steps."""
    from abaw.plots import learning_curve

    losses = {"train": [h["train_loss"] for h in history], "validation": [h["val_loss"] for h in history]}
    for t in TASKS:
        if history and f"train_loss_{t}" in history[0]:
            losses[f"train {t}"] = [h[f"train_loss_{t}"] for h in history]
    scores = {("P_MTL" if t == "total" else f"P_{t.upper()}"): [h["val"].get(t) for h in history]
              for t in ("total",) + TASKS}
    learning_curve(path, [h["epoch"] for h in history], losses, scores, best_epoch=best_epoch,
                   score_label="validation score (raw)", steps=steps)


def run_labels(run_dir: str | os.PathLike, val_ann: Annotations | None = None) -> Annotations:
    """The validation labels of a run: given, or rebuilt from what the run recorded."""
    if val_ann is not None:
        return val_ann
    p = Path(run_dir) / "data.json"
    data = read_json(p) if p.exists() else {}
    src = data.get("sources", {}).get("val_ann") or []
    missing = [s for s in src if not Path(s).exists()]
    if not src or missing:
        raise AbawError(f"{run_dir}: cannot find the run's validation annotations "
                        f"({'moved: ' + missing[0] if missing else 'not recorded'}); pass --val-ann")
    ann = Annotations.concat([read_annotations(s) for s in src]) if len(src) > 1 else read_annotations(src[0])
    videos = [v for v in data.get("val_videos", ann.videos) if v in set(ann.videos)]
    return ann.select_videos(videos)
