"""Benchmark: one epoch of joint head training at the size of s-Aff-Wild2 train.

    python bench/bench_train.py                      # full size, scales 1,2,4 (~10 min on 2 cores)
    python bench/bench_train.py --scales 1 --frames 20000 --val-frames 4000   # quick look

Builds a synthetic Zarr cache shaped like s-Aff-Wild2 (142,333 training frames in ~257
videos plus a 26,876-frame validation split; 3 backbones x 768-d float16; ~3% of frame
numbers missing; labels with the real invalid rates), then runs the real training loop
(`abaw.pipeline.train.loop.train`, transformer TCM, window 32, the TrainConfig defaults) for
two epochs and prints:

- epoch time (training pass; validation pass and post-processing separately),
- the share of the training pass spent outside forward+backward (batch assembly,
  optimizer step, window shuffling),
- peak RSS against 1.5 x the feature bytes + 2 GB,
- the per-frame cost against end-to-end training of a ViT-B/16 at 224 (forward+backward
  measured in the same process on a few frames),
- the epoch time at 1x, 2x and 4x the training frames (same validation split).

Targets (2-core CPU): epoch <= 60 s, outside forward/backward <= 10 %, RSS within bound,
time linear in frames. Timings are noisy when other jobs share the cores: the load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from abaw.cache.store import FeatureStore, FeatureTable, load_features
from abaw.data.annotations import Annotations
from abaw.data.synth import latent_track
from abaw.heads.model import ModelSpec
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.loop import train


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def split_lengths(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.lognormal(0.0, 0.6, n)
    lens = np.maximum(32, np.floor(w / w.sum() * total)).astype(np.int64)
    lens[np.argmax(lens)] += total - lens.sum()
    return lens


def build_split(fs: FeatureStore, prefix: str, total: int, n_videos: int, n_backbones: int, dim: int,
                rng: np.random.Generator) -> Annotations:
    """Write `n_videos` videos with `total` labelled frames; returns their annotations."""
    lens = split_lengths(total, n_videos, rng)
    vids, vidx, frames, va, expr, au = [], [], [], [], [], []
    for i, n in enumerate(lens):
        v = f"{prefix}{i:04d}-30-1280x720"
        fr = np.sort(rng.choice(np.arange(1, int(n * 1.03) + 2), size=int(n), replace=False)).astype(np.int32)
        fs.write_video(v, fr, fr / 30.0, np.ones(n, bool), {"bench": True})
        base = rng.standard_normal((n, dim), dtype=np.float32)
        for k in range(n_backbones):
            x = (base + rng.standard_normal((n, dim), dtype=np.float32)).astype(np.float16)
            fs.write_features(v, f"bb{k}", x, {"spec": f"bench:bb{k}", "dim": dim, "preprocess": {},
                                                "weights_sha256": str(k)})
        a, e, u = latent_track(rng, int(n))
        a[rng.random(n) < 0.27] = -5.0  # invalid rates of s-Aff-Wild2 train
        e[rng.random(n) < 0.36] = -1
        u[rng.random(n) < 0.27] = -1
        vids.append(v)
        vidx.append(np.full(n, i, np.int32))
        frames.append(fr)
        va.append(a)
        expr.append(e)
        au.append(u)
    return Annotations(tuple(vids), np.concatenate(vidx), np.concatenate(frames), np.concatenate(va).astype(np.float32),
                       np.concatenate(expr).astype(np.int64), np.concatenate(au).astype(np.int8))


def tile(table: FeatureTable, ann: Annotations, times: int, val_videos: set[str]) -> tuple[FeatureTable, Annotations]:
    """The training videos repeated `times` times under new ids (validation videos once)."""
    tr_rows = np.flatnonzero(~np.isin(np.asarray(table.videos, dtype=object)[table.video_idx], list(val_videos)))
    va_rows = np.setdiff1d(np.arange(len(table)), tr_rows)
    tr_vids = [v for v in table.videos if v not in val_videos]
    va_vids = [v for v in table.videos if v in val_videos]
    videos = [f"r{c}_{v}" for c in range(times) for v in tr_vids] + va_vids
    idx_map = {v: i for i, v in enumerate(table.videos)}
    new_vidx = []
    rows = []
    for c in range(times):
        rows.append(tr_rows)
        old = table.video_idx[tr_rows]
        remap = np.full(len(table.videos), -1, np.int32)
        for j, v in enumerate(tr_vids):
            remap[idx_map[v]] = c * len(tr_vids) + j
        new_vidx.append(remap[old])
    rows.append(va_rows)
    remap = np.full(len(table.videos), -1, np.int32)
    for j, v in enumerate(va_vids):
        remap[idx_map[v]] = times * len(tr_vids) + j
    new_vidx.append(remap[table.video_idx[va_rows]])
    rows_all = np.concatenate(rows)
    t = FeatureTable(keys=table.keys, videos=tuple(videos), video_idx=np.concatenate(new_vidx),
                     frame=table.frame[rows_all], face=table.face[rows_all], timestamp=table.timestamp[rows_all],
                     feats={k: table.feats[k][rows_all] for k in table.keys}, fingerprints=table.fingerprints)
    parts = []
    for c in range(times):
        parts.append(Annotations(tuple(f"r{c}_{v}" for v in ann.videos), ann.video_idx, ann.frame, ann.va, ann.expr,
                                 ann.au))
    return t, Annotations.concat(parts)


def vit_frame_seconds(frames: int, iters: int) -> float:
    """Forward+backward seconds per 224x224 frame of a ViT-B/16 in training mode."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_base_patch16_224", pretrained=False)
    m.train()
    x = torch.randn(frames, 3, 224, 224)

    def step():
        out = m(x)
        out.float().square().mean().backward()
        m.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    dt = (time.perf_counter() - t0) / (iters * frames)
    del m
    gc.collect()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=142_333, help="training frames")
    ap.add_argument("--videos", type=int, default=257, help="training videos")
    ap.add_argument("--val-frames", type=int, default=26_876)
    ap.add_argument("--val-videos", type=int, default=50)
    ap.add_argument("--backbones", type=int, default=3)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--scales", default="1,2,4", help="training-data multiples to time (1 must come first)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the 1x run (the last one is reported)")
    ap.add_argument("--temporal", default="transformer")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=ModelSpec.d_model)
    ap.add_argument("--layers", type=int, default=ModelSpec.layers)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--vit-frames", type=int, default=4)
    ap.add_argument("--vit-iters", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="where to build the cache (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    ap.add_argument("--progress", action="store_true", help="show the training progress bars")
    args = ap.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    if scales[0] != 1:
        raise SystemExit("--scales must start with 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; {load()}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_before": os.getloadavg()}
    try:
        rng = np.random.default_rng(0)
        store = work / "cache.zarr"
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        fs = FeatureStore(store, "a")
        tr = build_split(fs, "t", args.frames, args.videos, args.backbones, args.dim, rng)
        va = build_split(fs, "v", args.val_frames, args.val_videos, args.backbones, args.dim, rng)
        gc.collect()
        print(f"cache: {len(tr)} train + {len(va)} val frames, {args.backbones} x {args.dim}-d float16, "
              f"built in {time.perf_counter() - t0:.1f} s; peak RSS so far {peak_rss_gb():.2f} GB")
        rss_before = peak_rss_gb()

        cfg = TrainConfig.create(temporal=args.temporal, window=args.window, d_model=args.d_model, layers=args.layers,
                          epochs=args.epochs, patience=args.epochs + 1)
        t0 = time.perf_counter()
        run = train(cfg, store, tr, va, work / "run1", overwrite=True, progress=args.progress)
        total = time.perf_counter() - t0
        rss = peak_rss_gb()
        data = json.loads((work / "run1" / "data.json").read_text())
        feat_gb = data["feature_bytes"] / 1024 ** 3
        h = run.history[-1]
        tm = h["time"]
        outside = 1 - tm["fwd_bwd_s"] / tm["train_s"]
        per_frame_heads = tm["train_s"] / h["frames"]
        epoch_s = [x["time"]["train_s"] for x in run.history]
        post_s = total - data["load_s"] - sum(x["time"]["train_s"] + x["time"]["eval_s"] for x in run.history)
        print(f"\nmodel: {cfg.model.fusion} fusion + {cfg.model.temporal} (d_model {cfg.model.d_model}, {cfg.model.layers} layers, "
              f"{cfg.model.heads} heads), window {cfg.window}, {cfg.batch_frames} frames/batch, "
              f"{data['parameters'] / 1e6:.2f} M parameters")
        print(f"load features into RAM: {data['load_s']:.1f} s ({feat_gb:.2f} GiB float16, train+val)")
        print(f"epoch times (training pass): {', '.join(f'{s:.1f} s' for s in epoch_s)}  -> "
              f"{tm['train_s']:.1f} s for {h['frames']} frames (target <= 60 s)")
        print(f"  forward+backward {tm['fwd_bwd_s']:.1f} s, batch assembly {tm['data_s']:.1f} s, optimizer "
              f"{tm['opt_s']:.1f} s; outside forward/backward {100 * outside:.1f} % (target <= 10 %)")
        print(f"validation pass ({len(va)} frames): {tm['eval_s']:.1f} s; post-processing fit + plots: "
              f"{post_s:.1f} s")
        bound = 1.5 * feat_gb + 2.0
        print(f"peak RSS {rss:.2f} GiB (before training {rss_before:.2f}); bound 1.5 x {feat_gb:.2f} + 2 = "
              f"{bound:.2f} GiB -> {'OK' if rss <= bound else 'OVER'}")
        figures.update(epoch_s=epoch_s, frames=h["frames"], fwd_bwd_s=tm["fwd_bwd_s"], data_s=tm["data_s"],
                       opt_s=tm["opt_s"], outside_share=outside, eval_s=tm["eval_s"], post_s=post_s,
                       load_s=data["load_s"], feature_gib=feat_gb, peak_rss_gib=rss, rss_bound_gib=bound,
                       parameters=data["parameters"])
        del run
        gc.collect()

        vit = vit_frame_seconds(args.vit_frames, args.vit_iters)
        print(f"ViT-B/16 @224 forward+backward: {vit:.3f} s/frame ({args.vit_frames} frames x {args.vit_iters}); "
              f"heads: {per_frame_heads * 1e3:.3f} ms/frame -> end-to-end / heads = {vit / per_frame_heads:,.0f}x")
        figures.update(vit_s_per_frame=vit, heads_s_per_frame=per_frame_heads, ratio=vit / per_frame_heads)

        scaling = [{"scale": 1, "frames": run_frames, "epoch_s": s} for run_frames, s in
                   [(h["frames"], epoch_s[0])]]
        if len(scales) > 1:
            base = load_features(store, tuple(f"bb{k}" for k in range(args.backbones)))
            for s in scales[1:]:
                t, tr_s = tile(base, tr, s, set(va.videos))
                r = train(cfg.with_(epochs=1, au_thresholds=False, smoothing=False), t, tr_s, va,
                          work / f"run{s}", overwrite=True, progress=args.progress)
                scaling.append({"scale": s, "frames": r.history[0]["frames"],
                                "epoch_s": r.history[0]["time"]["train_s"]})
                del t, r
                gc.collect()
            del base
        print("\nscaling (first epoch, training pass):")
        for row in scaling:
            print(f"  {row['scale']}x  {row['frames']:>8d} frames  {row['epoch_s']:7.1f} s  "
                  f"{row['epoch_s'] / row['frames'] * 1e6:7.1f} us/frame  "
                  f"({row['epoch_s'] / scaling[0]['epoch_s']:.2f}x the 1x time)")
        figures["scaling"] = scaling
        figures["load_after"] = os.getloadavg()
        print(f"\n{load()}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
