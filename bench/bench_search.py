"""Benchmark: search throughput (configs/hour) with `--jobs 1` vs more jobs (issue 14 §1).

Builds a synthetic cache (features = a fixed linear view of smooth labels + noise, the
shape of a small real search: `--videos` x `--frames` frames, one backbone), then runs the
same search (`--configs` configs: temporal modules x learning rates, `--epochs` epochs
each) once per `--jobs` value in a fresh folder and prints each one's configs/hour, the
ratio to the first, and whether the leaderboards agree bit for bit (they do when every
run gets the same torch threads: `--threads 1`).

    python bench/bench_search.py                              # CPU: --jobs 1,2
    python bench/bench_search.py --device cuda --jobs 1,4 --frames 3000   # one GPU (bench/gpu.sh)

With `--jobs 1` a run gets all cores (`--threads 0`: torch's default), with N jobs each
run gets cores/N threads, so the ratio is the whole machine's gain. Worker start-up
(spawning, importing torch, loading the features) is inside the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw.cache.store import FeatureStore
from abaw.data.annotations import Annotations
from abaw.data.synth_features import synthetic_feature_split
from abaw.pipeline.search.runner import SearchSettings, run_search
from abaw.pipeline.search.space import space_from_dict


def split(fs: FeatureStore, prefix: str, n: int, length: int, proj: np.ndarray, rng) -> Annotations:
    """Synthetic features of `n` videos (labels from `abaw synth`'s latent processes, heavy noise)."""
    return synthetic_feature_split(fs, prefix, n, length, proj, 3.0, rng)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values (the first is the reference)")
    ap.add_argument("--configs", type=int, default=8, help="configs in the search (temporal x lr grid)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--videos", type=int, default=24, help="training videos (a third as many validation ones)")
    ap.add_argument("--frames", type=int, default=400, help="frames per video")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / jobs)")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    a = ap.parse_args()

    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="bench_search_"))
    try:
        rng = np.random.default_rng(0)
        store = root / "cache.zarr"
        shutil.rmtree(store, ignore_errors=True)
        proj = rng.standard_normal((22, a.dim)).astype(np.float32)
        with FeatureStore(store, "a") as fs:
            tr = split(fs, "t", a.videos, a.frames, proj, rng)
            va = split(fs, "v", max(2, a.videos // 3), a.frames, proj, rng)
        temporal = ["none", "gru", "transformer", "tcn"]
        n_t = min(len(temporal), a.configs)
        lrs = [float(x) for x in np.geomspace(3e-4, 3e-3, -(-a.configs // n_t))]
        space = space_from_dict({"base": {"epochs": a.epochs, "window": 32, "batch_frames": 512, "device": a.device,
                                          "threads": a.threads, "patience": 100},
                                 "grid": {"temporal": temporal[:n_t], "lr": lrs}})
        print(f"search: {a.configs} configs x {a.epochs} epochs on {len(tr)} train / {len(va)} val frames "
              f"({a.dim}-d), device {a.device}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
        figures, boards = [], []
        for jobs in [int(j) for j in a.jobs.split(",")]:
            out = root / f"search_jobs{jobs}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            res = run_search(space, store, tr, va, out, SearchSettings(budget=a.configs, jobs=jobs), progress=False,
                             log=lambda s: print("  " + s))
            dt = time.perf_counter() - t
            boards.append([{k: v for k, v in r.items() if k != "seconds"} for r in res.rows])
            per_hour = len(res.rows) / dt * 3600
            figures.append({"jobs": jobs, "seconds": dt, "configs_per_hour": per_hour})
            print(f"--jobs {jobs}: {dt:.1f} s = {per_hour:.0f} configs/hour, x{per_hour / figures[0]['configs_per_hour']:.2f}"
                  f" vs --jobs {figures[0]['jobs']}; leaderboard {'identical' if boards[-1] == boards[0] else 'DIFFERS'}"
                  f" (load {os.getloadavg()[0]:.1f})")
        if a.json:
            a.json.write_text(json.dumps({"figures": figures, "identical": all(b == boards[0] for b in boards)}, indent=1))
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
