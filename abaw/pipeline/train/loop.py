"""Joint training of fusion + temporal module + task heads from the feature cache.

    run = train(TrainConfig.create(backbones=("my_key",), temporal="transformer"),
                "cache.zarr", read_annotations(train_txt), read_annotations(val_txt), "runs/r1")

Features of the chosen backbones for the annotated videos are loaded into RAM once
(float16), labels are aligned by exact (video, frame) keys, and the model trains with
AdamW, linear warm-up then cosine decay (per step), gradient clipping and early stopping
on validation P_MTL (raw decisions). CPU training is fully reproducible for a seed; an
interrupted run resumes from `last.pt` to the same result. CUDA is used when present
(bf16 autocast). After training, post-processing is fitted on validation with the best
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from abaw.cache.store import FeatureStore, FeatureTable, load_features
from abaw.config import to_dict
from abaw.data.annotations import Annotations
from abaw.data.labels import TASKS, clip_ids
from abaw.errors import AbawError
from abaw.heads.losses import MultiTaskLoss, inverse_frequency_weights, positive_weights
from abaw.heads.model import ModelSpec, build_model, combine_snapshots
from abaw.io import read_json, write_json
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.dataset import (
    Batcher,
    FrameSet,
    align_labels,
    context_frames,
    feature_tensors,
    labelled_windows,
    train_windows,
)
from abaw.pipeline.train.fullbatch import fit_full_batch
from abaw.pipeline.train.honest import HONEST_OUTPUTS, FoldTracker, crossfit_config
from abaw.pipeline.train.init import feature_stats, init_from_runs
from abaw.pipeline.train.outputs import FrameOutputs, score_outputs
from abaw.pipeline.train.postprocess import PostProcess, fit_postprocess, score_summary
from abaw.pipeline.train.run import (
    RUN_VERSION,
    Run,
    TrainResult,
    autocast,
    load_checkpoint,
    load_run,
    plot_curves,
    predict_frameset,
    prepare_run_dir,
    resolve_device,
    save_checkpoint,
    va_name,
)
from abaw.pipeline.train.timescale import gap_record, train_gap_of, training_time_scale
from abaw.rundir import data_identity, feature_fingerprints, load_state, save_state
from abaw.schedule import warmup_cosine

EpochCallback = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------- backbones


def resolve_backbones(requested: tuple[str, ...], available: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Cache keys for backbones named by key or by spec (`timm:...`); () = all available."""
    available = list(available)
    if not requested:
        if not available:
            raise AbawError("the cache holds no backbone features")
        return tuple(available)
    out = []
    for r in requested:
        key = r
        if r not in available and ":" in r:
            from abaw.extract.backbones import spec_key

            key = spec_key(r)
        if key not in available:
            raise AbawError(f"backbone {r!r} is not in the cache (cached: {', '.join(available) or 'none'})")
        if key in out:
            raise AbawError(f"backbone {r!r} is given twice")
        out.append(key)
    return tuple(out)


def available_keys(fstore: FeatureStore, videos: list[str]) -> list[str]:
    """Feature keys found in the cache for `videos` (the first few cached ones; AbawError when none is)."""
    cached = [v for v in videos if fstore.has_video(v)]
    if not cached:
        raise AbawError(f"{fstore.path}: none of the {len(videos)} annotated videos is in the cache "
                        f"(e.g. {videos[:3]}); extract them first")
    keys = set(fstore.feature_keys(cached[0]))
    for v in cached[1:4]:
        keys |= set(fstore.feature_keys(v))
    return sorted(keys)


# ---------------------------------------------------------------------------- helpers


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _val_losses(outputs: FrameOutputs, labels, loss_fn: MultiTaskLoss) -> dict[str, float]:
    """The training losses over the whole validation set (from the output probabilities)."""
    eps = 1e-7
    out: dict[str, torch.Tensor] = {}
    batch: dict[str, torch.Tensor] = {}
    if outputs.va is not None:
        out["va"] = torch.from_numpy(outputs.va)
    if outputs.expr is not None:
        out["expr"] = torch.from_numpy(outputs.expr).clamp_min(eps).log()
    if outputs.au is not None:
        p = torch.from_numpy(outputs.au).clamp(eps, 1 - eps)
        out["au"] = (p / (1 - p)).log()
    batch["va"] = torch.from_numpy(labels.va)
    batch["expr"] = torch.from_numpy(np.maximum(labels.expr, 0))
    batch["au"] = torch.from_numpy(np.maximum(labels.au, 0).astype(np.float32))
    for t in TASKS:
        batch[f"{t}_valid"] = torch.from_numpy(labels.valid(t))
    with torch.no_grad():
        total, parts = loss_fn(out, batch)
    return {"val_loss": float(total), **{f"val_loss_{t}": float(v) for t, v in parts.items()}}


def _loss_for(cfg: TrainConfig, spec: ModelSpec, train_fs: FrameSet) -> tuple[MultiTaskLoss, dict[str, Any]]:
    lb = train_fs.labels
    cw = pw = None
    info: dict[str, Any] = {}
    if "expr" in spec.tasks and cfg.expr_class_weight == "inverse" and lb.expr_valid.any():
        w = inverse_frequency_weights(lb.expr[lb.expr_valid])
        cw = torch.from_numpy(w)
        info["expr_class_weight"] = w.tolist()
    if "au" in spec.tasks and cfg.au_pos_weight in ("auto", "balanced") and lb.au_valid.any():
        w = positive_weights(lb.au[lb.au_valid], 20.0 if cfg.au_pos_weight == "auto" else np.inf)
        pw = torch.from_numpy(w)
        info["au_pos_weight"] = w.tolist()
    return MultiTaskLoss(spec.tasks, cfg.weights(), cw, pw, va_scale=cfg.va_loss, va_dims=spec.va_dims), info


# ---------------------------------------------------------------------------- train


def train(cfg: TrainConfig, store: str | Path | FeatureStore | FeatureTable, train_ann: Annotations,
          val_ann: Annotations, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, on_epoch: EpochCallback | None = None) -> Run:
    """Train heads on `train_ann`, select and post-process on `val_ann`; write the run to `out_dir`.

    `store`: a cache path, an open FeatureStore, or an already loaded FeatureTable (reuse
    one table across many configs or folds). `resume=True` continues an interrupted run
    (or returns a finished one with the same config). `on_epoch(record)` is called after
    each epoch is saved (raise in it to stop; the run stays resumable).
    """
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, store, train_ann, val_ann, Path(out_dir), resume, overwrite, progress, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, store, train_ann: Annotations, val_ann: Annotations, out: Path, resume: bool,
           overwrite: bool, progress: bool, on_epoch: EpochCallback | None) -> Run:
    videos = sorted(set(train_ann.videos) | set(val_ann.videos))
    table: FeatureTable | None = store if isinstance(store, FeatureTable) else None
    if table is not None:
        available = list(table.keys)
    else:
        fstore = store if isinstance(store, FeatureStore) else FeatureStore(store, "r")
        available = available_keys(fstore, videos)
    keys = resolve_backbones(cfg.backbones, available)
    cfg = replace(cfg, backbones=keys, init_from=tuple(str(p) for p in cfg.init_from))
    identity = data_identity({"train": train_ann, "val": val_ann},
                             feature_fingerprints(table if table is not None else fstore, keys, videos))
    mode = prepare_run_dir(out, cfg, resume, overwrite, identity)
    if mode == "done":
        return load_run(out)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.perf_counter()
    if table is None:
        table = load_features(fstore, keys, videos=videos, missing="skip")
    load_s = time.perf_counter() - t_load
    train_fs = align_labels(table, train_ann, cfg.allow_missing, cfg.max_gap, "labelled training frames")
    val_fs = align_labels(table, val_ann, cfg.allow_missing, cfg.max_gap, "labelled validation frames")
    if len(train_fs) == 0:
        raise AbawError("no labelled training frame has a cached feature")
    if len(val_fs) == 0:
        raise AbawError("no labelled validation frame has a cached feature")
    train_ctx, val_ctx = context_frames(train_fs, cfg.context), context_frames(val_fs, cfg.context)
    dims = tuple(int(table.feats[k].shape[1]) for k in keys)
    spec = cfg.model_spec(keys, dims)
    device = resolve_device(cfg.device)

    torch.manual_seed(cfg.seed)
    model = build_model(spec).to(device)
    loss_fn, loss_info = _loss_for(cfg, spec, train_fs)
    loss_fn.to(device)
    try:  # the fused kernel is ~2x faster than foreach on CPU as well
        opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True)
    except RuntimeError:
        opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)

    history: list[dict[str, Any]] = []
    per_task = cfg.select == "task"
    tracker = FoldTracker(val_fs.video_idx, val_fs.labels, cfg.honest_folds, per_task=per_task,
                          groups=clip_ids(val_fs.table.videos, val_fs.video_idx))
    best = {"score": -math.inf, "epoch": 0}
    task_best = {t: {"score": -math.inf, "epoch": 0} for t in spec.tasks}
    bad_epochs = 0
    start_epoch = 0
    init_report = None
    if mode != "resume" and hasattr(model, "set_feature_stats"):
        model.set_feature_stats([feature_stats(table.feats[k], train_fs.rows) for k in keys])
    if mode == "resume":
        st = load_state(out / "last.pt", hint="pass --overwrite to start again")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in st:
            torch.cuda.set_rng_state(st["cuda_rng"], device)
        start_epoch = int(st["epoch"])
        best = {"score": float(st["best_score"]), "epoch": int(st["best_epoch"])}
        task_best.update(json.loads(st.get("task_best_json", "{}")))
        bad_epochs = int(st["bad_epochs"])
        history = json.loads(st["history_json"])
        tracker.load(st.get("honest"))
    else:
        if cfg.init_from:
            init_report = init_from_runs(model, spec, cfg.init_from)
        write_json(out / "config.json", {"abaw_run": RUN_VERSION, "config": to_dict(cfg),
                                         "abaw_version": _version(), "torch_version": torch.__version__})
        write_json(out / "data.json", {
            "train": {**train_fs.labels.counts(), "segments": len(train_fs.segments), "videos": len(train_ann.videos),
                      "missing": None if train_fs.missing is None else train_fs.missing.to_dict(),
                      **gap_record(train_fs, train_ctx)},
            "val": {**val_fs.labels.counts(), "segments": len(val_fs.segments), "videos": len(val_ann.videos),
                    "missing": None if val_fs.missing is None else val_fs.missing.to_dict(),
                    **gap_record(val_fs, val_ctx)},
            "time_scale": training_time_scale(cfg.context, train_ctx),
            "sources": {"store": table.store or (str(store) if isinstance(store, (str, os.PathLike)) else ""),
                        "train_ann": list(train_ann.sources), "val_ann": list(val_ann.sources)},
            "train_videos": list(train_ann.videos), "val_videos": list(val_ann.videos),
            "backbones": list(keys), "dims": list(dims),
            "fingerprints": {k: table.fingerprints.get(k, {}) for k in keys},
            "identity": identity,
            "feature_bytes": int(sum(table.feats[k].nbytes for k in keys)), "load_s": load_s,
            "loss": loss_info, "init_from": init_report, "device": str(device),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        })

    shared = feature_tensors(table, keys, device) if _features_fit(table, keys, device) else None
    train_b = Batcher(train_ctx, keys, device, shared)
    val_b = Batcher(val_ctx, keys, device, shared, with_labels=False)
    bw = cfg.windows_per_batch
    stride = cfg.train_stride
    score_tasks = loss_fn.tasks

    full_batch = cfg.solver == "lbfgs"
    n_epochs = 1 if full_batch else cfg.epochs  # a full-batch fit is the run's one epoch
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_epochs, initial=start_epoch, desc="train-heads", unit="epoch", dynamic_ncols=True)
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, n_epochs):
            if bad_epochs >= cfg.patience:
                break
            if full_batch:
                rec = fit_full_batch(model, loss_fn, train_ctx, train_b, c=cfg.lbfgs_c, max_iter=cfg.lbfgs_iters)
            else:
                rec = _train_epoch(model, opt, loss_fn, train_ctx, train_b, cfg, epoch, bw, stride, device, bar)
            t0 = time.perf_counter()
            val_out = predict_frameset(model, val_ctx, keys, cfg.window, max(4096, cfg.batch_frames), device, val_b)
            sc = score_outputs(val_out.only(score_tasks), val_fs.labels)
            rec.update(_val_losses(val_out, val_fs.labels, loss_fn))
            rec["time"]["eval_s"] = time.perf_counter() - t0
            rec["val"] = sc.summary()
            improved = sc.total > best["score"] + 1e-12
            rec["best"] = improved
            tracker.update(epoch + 1, val_out, score_tasks)
            if improved:
                best = {"score": sc.total, "epoch": epoch + 1}
                if not per_task:
                    save_checkpoint(out / "best.pt", model, spec, epoch=epoch + 1, val=rec["val"])
            if per_task:
                better = [t for t in spec.tasks if (getattr(sc, t) is not None
                                                    and getattr(sc, t) > task_best[t]["score"] + 1e-12)]
                for t in better:
                    task_best[t] = {"score": float(getattr(sc, t)), "epoch": epoch + 1}
                    save_checkpoint(out / f"best-{t}.pt", model, spec, epoch=epoch + 1, val=rec["val"])
                rec["best_tasks"] = better
                improved = bool(better)
            bad_epochs = 0 if improved else bad_epochs + 1
            history.append(rec)
            st = {"model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                  "epoch": epoch + 1, "best_score": best["score"], "best_epoch": best["epoch"],
                  "bad_epochs": bad_epochs, "history_json": json.dumps(history),
                  "task_best_json": json.dumps(task_best),
                  "honest": tracker.state()}
            if device.type == "cuda":
                st["cuda_rng"] = torch.cuda.get_rng_state(device)
            save_state(out / "last.pt", st)
            write_json(out / "metrics.json", {"epochs": history, "best_epoch": best["epoch"]})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}", val_P=f"{sc.total:.3f}", best=f"{best['score']:.3f}")
                bar.write(_epoch_line(rec))
            if on_epoch is not None:
                on_epoch(rec)
    finally:
        if bar is not None:
            bar.close()
    return _finish(out, cfg, spec, model, val_fs, val_ctx, keys, device, val_b, history, best,
                   len(history) < n_epochs, time.perf_counter() - t_run, table, tracker,
                   task_best if per_task else None)



def _features_fit(table: FeatureTable, keys: tuple[str, ...], device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return sum(table.feats[k].nbytes for k in keys) < 0.5 * free


def _version() -> str:
    from abaw import __version__

    return __version__


def _epoch_line(rec: dict[str, Any]) -> str:
    v = rec["val"]

    def f(x):
        return "  n/a " if x is None else f"{x:.4f}"

    return (f"epoch {rec['epoch']:3d}  loss {rec['train_loss']:.4f}  val loss {rec['val_loss']:.4f}  "
            f"{va_name(v)} {f(v['va'])}  EXPR {f(v['expr'])}  AU {f(v['au'])}  P {v['total']:.4f}"
            f"{'  *' if rec['best'] else ''}  ({rec['time']['train_s']:.1f}s)")


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: MultiTaskLoss, fs: FrameSet,
                 batcher: Batcher, cfg: TrainConfig, epoch: int, bw: int, stride: int, device: torch.device,
                 bar) -> dict[str, Any]:
    """One pass over shuffled training windows; returns the epoch record (losses, timings)."""
    model.train()
    t_start = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, epoch])
    wins = labelled_windows(train_windows(fs.segments, cfg.window, stride, rng), fs)
    wins = wins[rng.permutation(len(wins))]
    nb = max(1, -(-len(wins) // bw), -(-cfg.min_steps // cfg.epochs))
    while len(wins) < nb * bw and len(wins):  # a short pass: more shuffled passes (new offsets) in this epoch
        more = train_windows(fs.segments, cfg.window, stride, rng)
        wins = np.concatenate([wins, more[rng.permutation(len(more))]])
    sums = torch.zeros(1 + len(loss_fn.tasks), device=device)
    t_data = t_fb = t_opt = 0.0
    frames = 0
    lr = cfg.lr
    inner = None
    if bar is not None and nb >= 50:
        from tqdm.auto import tqdm

        inner = tqdm(total=nb, desc=f"epoch {epoch + 1}", unit="batch", leave=False, dynamic_ncols=True)
    for b in range(nb):
        t0 = time.perf_counter()
        lr = cfg.lr * warmup_cosine(epoch + (b + 1) / nb, cfg.epochs, cfg.warmup_epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        pos = wins[b * bw:(b + 1) * bw]
        batch = batcher(pos)
        frames += int((pos >= 0).sum())
        t1 = time.perf_counter()
        with autocast(device):
            out = model(batch["feats"], batch["mask"])
        loss, parts = loss_fn({k: v.float() for k, v in out.items()}, batch)
        loss.backward()
        t2 = time.perf_counter()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sums += torch.stack([loss.detach()] + [parts[t].detach() for t in loss_fn.tasks])
        t3 = time.perf_counter()
        t_data += t1 - t0
        t_fb += t2 - t1
        t_opt += t3 - t2
        if inner is not None:
            inner.update(1)
            if b % 20 == 0:
                inner.set_postfix(loss=f"{loss.detach().item():.3f}")
    if inner is not None:
        inner.close()
    mean = (sums.double().cpu() / nb).tolist()
    rec: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": mean[0],
                           **{f"train_loss_{t}": v for t, v in zip(loss_fn.tasks, mean[1:])},
                           "batches": nb, "windows": int(min(len(wins), nb * bw)), "frames": frames}
    rec["time"] = {"train_s": time.perf_counter() - t_start, "data_s": t_data, "fwd_bwd_s": t_fb, "opt_s": t_opt}
    return rec


def _finish(out: Path, cfg: TrainConfig, spec: ModelSpec, model: nn.Module, val_fs: FrameSet, val_ctx: FrameSet,
            keys: tuple[str, ...], device: torch.device, val_b: Batcher, history: list[dict[str, Any]],
            best: dict[str, Any], stopped_early: bool, seconds: float, table: FeatureTable,
            tracker: FoldTracker, task_best: dict[str, dict[str, Any]] | None = None) -> Run:
    """Reload the best checkpoint, fit post-processing on validation, write the summary.

    With `task_best` (select=task) the best checkpoint is assembled first from each task's
    best-<task>.pt: one model when all tasks peaked at the same epoch, else `TaskSnapshots`.
    """
    task_epochs = None
    if task_best is not None:
        states = {t: load_checkpoint(out / f"best-{t}.pt")[1] for t in spec.tasks}
        task_epochs = {t: int(task_best[t]["epoch"]) for t in spec.tasks}
        spec, sd = combine_snapshots(spec, states, task_epochs)
        model = build_model(spec).to(device)
        model.load_state_dict(sd)
        save_checkpoint(out / "best.pt", model, spec, epoch=max(task_epochs.values()), task_epochs=task_epochs)
    else:
        _, sd, _ = load_checkpoint(out / "best.pt")
        model.load_state_dict(sd)
    val_out = predict_frameset(model, val_ctx, keys, cfg.window, max(4096, cfg.batch_frames), device, val_b)
    val_out.save(out / "val_outputs.npz")
    if cfg.au_thresholds or cfg.smoothing:
        pp, steps = fit_postprocess(val_out, val_fs.labels, cfg.au_thresholds, cfg.smoothing, cfg.smooth_windows,
                                    kernels=cfg.smooth_kernels)
    else:
        pp, steps = PostProcess(), [{"step": "raw", **score_summary(val_out, val_fs.labels)}]
    honest = tracker.estimate(val_out, crossfit_config(cfg))
    honest_out = tracker.honest_outputs(val_out)
    if honest_out is not None:
        honest_out.save(out / HONEST_OUTPUTS)
    write_json(out / "postprocess.json", {"postprocess": to_dict(pp), "steps": steps, "honest": honest})
    plot_curves(out / "curves.png", history, steps, best["epoch"])
    data = read_json(out / "data.json")
    result = TrainResult(path=str(out), best_epoch=best["epoch"], task_epochs=task_epochs, epochs_run=len(history),
                         stopped_early=stopped_early, steps=tuple(steps), honest=honest,
                         train_seconds_this_call=seconds,
                         device=str(device), missing={s: data[s].get("missing") for s in ("train", "val")})
    write_json(out / "result.json", result.record())
    (out / "last.pt").unlink(missing_ok=True)
    for t in spec.tasks:  # folded into best.pt
        (out / f"best-{t}.pt").unlink(missing_ok=True)
    model.eval()
    return Run(path=out, config=cfg, spec=spec, model=model, postprocess=pp,
               fingerprints=data.get("fingerprints", {}), history=history, result=result, device=device,
               train_gap=train_gap_of(data))


__all__ = ["available_keys", "resolve_backbones", "train"]
