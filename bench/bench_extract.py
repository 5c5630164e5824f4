"""Benchmark: is the extraction data path the bottleneck?

    python bench/bench_extract.py [--backbone 'timm:resnet18?pretrained=0&size=112'] [--batch 64] [--frames 1000]

On a synthetic dataset (generated in a temporary folder), in one process:

1. pure forward: the backbone on frames preloaded as one uint8 tensor (on the device),
   same batch size and the same forward code as `abaw extract` (fixed batches,
   autocast on CUDA, float16 out) -> frames/s;
2. `extract()` from the JPEG folders (cropped_aligned) with the backbone already built
   -> frames/s and the ratio to (1) (target >= 0.85: reading/decoding JPEGs, batching and
   writing the Zarr cache must not slow the backbone down);
3. the same from the spec string, i.e. including building the model, as the CLI does;
4. the video path (decode -> MTCNN -> align -> forward -> write) on the synth mp4 files:
   frames/s and the share of busy time per stage.

(1)-(3) are interleaved `--repeat` times and the best time of each is used: on a shared
machine, other jobs only ever make a measurement slower, so the minimum is the fairest.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from abaw.data.synth import SynthConfig, generate
from abaw.extract.backbones import create_backbone
from abaw.extract.runner import ExtractConfig, extract
from abaw.runtime import autocast, resolve_device, resolve_precision


def pure_forward(bb, frames: torch.Tensor, batch: int, device: torch.device, precision: str) -> float:
    """Seconds to run `bb` over preloaded frames in fixed batches (the last one padded)."""
    n = len(frames)
    with torch.inference_mode():
        with autocast(device, precision):
            bb(frames[:batch])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            x = frames[i:i + batch]
            if len(x) < batch:
                x = torch.cat([x, x.new_zeros((batch - len(x), *x.shape[1:]))])
            with autocast(device, precision):
                y = bb(x)
            y.float().cpu().numpy().astype(np.float16)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="timm:resnet18?pretrained=0&size=112")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--frames", type=int, default=1000, help="about this many frames in the synthetic set")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--detect-size", type=int, default=640)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions of (1)-(3)")
    ap.add_argument("--video-frames", type=int, default=300, help="about this many video frames for (4)")
    ap.add_argument("--no-video", action="store_true", help="skip the video-path measurement")
    args = ap.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    per = 100
    tracks = max(3, args.frames // per)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synth"
        t0 = time.perf_counter()
        generate(data, SynthConfig(seed=0, train_videos=max(1, tracks - 2), val_videos=1, test_videos=1,
                                   min_frames=per, max_frames=per, videos=not args.no_video),
                 jobs=os.cpu_count() or 1, progress=False)
        files = sorted((data / "cropped_aligned").glob("*/*.jpg"))
        print(f"synthetic set: {len(files)} aligned frames in {len(list((data / 'cropped_aligned').iterdir()))} "
              f"folders ({time.perf_counter() - t0:.1f} s to generate)")
        print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, device {device} "
              f"({precision}), load average {os.getloadavg()[0]:.2f}")
        print(f"backbone {args.backbone}, batch {args.batch}")

        bb = create_backbone(args.backbone, device)
        if device.type == "cuda":
            bb.model.to(memory_format=torch.channels_last)
        frames = torch.from_numpy(np.stack([np.array(Image.open(f).convert("RGB")) for f in files])).to(device)
        n = len(frames)
        cfg = ExtractConfig(batch_size=args.batch, device=str(device), precision=precision, workers=args.workers,
                            detect_size=args.detect_size)
        t_pure, t_api, t_cli = [], [], []
        for r in range(args.repeat):
            t_pure.append(pure_forward(bb, frames, args.batch, device, precision))
            t0 = time.perf_counter()
            s = extract([data / "cropped_aligned"], Path(tmp) / f"a{r}.zarr", [bb], cfg, progress=False)
            t_api.append(time.perf_counter() - t0)
            assert s.ok and s.frames == n, s.format()
            t0 = time.perf_counter()
            s2 = extract([data / "cropped_aligned"], Path(tmp) / f"b{r}.zarr", [args.backbone], cfg, progress=False)
            t_cli.append(time.perf_counter() - t0)
            assert s2.ok and s2.frames == n, s2.format()
        fps_pure, fps_api, fps_cli = n / min(t_pure), n / min(t_api), n / min(t_cli)

        def runs(ts: list[float]) -> str:
            return ", ".join(f"{t:.2f}" for t in ts) + " s"

        print(f"1. pure forward on preloaded tensors: {fps_pure:8.1f} frames/s  ({runs(t_pure)})")
        print(f"2. extract() from JPEG folders:       {fps_api:8.1f} frames/s  ({runs(t_api)})  "
              f"ratio {fps_api / fps_pure:.3f} (target >= 0.85)")
        print(f"3. same, building the model too:      {fps_cli:8.1f} frames/s  ({runs(t_cli)})  "
              f"ratio {fps_cli / fps_pure:.3f}")
        print("   last run's busy time: " + " · ".join(f"{k} {100 * v:.0f}%" for k, v in s.shares().items())
              + f"; reading images took {s.timings.get('images', 0):.2f} s of the main thread")

        if not args.no_video:
            vdir = Path(tmp) / "videos"
            vdir.mkdir()
            total = 0
            for v in sorted((data / "videos").glob("*.mp4")):
                if total >= args.video_frames:
                    break
                os.symlink(v, vdir / v.name)
                total += per
            t0 = time.perf_counter()
            s = extract([vdir], Path(tmp) / "v.zarr", [bb], cfg, progress=False)
            t_vid = time.perf_counter() - t0
            print(f"4. video path (decode, MTCNN, align, forward, write): {s.frames / t_vid:.1f} frames/s "
                  f"({s.frames} frames, {100 * s.faces / max(1, s.frames):.1f}% with a face, {t_vid:.1f} s)")
            print("   share of busy time: " + " · ".join(f"{k} {100 * v:.0f}%" for k, v in s.shares().items())
                  + f" (decode runs in its own thread; the main thread waited "
                    f"{s.timings.get('decoded frames', 0):.2f} s for frames)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
