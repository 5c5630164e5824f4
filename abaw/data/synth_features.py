"""Synthetic *features* for tests and benchmarks of the heads (no images, no extraction).

Videos whose labels follow `abaw synth`'s latent processes and whose cached features are a
fixed linear view of the labels plus per-frame noise, written straight into a FeatureStore.
"""

from __future__ import annotations

import numpy as np

from abaw.data.annotations import Annotations
from abaw.data.synth_profiles import latent_track


def synthetic_feature_split(fs, prefix: str, n_videos: int, length: int, proj: np.ndarray, noise: float,
                            rng: np.random.Generator, key: str = "synth", drop: float = 0.0) -> Annotations:
    """Videos whose labels follow `abaw synth`'s smooth latent processes and whose features are
    a fixed linear view of the labels plus heavy per-frame noise (so temporal context helps).

    `drop`: share of frames with no face in the cache (labels kept, features zero)."""
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


__all__ = ["synthetic_feature_split"]
