"""`abaw finetune`: train a backbone + task head on single face frames, export a `ckpt:` backbone.

Run folder (only process rank 0 writes):

    finetune_config.json   the FinetuneConfig (a rerun must match it to resume)
    state.pt               last finished epoch: model, optimiser, schedule, history
                           (torch.save; read back with weights_only=True)
    backbone.json, backbone.safetensors, head.safetensors
                           the best epoch so far, a first-class backbone (`ckpt:DIR`)
    history.json           per-epoch train loss, validation metric, learning rate, images/s
    learning_curve.png

Every file is replaced atomically at the end of each epoch, so a run killed at any moment
resumes from its last finished epoch when the same command is run again. Shuffling,
augmentations and dropout are seeded by (seed, epoch[, frame or rank]), so on CPU a resumed
run gives the same weights as an uninterrupted one.

Multi-GPU: `torchrun --nproc_per_node N -m abaw finetune ...` (DDP; NCCL on GPUs, gloo on
CPU). Samplers are sharded per process; validation outputs are gathered so every process
takes the same early-stopping decision.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from abaw.config import from_dict, recorded, to_dict
from abaw.data.annotations import Annotations, read_annotations
from abaw.errors import AbawError
from abaw.fingerprint import file_sha256
from abaw.io import read_json, write_json
from abaw.pipeline.finetune.config import FinetuneConfig
from abaw.pipeline.finetune.data import (
    EpochSampler,
    FaceImageDataset,
    check_images,
    normalize_uint8,
)
from abaw.pipeline.finetune.model import (
    FinetuneModel,
    TaskHead,
    build_backbone,
    is_vit_like,
    param_groups,
)
from abaw.pipeline.finetune.result import FinetuneResult
from abaw.pipeline.finetune.tasks import Task, create_task
from abaw.plots import learning_curve
from abaw.rundir import FINETUNE_RUN, check_identity, config_diff, data_identity, is_empty, load_state, save_state
from abaw.runtime import DistEnv, autocast, loader_context, resolve_device
from abaw.schedule import cosine_with_warmup

CONFIG_FILE, STATE_FILE, HISTORY_FILE, CURVE_FILE = FINETUNE_RUN.files[:4]
STATE_VERSION = 1


# ------------------------------------------------------------------ the run folder


def inspect_out(out: Path, cfg: FinetuneConfig, overwrite: bool) -> str:
    """'fresh' or 'resume' (read-only); raises if OUT holds something else."""
    if is_empty(out):
        return "fresh"
    cfg_path = out / CONFIG_FILE
    if not cfg_path.exists():
        if not FINETUNE_RUN.holds_run(out):
            raise AbawError(f"{out}: exists and is not a fine-tuning run folder; choose another --out")
        if not overwrite:
            raise AbawError(f"{out}: incomplete run folder without {CONFIG_FILE}; use --overwrite")
        return "fresh"
    if overwrite:
        return "fresh"
    try:
        saved = from_dict(FinetuneConfig, read_json(cfg_path))
    except (ValueError, TypeError, AbawError) as e:
        raise AbawError(f"{cfg_path}: unreadable run config ({e}); use --overwrite to start again") from None
    diff = config_diff(recorded(saved), recorded(cfg))
    if diff:
        keys = [d.split(":", 1)[0] for d in diff]
        raise AbawError(f"{out} holds a run with other settings ({', '.join(keys)}); "
                        "use --overwrite to start again or choose another --out")
    return "resume" if (out / STATE_FILE).exists() else "fresh"


# ------------------------------------------------------------------ one training step


class TrainStep:
    """Forward/backward of micro-batches and the optimiser step (also used by the benchmark)."""

    def __init__(self, model: torch.nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                 scheduler: Any, device: torch.device, pre: Any, *, amp: bool, channels_last: bool,
                 accum_steps: int, grad_clip: float):
        self.model, self.task, self.opt, self.sched = model, task, optimizer, scheduler
        self.device, self.pre = device, pre
        self.amp, self.channels_last = amp, channels_last
        self.accum, self.grad_clip = accum_steps, grad_clip

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = normalize_uint8(x, self.pre)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        return autocast(self.device, "bf16" if self.amp else "fp32")

    def micro(self, x: torch.Tensor, y: torch.Tensor, sync: bool) -> torch.Tensor:
        """One micro-batch; steps the optimiser when `sync`. Returns the (detached) loss."""
        x, y = self.inputs(x), y.to(self.device, non_blocking=True)
        no_sync = getattr(self.model, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with ctx:
            with self.autocast():
                out = self.model(x)
            loss = self.task.loss(out.float(), y)
            (loss / self.accum).backward()
        if sync:
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.opt.step()
            if self.sched is not None:
                self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        return loss.detach()


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, loader: DataLoader, step: TrainStep, env: DistEnv,
                    n: int, progress: bool, desc: str) -> np.ndarray:
    """Raw head outputs for every item of the (sharded) loader, gathered in item order.

    Pass the unwrapped model: shards may differ by one batch, and DDP's forward could
    start collectives.
    """
    from tqdm.auto import tqdm

    model.eval()
    idx, outs = [], []
    for x, _, i in tqdm(loader, desc=desc, disable=not (progress and env.main), leave=False):
        with step.autocast():
            o = model(step.inputs(x))
        outs.append(o.float().cpu().numpy())
        idx.append(i.numpy())
    part = (np.concatenate(idx) if idx else np.zeros(0, np.int64),
            np.concatenate(outs) if outs else np.zeros((0, step.task.out_dim), np.float32))
    parts = env.gather(part)
    all_idx = np.concatenate([p[0] for p in parts])
    all_out = np.concatenate([p[1] for p in parts])
    res = np.zeros((n, all_out.shape[1]), np.float32)
    res[all_idx] = all_out
    if len(np.unique(all_idx)) != n:
        raise AbawError(f"validation covered {len(np.unique(all_idx))} of {n} frames")  # pragma: no cover
    return res


# ------------------------------------------------------------------ the run


def has_unused_parameters(model: torch.nn.Module, size: int, dev: torch.device) -> bool:
    """Whether some trainable parameter gets no gradient (DDP must then look for them).

    One forward/backward on a dummy batch; buffers (e.g. BatchNorm statistics) are restored.
    """
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train()
    model(torch.zeros(2, 3, size, size, device=dev)).float().sum().backward()
    unused = any(p.requires_grad and p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(saved[n])
    return unused


def _rows(task: Task, ann: Annotations, path: str) -> np.ndarray:
    rows = np.flatnonzero(task.valid(ann))
    if not len(rows):
        raise AbawError(f"{path}: no frame has a valid {task.name.upper()} label")
    return rows


def _reraise_worker(e: AbawError) -> AbawError:
    """A DataLoader worker's AbawError arrives with its traceback; keep the message line."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else str(e)
    return AbawError(last.split("AbawError: ", 1)[-1])


def finetune(cfg: FinetuneConfig, out: str | os.PathLike, *, device: str | None = None, workers: int = 4,
             progress: bool = True, overwrite: bool = False,
             on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Fine-tune `cfg.backbone` on `cfg.task`; write the run folder `out`; return its result.

    Rerunning with the same config resumes the run (a finished run returns at once);
    `overwrite=True` starts again. `on_epoch_end(record)` is called after each epoch's
    files are written.
    """
    cfg.validate()
    dev = resolve_device(device or "auto")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    env = DistEnv.from_env()
    env.init_group(dev)
    with env.leaving():
        return _finetune(cfg, Path(out), dev, env, workers, progress, overwrite, on_epoch_end)


def _finetune(cfg: FinetuneConfig, out: Path, dev: torch.device, env: DistEnv, workers: int, progress: bool,
              overwrite: bool, on_epoch_end: Callable | None) -> FinetuneResult:
    from tqdm.auto import tqdm

    status = inspect_out(out, cfg, overwrite)
    env.barrier()  # every process has looked before rank 0 changes anything
    if env.main and status == "fresh":
        out.mkdir(parents=True, exist_ok=True)
        FINETUNE_RUN.clear(out)
        write_json(out / CONFIG_FILE, to_dict(cfg))
    env.barrier()
    state = load_state(out / STATE_FILE, STATE_VERSION) if status == "resume" else None
    for f in (cfg.train_ann, cfg.val_ann):
        if not os.path.isfile(f):
            raise AbawError(f"{f}: no such file")
    inputs = {"train_ann_sha256": file_sha256(cfg.train_ann), "val_ann_sha256": file_sha256(cfg.val_ann)}
    train_ann, val_ann = read_annotations(cfg.train_ann), read_annotations(cfg.val_ann)
    identity = data_identity({"train": train_ann, "val": val_ann})
    if state is not None:
        check_identity(out, state.get("identity"), identity)
        if state.get("done"):
            return FinetuneResult.from_dict(state["summary"])

    task = create_task(cfg.task)
    tr_rows, va_rows = _rows(task, train_ann, cfg.train_ann), _rows(task, val_ann, cfg.val_ann)
    check_images(cfg.data, train_ann, tr_rows)
    check_images(cfg.data, val_ann, va_rows)
    tr_targets, va_targets = task.targets(train_ann), task.targets(val_ann)
    task.setup(tr_targets[tr_rows], cfg)
    task.to(dev)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        built = build_backbone(cfg.backbone, drop_path=cfg.drop_path)
        head = TaskHead(built.dim, task.out_dim, cfg.head_dropout)
    raw = FinetuneModel(built.model, head)
    pre = built.preprocess
    cuda = dev.type == "cuda"
    amp = bool(cfg.amp and cuda and torch.cuda.is_bf16_supported())
    channels_last = bool(cfg.channels_last and cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    raw.to(dev)
    if channels_last:
        raw.to(memory_format=torch.channels_last)
    layer_decay = cfg.layer_decay if cfg.layer_decay is not None else (0.75 if is_vit_like(built.model) else 1.0)

    train_ds = FaceImageDataset(cfg.data, train_ann, tr_rows, tr_targets, pre, train=True, augment=cfg.augment,
                            seed=cfg.seed)
    val_ds = FaceImageDataset(cfg.data, val_ann, va_rows, va_targets, pre, train=False)
    tr_sampler = EpochSampler(len(train_ds), seed=cfg.seed, rank=env.rank, world=env.world,
                              samples=cfg.samples_per_epoch)
    va_sampler = EpochSampler(len(val_ds), shuffle=False, rank=env.rank, world=env.world, pad=False)
    lkw: dict[str, Any] = dict(num_workers=workers, pin_memory=cuda)
    if workers > 0:
        lkw.update(persistent_workers=True, prefetch_factor=4, multiprocessing_context=loader_context())
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=tr_sampler, drop_last=True, **lkw)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size * 2, sampler=va_sampler, **lkw)
    steps_per_epoch = len(train_dl) // cfg.accum_steps
    if steps_per_epoch < 1:
        raise AbawError(f"{cfg.train_ann}: {len(train_ds)} training frames with a valid {cfg.task.upper()} label "
                        f"give no full step of {cfg.batch_size} x {cfg.accum_steps} x {env.world} frames; "
                        "lower --batch-size / --accum-steps")
    total = steps_per_epoch * cfg.epochs
    warmup = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))

    groups = param_groups(raw, cfg.lr, cfg.head_lr, cfg.weight_decay, layer_decay)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), **({"fused": True} if cuda else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, warmup, cfg.min_lr_ratio))
    model: torch.nn.Module = raw
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw, device_ids=[dev.index] if cuda else None,
                    find_unused_parameters=has_unused_parameters(raw, pre.input_size, dev))
    step = TrainStep(model, task, opt, sched, dev, pre, amp=amp, channels_last=channels_last,
                     accum_steps=cfg.accum_steps, grad_clip=cfg.grad_clip)

    history: list[dict[str, Any]]
    if state is not None:
        raw.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best, bad = list(state["history"]), dict(state["best"]), int(state["bad_epochs"])
        start = int(state["epoch"]) + 1
    else:
        try:
            out0 = predict_outputs(raw, val_dl, step, env, len(val_ds), progress, "val (untrained)")
        except AbawError as e:
            raise _reraise_worker(e) from None
        m0, d0 = task.score(out0, val_ds.targets)
        history = [{"epoch": 0, "train_loss": None, "val_metric": float(m0), "val": d0}]
        best, bad, start = {"epoch": 0, "metric": -math.inf}, 0, 1
    untrained = float(history[0]["val_metric"])
    info = {"task": cfg.task, "metric_name": task.metric_name, "layer_decay": layer_decay, "amp_bf16": amp,
            "channels_last": channels_last, "processes": env.world, "device": str(dev),
            "steps_per_epoch": steps_per_epoch, "train_frames": len(train_ds), "val_frames": len(val_ds)}

    stopped_early = False
    epoch = start - 1
    for epoch in range(start, cfg.epochs + 1):
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, epoch, env.rank]).generate_state(1)[0]))
        tr_sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        step_losses: list[torch.Tensor] = []
        micro_sum = torch.zeros((), device=dev)  # loss summed over the micro-batches of one step
        n_micro = steps_per_epoch * cfg.accum_steps
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", disable=not (progress and env.main),
                   leave=False)
        try:
            for k, (x, y, _) in enumerate(train_dl):
                if k >= n_micro:
                    break
                sync = (k + 1) % cfg.accum_steps == 0
                lo = step.micro(x, y, sync)
                loss_sum += lo
                micro_sum = lo if k % cfg.accum_steps == 0 else micro_sum + lo
                if sync:
                    step_losses.append(micro_sum / cfg.accum_steps)
                    bar.update(1)
                    if bar.n % 20 == 0 or bar.n == steps_per_epoch:
                        lv = float(loss_sum) / (k + 1)
                        if not math.isfinite(lv):
                            raise AbawError(f"training loss became {lv} in epoch {epoch}; try a lower --lr")
                        bar.set_postfix(loss=f"{lv:.4f}", lr=f"{opt.param_groups[-1]['lr']:.2e}")
        except AbawError as e:
            raise _reraise_worker(e) from None
        finally:
            bar.close()
        train_s = time.perf_counter() - t0
        train_loss = env.mean(float(loss_sum) / n_micro)
        if not math.isfinite(train_loss):
            raise AbawError(f"training loss became {train_loss} in epoch {epoch}; try a lower --lr")
        try:
            outs = predict_outputs(raw, val_dl, step, env, len(val_ds), progress, f"val {epoch}")
        except AbawError as e:
            raise _reraise_worker(e) from None
        metric, details = task.score(outs, val_ds.targets)
        improved = metric > best["metric"] + cfg.min_delta
        bad = 0 if improved else bad + 1
        rec = {"epoch": epoch, "train_loss": float(train_loss), "val_metric": float(metric), "val": details,
               "lr_backbone_top": float(max(g["lr"] for g in opt.param_groups if g["name"] != "head")),
               "lr_head": float(opt.param_groups[-1]["lr"]), "improved": bool(improved),
               "step_loss": _binned(torch.stack(step_losses).float().cpu().numpy()),
               "train_seconds": round(train_s, 3),
               "train_images_per_s": round(n_micro * cfg.batch_size * env.world / max(train_s, 1e-9), 2),
               "seconds": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        if improved:
            best = {"epoch": epoch, "metric": float(metric)}
        if progress and env.main:
            tqdm.write(f"epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, val {metric:.4f}"
                       + (" (best)" if improved else f" (best {best['metric']:.4f} at epoch {best['epoch']})"))
        stopped_early = bad >= cfg.patience and epoch < cfg.epochs
        done = stopped_early or epoch == cfg.epochs
        summary = _summary(out, info, history, best, untrained, stopped_early, done)
        if env.main:
            if improved:
                _export(out, raw, built, task, cfg, epoch, metric, details, untrained)
            save_state(out / STATE_FILE, {
                "version": STATE_VERSION, "config": to_dict(cfg), "inputs": inputs, "identity": identity,
                "epoch": epoch,
                "model": raw.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "history": history, "best": best, "bad_epochs": bad, "done": done, "summary": summary})
            write_json(out / HISTORY_FILE, summary)
            learning_curve(out / CURVE_FILE, [h["epoch"] for h in history],
                           {"training loss (epoch mean)": [h["train_loss"] for h in history]},
                           {task.metric_name: [h["val_metric"] for h in history]},
                           best_epoch=best["epoch"] or None, best_score=best["metric"] if best["epoch"] else None,
                           score_label=f"{task.metric_name} (epoch 0 = untrained)",
                           step_losses={h["epoch"]: h.get("step_loss") or [] for h in history})
        env.barrier()
        if on_epoch_end is not None:
            on_epoch_end(rec)
        if stopped_early:
            break
    return FinetuneResult.from_dict(_summary(out, info, history, best, untrained, stopped_early, True))


def _binned(x: np.ndarray, bins: int = 100) -> list[float]:
    """Per-step losses of one epoch, averaged into at most `bins` equal chunks."""
    if len(x) > bins:
        x = np.array([c.mean() for c in np.array_split(x, bins)])
    return [round(float(v), 5) for v in x]


def _summary(out: Path, info: dict[str, Any], history: list[dict[str, Any]], best: dict[str, Any],
             untrained: float, stopped_early: bool, done: bool) -> dict[str, Any]:
    return {**info, "out": str(out), "untrained_metric": untrained, "best_epoch": int(best["epoch"]),
            "best_metric": float(best["metric"]) if math.isfinite(best["metric"]) else None,
            "epochs_run": int(history[-1]["epoch"]), "stopped_early": bool(stopped_early), "done": bool(done),
            "history": history}


def _export(out: Path, raw: FinetuneModel, built: Any, task: Task, cfg: FinetuneConfig, epoch: int,
            metric: float, details: dict[str, float], untrained: float) -> None:
    from abaw.extract.ckpt import write_checkpoint

    write_checkpoint(
        out, raw.backbone.state_dict(), raw.head.state_dict(), timm_model=built.timm_model,
        model_kwargs=built.model_kwargs, dim=built.dim, preprocess=built.preprocess, task=task.name,
        head={"type": "linear", "out_dim": task.out_dim, "output": task.output},
        extra={"epoch": epoch,
               "metric": {"name": task.metric_name, "value": float(metric), "untrained": untrained,
                          "details": details},
               "trained_from": built.source, "config": CONFIG_FILE,
               "train_ann": cfg.train_ann, "val_ann": cfg.val_ann})
