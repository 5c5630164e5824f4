"""Test helpers (fixtures live in conftest.py): fill a feature cache from synth crops (via the
extraction runner) or with synthetic arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from abaw.data.annotations import Annotations


def cache_crops(root: Path, store_path: Path, spec: str, batch: int = 64) -> str:
    """Extract backbone `spec` over `root/cropped_aligned` with `abaw extract`'s runner; returns its cache key."""
    from abaw.extract.backbones import spec_key
    from abaw.extract.runner import ExtractConfig, extract

    summary = extract([root / "cropped_aligned"], store_path, [spec], ExtractConfig(batch_size=batch), progress=False)
    assert summary.ok, summary.failed
    return spec_key(spec)


def synthetic_split(fs, prefix: str, n_videos: int, length: int, proj: np.ndarray, noise: float,
                    rng: np.random.Generator, key: str = "synth", drop: float = 0.0) -> Annotations:
    """Videos whose labels follow `abaw synth`'s smooth latent processes and whose features are
    a fixed linear view of the labels plus heavy per-frame noise (so temporal context helps).

    `drop`: share of frames with no face in the cache (labels kept, features zero)."""
    from abaw.data.synth import latent_track

    vids, vidx, frames, va, ex, au = [], [], [], [], [], []
    for i in range(n_videos):
        v = f"{prefix}{i:02d}"
        va_, ex_, au_ = latent_track(rng, length)
        lab = np.concatenate([va_, np.eye(8)[ex_], au_], 1)
        x = lab @ proj + noise * rng.standard_normal((length, proj.shape[1]))
        fr = np.arange(1, length + 1)
        face = rng.random(length) >= drop
        x[~face] = 0
        fs.write_video(v, fr, fr / 30.0, face, {})
        fs.write_features(v, key, x, {"spec": f"synthetic:{key}", "dim": proj.shape[1], "preprocess": {},
                                      "weights_sha256": "0"})
        vids.append(v)
        vidx.append(np.full(length, i))
        frames.append(fr)
        va.append(va_)
        ex.append(ex_)
        au.append(au_)
    return Annotations(tuple(vids), np.concatenate(vidx).astype(np.int32), np.concatenate(frames).astype(np.int32),
                       np.concatenate(va).astype(np.float32), np.concatenate(ex).astype(np.int64),
                       np.concatenate(au).astype(np.int8))
