"""Benchmark: fine-tuning throughput (training images/s) of a backbone, as `abaw finetune` runs it.

    python bench/bench_finetune.py --backbone "timm:vit_base_patch16_224?pretrained=0" --batch-size 32
    python bench/bench_finetune.py --backbone "timm:test_efficientnet_gn?pretrained=0&size=112"

Two numbers, measured separately:
  1. model step: forward + backward + AdamW step (the real TrainStep: task loss, layer-wise
     param groups, cosine schedule; bf16 autocast + channels_last on CUDA unless --no-amp),
     on random uint8 batches already on the device;
  2. data pipeline: JPEG decode (PIL) + face augmentations + resize to the input size in
     DataLoader workers, on synthetic 112x112 aligned faces (`abaw synth`).
Training runs at about the smaller of the two. Run it on the machine you care about: on a
GPU the same script reports GPU throughput.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from abaw.data.annotations import read_annotations
from abaw.data.synth import SynthConfig, generate
from abaw.pipeline.finetune.config import AugmentConfig
from abaw.pipeline.finetune.data import EpochSampler, FaceImageDataset
from abaw.pipeline.finetune.model import FinetuneModel, TaskHead, build_backbone, is_vit_like, param_groups
from abaw.pipeline.finetune.tasks import create_task
from abaw.pipeline.finetune.train import TrainStep
from abaw.runtime import resolve_device
from abaw.schedule import cosine_with_warmup


def model_throughput(args: argparse.Namespace, dev: torch.device) -> tuple[float, dict]:
    task = create_task(args.task)
    torch.manual_seed(0)
    built = build_backbone(args.backbone, drop_path=0.1)
    model = FinetuneModel(built.model, TaskHead(built.dim, task.out_dim)).to(dev)
    cuda = dev.type == "cuda"
    amp = bool(args.amp and cuda and torch.cuda.is_bf16_supported())
    channels_last = bool(args.amp and cuda)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    decay = 0.75 if is_vit_like(built.model) else 1.0
    opt = torch.optim.AdamW(param_groups(model, 1e-4, 1e-3, 0.05, decay), **({"fused": True} if cuda else {}))
    n = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(n, 1, 0.01))
    step = TrainStep(model, task, opt, sched, dev, built.preprocess, amp=amp, channels_last=channels_last,
                     accum_steps=1, grad_clip=1.0)
    s = built.preprocess.input_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, 3, s, s), dtype=torch.uint8, generator=g)
    if args.task == "expr":
        y = torch.randint(0, 8, (args.batch_size,), generator=g)
    elif args.task == "au":
        y = torch.randint(0, 2, (args.batch_size, 12), generator=g).float()
    else:
        y = torch.rand(args.batch_size, 2, generator=g) * 2 - 1
    if cuda:
        x, y = x.pin_memory(), y.pin_memory()
    model.train()
    for i in range(n):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        step.micro(x, y, sync=True)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    info = {"input": s, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "bf16": amp, "channels_last": channels_last, "layer_decay": decay}
    return args.steps * args.batch_size / dt, info


def data_throughput(args: argparse.Namespace, input_size: int, interpolation: str) -> float:
    from abaw.extract.backbones import Preprocess

    with tempfile.TemporaryDirectory() as d:
        generate(Path(d), SynthConfig(seed=0, train_videos=2, val_videos=1, test_videos=1, min_frames=150,
                                      max_frames=150, videos=False), jobs=1, progress=False)
        ann = read_annotations(Path(d) / "training_set_annotations.txt")
        rows = np.arange(len(ann))
        pre = Preprocess(input_size=input_size, interpolation=interpolation)
        ds = FaceImageDataset(Path(d) / "cropped_aligned", ann, rows, ann.expr, pre, train=True,
                          augment=AugmentConfig(), seed=0)
        sampler = EpochSampler(len(ds), samples=args.data_images)
        kw = dict(persistent_workers=False, prefetch_factor=4) if args.workers > 0 else {}
        dl = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, **kw)
        it = iter(dl)
        next(it)  # worker start-up not counted
        t0 = time.perf_counter()
        n = sum(len(x) for x, _, _ in it)
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="timm:vit_base_patch16_224?pretrained=0")
    ap.add_argument("--task", default="expr", choices=["au", "expr", "va"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed optimiser steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA (no bf16/channels_last)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="data-loader workers")
    ap.add_argument("--data-images", type=int, default=600, help="images through the data pipeline")
    ap.add_argument("--skip-data", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev} ({name}); torch {torch.__version__}")
    ips, info = model_throughput(args, dev)
    print(f"model step   {args.backbone}  task {args.task}  batch {args.batch_size}  {info}: "
          f"{ips:.1f} training images/s")
    if not args.skip_data:
        built = build_backbone(args.backbone)
        dps = data_throughput(args, built.preprocess.input_size, built.preprocess.interpolation)
        print(f"data pipeline  decode + augment to {built.preprocess.input_size} px, {args.workers} workers: "
              f"{dps:.1f} images/s")
        print(f"training runs at about min(model, data) = {min(ips, dps):.1f} images/s")


if __name__ == "__main__":
    main()
